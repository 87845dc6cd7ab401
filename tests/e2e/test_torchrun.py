"""The DDP path: `torchrun --nproc_per_node 2 llmforge run` of the tiny recipe on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")  # fmt: skip
def test_two_process_torchrun_of_the_tiny_recipe(tmp_path):
    from llmforge import rundir

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "run"
    done = subprocess.run(
        [
            torchrun,
            "--standalone",  # a free port on localhost (--master_port 0 hangs the gloo process group)
            "--nproc_per_node",
            "2",
            "--no-python",
            "llmforge",
            "run",
            str(REPO / "examples" / "pretrain_tiny.yaml"),
            "--out",
            str(out),
            "--set",
            "train.max_steps=6",
            "--set",
            "train.eval_every=3",
            "--set",
            "train.save_every=3",
            "--set",
            "train.log_every=1",
            "--set",
            "evaluate.benchmarks=[]",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env={**ENV, "PATH": f"{Path(sys.executable).parent}:{ENV.get('PATH', '')}"},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # both processes trained: the effective batch counts two of them
    assert "6 steps of 4,096 tokens (16 x 1 x 128 x 2 processes)" in done.stdout
    # one process reports and writes: every step logged once, tokens counted for both processes
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens"] == r["step"] * 16 * 128 * 2 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 6]
    for path in ("train/checkpoints/checkpoint-3", "train/checkpoints/checkpoint-6", "train/final"):
        assert rundir.is_complete(out / path), path
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "eval" / "results.json").exists()
    assert done.stdout.count("llmforge run") == 1  # the summary is printed by one process

    # Data parallelism changes nothing but the speed: one process with the doubled batch (32) sees the same
    # blocks per step and follows the same loss curve, to the rounding of a different reduction order.
    single = tmp_path / "single"
    alone = subprocess.run(
        [str(Path(sys.executable).with_name("llmforge")), "run", str(REPO / "examples" / "pretrain_tiny.yaml"),
         "--out", str(single),
         "--set", "train.max_steps=6", "--set", "train.eval_every=3", "--set", "train.save_every=3",
         "--set", "train.log_every=1", "--set", "train.batch_size=32", "--set", "evaluate.benchmarks=[]"],
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    rows1 = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    ddp = [r["loss"] for r in train]
    one = [r["loss"] for r in rows1 if "loss" in r]
    assert len(one) == len(ddp) == 6
    for step, (a, b) in enumerate(zip(ddp, one, strict=True), 1):
        assert abs(a - b) <= 2e-3 * abs(b), f"step {step}: two processes {a}, one process {b}"
    evals = [[r["eval_loss"] for r in rs if "eval_loss" in r] for rs in (rows, rows1)]
    assert evals[0] == pytest.approx(evals[1], rel=2e-3)
