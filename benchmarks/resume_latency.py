"""Resume latency of a streaming pretraining run, whole process, at two step counts far apart.

For each step count N: train a tiny GPT-2 from a streamed text corpus for N steps with a checkpoint
at step N, then time a second `llmforge run` process that resumes from that checkpoint and trains two
more steps. Its wall time (start to exit: imports, checks, loading the checkpoint, reopening the stream
at its saved position, two steps, the final save) must not grow with N. Beside it: the stream-level
time to the first block after the resume (the `stream_resume_seconds` the train stage reports), and
what a replay would cost instead: reading the stream from its start to the same position, which is
the least that transformers' Trainer does when it resumes an iterable dataset (it fetches and
discards every batch already seen).

    python benchmarks/resume_latency.py            # N = 20 and N = 2,000
    python benchmarks/resume_latency.py --smoke    # N = 10 and N = 400, under 2 minutes
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import CORPUS, arguments, emit, machine, run_contender, target  # noqa: E402

BATCH = 4
EXTRA_STEPS = 2


def recipe(corpus: Path) -> dict:
    return {
        "name": "resume-latency",
        "data": {
            "source": "text",
            "path": str(corpus),
            "documents": "paragraph",
            "streaming": True,
            "val_documents": 50,
        },
        "tokenizer": {"vocab_size": 2048, "max_documents": 2000},
        "model": {"n_layer": 2, "n_embd": 64, "n_head": 4, "context_length": 64},
        "train": {"batch_size": BATCH, "log_every": 50, "eval_every": None, "lr": 1e-3},
        "evaluate": {"benchmarks": []},
    }


def llmforge_run(recipe_file: Path, out: Path, *sets: str) -> float:
    """One `llmforge run` process; its wall time in seconds."""
    cli = Path(sys.executable).with_name("llmforge")
    command = [str(cli), "run", str(recipe_file), "--out", str(out)]
    for s in sets:
        command += ["--set", s]
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def replay(recipe_file: Path, run: Path, blocks: int) -> None:
    """Read the stream from its start to the block a resume at that step continues from, as a replay must."""
    from rich.console import Console
    from transformers import AutoTokenizer

    from llmforge import Recipe
    from llmforge.data.documents import open_stream
    from llmforge.data.streaming import StreamingBlocks
    from llmforge.plugin.manager import get_plugins
    from llmforge.stages.context import Context

    r = Recipe.from_yaml(recipe_file)
    ctx = Context(run, r, get_plugins(r.plugins), Console(quiet=True))
    tok = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    stream = StreamingBlocks(open_stream(ctx.source(r.data)), tok, r.model.context_length, r.data.val_documents)
    started = time.perf_counter()
    for i, _ in enumerate(stream, 1):
        if i == blocks:
            break
    emit({"seconds": time.perf_counter() - started})


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--steps", help="two step counts, comma-separated")
    parser.add_argument("--recipe")
    parser.add_argument("--run")
    parser.add_argument("--blocks", type=int)
    args = parser.parse_args()
    if args.contender == "replay":
        return replay(Path(args.recipe), Path(args.run), args.blocks)
    counts = [int(x) for x in (args.steps or ("10,400" if args.smoke else "20,2000")).split(",")]
    print(machine(2))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        recipe_file = Path(tmp) / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe(CORPUS)))
        for n in counts:
            out = Path(tmp) / f"run-{n}"
            first = llmforge_run(recipe_file, out, f"train.max_steps={n}", f"train.save_every={n}")
            resumed = llmforge_run(recipe_file, out, f"train.max_steps={n + EXTRA_STEPS}", f"train.save_every={n}")
            info = json.loads((out / "train" / "final" / ".llmforge.json").read_text())["info"]
            assert info["steps"] == n + EXTRA_STEPS, info
            stream_s = info["stream_resume_seconds"]
            replay_s = run_contender(
                __file__,
                "replay",
                ["--recipe", str(recipe_file), "--run", str(out), "--blocks", str(n * BATCH)],
                threads=2,
            )["seconds"]
            results.append({"steps": n, "first": first, "resume": resumed, "stream": stream_s, "replay": replay_s})
            print(
                f"resume at step {n:6,}: whole process {resumed:6.2f} s (the first run to step {n:,}: {first:6.1f} s); "
                f"stream to its first block {1000 * stream_s:7.1f} ms; a replay of the stream to the same "
                f"position {replay_s:7.2f} s",
                flush=True,
            )
    small, large = results[0], results[-1]
    growth = large["resume"] / small["resume"]
    print(f"ratio resume at step {large['steps']:,} / at step {small['steps']:,}: {growth:.3f}")
    print(
        f"ratio replay / resume at step {large['steps']:,}: {large['replay'] / large['stream']:,.0f}x the stream's "
        f"own resume"
    )
    print(target("resume_latency_growth", growth, "<=", 1.25, "{:.3f}"))


if __name__ == "__main__":
    main()
