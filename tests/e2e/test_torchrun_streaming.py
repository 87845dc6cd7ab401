"""Streaming under `torchrun --nproc_per_node 2` (gloo on CPU): each rank its own rows, exact kill and resume;
and the DDP loss curve against one process with the doubled batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import stream_recipe_dict, tiny_recipe_dict

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "COLUMNS": "200",
    "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
}
pytestmark = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun is not installed")


def free_port() -> int:
    """A free TCP port: `--master_port 0` left both workers waiting in the rendezvous here."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(recipe: Path, out: Path, nproc: int, tmp_path: Path, *extra: str) -> subprocess.Popen:
    """`llmforge run` under torchrun (nproc > 1) or alone, in its own process group (killed as a whole)."""
    prefix = [TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), "--no-python"]
    prefix = prefix if nproc > 1 else []
    return subprocess.Popen(
        [*prefix, "llmforge", "run", str(recipe), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "PYTHONPATH": str(tmp_path)},
        start_new_session=True,
    )


def streaming_recipe(tmp_path: Path, corpus_text: str, n_docs: int, **train: object) -> Path:
    docs = [p.strip() for p in corpus_text.split("\n\n") if p.strip()][:n_docs]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(stream_recipe_dict(tmp_path, docs, **train)))
    return path


def test_two_ranks_read_distinct_rows_of_the_stream(tmp_path, corpus_text):
    recipe = streaming_recipe(tmp_path, corpus_text, 400, max_steps=4, save_every=4, eval_every=None)
    proc = launch(recipe, tmp_path / "run", 2, tmp_path)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "4 steps of 256 tokens (4 x 1 x 32 x 2 processes)" in stdout
    saved = json.loads((tmp_path / "run" / "train" / "checkpoints" / "checkpoint-4" / "stream_state.json").read_text())
    assert saved["world_size"] == 2
    assert [s["blocks"] for s in saved["states"]] == [16, 16]  # each rank trained its own 16 blocks
    # the blocks each rank trained, rebuilt from the stream: no document in both
    from transformers import AutoTokenizer

    from llmforge.config.schema import DataConfig
    from llmforge.data.streaming import IterableStream, StreamingBlocks
    from llmforge_sources import load_hub

    cfg = yaml.safe_load(recipe.read_text())["data"]
    source = IterableStream(load_hub(DataConfig(**cfg)), "text")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    trained = []
    for rank in (0, 1):
        it = iter(StreamingBlocks(source, tok, 32, first_row=30, rank=rank, world=2))
        ids = [i for _ in range(16) for i in next(it)["input_ids"].tolist()]
        trained.append({d.strip() for d in tok.decode(ids).split(tok.eos_token)[1:-1] if d.strip()})
    assert trained[0] and trained[1] and not trained[0] & trained[1]


@pytest.mark.slow
def test_sigkill_two_process_streaming_run_then_rerun_is_exact(tmp_path, corpus_text):
    (tmp_path / "slow_steps.py").write_text(
        "import os, time\nfrom llmforge import hookimpl\n\n@hookimpl\ndef on_log(stage, metrics):\n"
        "    if 'loss' in metrics:\n"
        f"        open({str(tmp_path / 'steps.log')!r}, 'a').write(f\"{{os.getppid()}} {{metrics['step']}}\\n\")\n"
        "    time.sleep(0.3)\n"
    )
    recipe = streaming_recipe(tmp_path, corpus_text, 60, max_steps=10, save_every=5, eval_every=None)
    mapping = yaml.safe_load(recipe.read_text())
    mapping["plugins"] = ["slow_steps"]
    recipe.write_text(yaml.safe_dump(mapping))
    reference = launch(recipe, tmp_path / "reference", 2, tmp_path)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-2000:] + err[-2000:]

    run = tmp_path / "killed"
    proc = launch(recipe, run, 2, tmp_path)
    marker = run / "train" / "checkpoints" / "checkpoint-5" / ".llmforge.json"
    deadline = time.time() + 400
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "checkpoint-5 never completed"
    # the launcher and both workers at once, as a lost machine would (torchrun starts each worker in a
    # session of its own, so the launcher's process group does not hold them)
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run / "train" / "final").exists()
    rerun = launch(recipe, run, 2, tmp_path)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-2000:] + err[-2000:]
    # the rerun trained steps 6-10 only (its launcher's process logged them), after the killed run's 1-5
    logged = [line.split() for line in (tmp_path / "steps.log").read_text().splitlines()]
    last = logged[-1][0]
    assert [int(step) for pid, step in logged if pid == last] == [6, 7, 8, 9, 10]
    a = load_file(tmp_path / "reference" / "train" / "final" / "model.safetensors")
    b = load_file(run / "train" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one_with_the_doubled_batch(tmp_path, corpus_file):
    recipe = tiny_recipe_dict(corpus_file, max_steps=30, save_every=None, eval_every=None, lr=3e-3)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    two = launch(path, tmp_path / "two", 2, tmp_path, "--set", "train.batch_size=4")
    assert two.wait(timeout=600) == 0, two.stderr.read()[-3000:]
    one = launch(path, tmp_path / "one", 1, tmp_path, "--set", "train.batch_size=8")
    assert one.wait(timeout=600) == 0, one.stderr.read()[-3000:]

    def losses(out: Path) -> list[float]:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    a, b = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(a) == len(b) == 30
    # the same number of blocks per step, in a different order: the curves agree within sampling noise
    assert abs(a[0] - b[0]) < 0.05
    window = [abs(sum(a[i : i + 10]) - sum(b[i : i + 10])) / 10 for i in (0, 10, 20)]
    assert max(window) < 0.15, (window, a, b)
