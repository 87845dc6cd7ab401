"""Wall time of `llmforge eval` against plain `lm_eval` on the same model, task files and batch size.

Both run as a user would run them, in fresh processes: `llmforge eval MODEL --tasks mmlu,hellaswag
--data-dir D` and `python -m lm_eval --model hf --model_args pretrained=MODEL --include_path T --tasks
mmlu,hellaswag`, where T is the task folder llmforge generated (so both score the same files with the
same task definitions). The model dir is a copy outside any run, so llmforge computes no perplexity:
the work is the same and the ratio is the overhead of llmforge around lm-eval.

    python benchmarks/eval_overhead.py            # 6-layer, 384-wide GPT-2 shape, 3 timed rounds
    python benchmarks/eval_overhead.py --smoke    # 1-layer tiny model, 1 round (under 2 minutes)

Ends with `eval_overhead: RATIO (target <= 1.05) PASS|MISS` (median llmforge / median lm_eval).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "examples" / "data" / "benchmarks"
CORPUS = REPO / "examples" / "data" / "corpus"
TARGET = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, one timed round")
    parser.add_argument("--model", help="an HF model dir to time (default: build one)")
    parser.add_argument("--tasks", default="mmlu,hellaswag")
    parser.add_argument("--data-dir", default=str(SAMPLES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, help="timed rounds of each command (default: 3, smoke: 1)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads for both (default: 1)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.smoke else 3)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "120",
    }
    print(machine(args.threads))

    with tempfile.TemporaryDirectory(prefix="eval-overhead-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else build_model(root, args.smoke, env)
        print(f"model: {parameters(model)}; tasks {args.tasks} from {args.data_dir}; batch size {args.batch_size}")

        def ours(i: int) -> list[str]:
            return [
                *[sys.executable, "-m", "llmforge.cli", "eval", str(model), "--tasks", args.tasks],
                *["--data-dir", args.data_dir, "--batch-size", str(args.batch_size), "--out", str(root / f"ours{i}")],
            ]

        def theirs(i: int) -> list[str]:
            return [
                *[sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model}"],
                *["--include_path", str(root / "ours0" / "tasks"), "--tasks", args.tasks],
                *["--batch_size", str(args.batch_size), "--output_path", str(root / f"theirs{i}")],
            ]

        # one untimed round of each: the task folder, the datasets cache, the OS file cache
        timed(ours(0), env)
        timed(theirs(0), env)
        same = same_scores(root / "ours0" / "results.json", root / "theirs0")
        t_ours, t_theirs = [], []
        for i in range(1, rounds + 1):  # alternate, so drift on a shared machine hits both alike
            t_ours.append(timed(ours(i), env))
            t_theirs.append(timed(theirs(i), env))
            print(f"  round {i}: llmforge eval {t_ours[-1]:.2f}s, lm_eval {t_theirs[-1]:.2f}s")

    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    ratio = a / b
    print(f"llmforge eval: median {a:.2f}s of {rounds} ({', '.join(f'{t:.2f}' for t in t_ours)})")
    print(f"lm_eval:       median {b:.2f}s of {rounds} ({', '.join(f'{t:.2f}' for t in t_theirs)})")
    print(f"same scores: {'yes' if same else 'NO'}")
    print(f"eval_overhead: {ratio:.3f} (target <= {TARGET}) {'PASS' if ratio <= TARGET and same else 'MISS'}")


def build_model(root: Path, smoke: bool, env: dict[str, str]) -> Path:
    """A trained tokenizer and a briefly trained GPT-2, copied out of its run (plain HF model dir)."""
    os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")})
    from rich.console import Console

    from llmforge import Recipe

    shape = {"n_layer": 1, "n_embd": 32, "n_head": 2} if smoke else {"n_layer": 6, "n_embd": 384, "n_head": 6}
    recipe = Recipe.from_dict(
        {
            "name": "eval-overhead",
            "data": {"source": "text", "path": str(CORPUS), "documents": "paragraph", "max_documents": 2000},
            "tokenizer": {"vocab_size": 2048 if smoke else 8192},
            "model": {**shape, "context_length": 256},
            "train": {"max_steps": 2, "batch_size": 4},
        }
    )
    started = time.perf_counter()
    recipe.run(root / "run", console=Console(quiet=True))
    model = root / "model"
    shutil.copytree(root / "run" / "train" / "final", model)
    print(f"built the model in {time.perf_counter() - started:.1f}s")
    return model


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return seconds


def same_scores(ours: Path, theirs_dir: Path) -> bool:
    mine = json.loads(ours.read_text())["lm_eval"]["results"]
    other = json.loads(next(theirs_dir.rglob("results_*.json")).read_text())["results"]
    keys = [(t, k) for t, m in other.items() for k in m if k.startswith(("acc,", "acc_norm,"))]
    return bool(keys) and all(mine[t][k] == other[t][k] for t, k in keys)


def parameters(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    return f"{config.get('n_layer')} layers x {config.get('n_embd')} wide, context {config.get('n_positions')}"


if __name__ == "__main__":
    main()
