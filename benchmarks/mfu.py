"""Model FLOPs utilisation of llmforge's real training path (Recipe -> Trainer) on this machine.

MFU = (6 N + 12 L d T) FLOPs per token x tokens/s / the bf16 (or fp32) matmul peak measured in this run.
GPT-2 124M (12 layers, 768 wide, context 1024, 50,257-token vocabulary) and the tiny example, each
configuration in its own process. Targets for 124M, of the faster measured matmul peak (bf16, or fp32 where
bf16 is emulated): 80% on a CPU without AMX, 50% on one with AMX or on a GPU.
The machine line names the CPU flags that set the matmul speed (AMX, AVX-512 bf16); each configuration
prints a torch.profiler summary of two more steps (benchmarks/step_profile.py): the share of op time in
matmuls, in attention and in the largest other ops, so a regression shows what grew.

    python benchmarks/mfu.py            # all configurations (about 10 minutes on 2 cores)
    python benchmarks/mfu.py --smoke    # llmforge's defaults only, fewer steps (under 2 minutes)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_profile  # noqa: E402
from benchlib import CORPUS, arguments, cpu_info, emit, machine, matmul_peak, run_contender, target, train_bpe  # noqa: E402

GPT2_VOCAB = 50257
SHAPES = {
    "gpt2-124m": {"n_layer": 12, "n_embd": 768, "n_head": 12, "context_length": 1024},
    "tiny-example": {"n_layer": 2, "n_embd": 128, "n_head": 4, "context_length": 128},
}
# name -> (shape, train overrides)
CONFIGS = {
    "124m defaults": ("gpt2-124m", {}),
    "124m + torch.compile": ("gpt2-124m", {"torch_compile": True}),
    "124m chunked loss": ("gpt2-124m", {"fused_loss": True}),
    "124m mmap allocator": ("gpt2-124m", {"keep_freed_memory": False}),
    "124m fp32": ("gpt2-124m", {"precision": "fp32"}),
    "tiny defaults": ("tiny-example", {}),
}
SMOKE = ["124m defaults", "tiny defaults"]
PROFILED = 2  # optimizer steps under torch.profiler after the timed ones


def build_tokenizer(out: Path, vocab: int) -> None:
    """A BPE tokenizer of the bundled corpus padded to GPT-2's vocabulary size, so the head costs what GPT-2's does."""
    tok = train_bpe(p.read_text() for p in sorted(CORPUS.glob("*.txt")))
    tok.add_tokens([f"<|filler{i}|>" for i in range(vocab - len(tok))])
    tok.save_pretrained(str(out))


def contender(name: str, tokenizer: str, steps: int, warm: int) -> None:
    from rich.console import Console

    from llmforge import Recipe

    shape, overrides = CONFIGS[name]
    sizes = SHAPES[shape]
    big = shape == "gpt2-124m"
    step_profile.WINDOW = (warm + steps + 1, warm + steps + PROFILED)  # after the timed steps: it slows its own
    recipe = Recipe.from_dict(
        {
            "name": "mfu",
            "plugins": ["step_profile"],
            "data": {"source": "text", "path": str(CORPUS), "documents": "paragraph", "val_fraction": 0.01},
            "tokenizer": {"train": False, "path": tokenizer} if big else {"vocab_size": 4096},
            "model": sizes,
            "train": {
                "max_steps": warm + steps + PROFILED,
                "batch_size": 1 if big else 16,
                "grad_accum": 4 if big else 1,
                "log_every": 1,
                "lr": 3e-4,
                **overrides,
            },
        }
    )
    with tempfile.TemporaryDirectory() as out:
        recipe.run(out, console=Console(quiet=True))
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        params = json.loads((Path(out) / "model" / ".llmforge.json").read_text())["info"]["parameters"]
        precision = json.loads((Path(out) / "train" / "final" / ".llmforge.json").read_text())["info"]["precision"]
    tps = [r["tokens_per_second"] for r in rows if "loss" in r and warm < r["step"] <= warm + steps]
    T, L, d = sizes["context_length"], sizes["n_layer"], sizes["n_embd"]
    emit(
        {
            "name": name,
            "params": params,
            "flops_per_token": 6 * params + 12 * L * d * T,
            "tokens_per_second": sorted(tps)[len(tps) // 2],
            "bf16": precision == "bf16",
            "profile": step_profile.SUMMARY,
        }
    )


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--configs", help="comma-separated subset of: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    steps = args.steps or (3 if args.smoke else 6)
    if args.contender:
        torch.set_num_threads(args.threads)
        return contender(args.contender, args.tokenizer, steps, warm=2)

    torch.set_num_threads(args.threads)
    print(machine(args.threads))
    flags = cpu_info()[1]
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    # MFU's denominator is the faster of the two peaks: where bf16 is emulated (no AVX-512 bf16, no AMX) fp32's
    best = max(peaks, key=peaks.get)
    print(
        f"measured matmul peak: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; "
        f"MFU below is of the {best} peak"
    )
    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(Path(tmp) / "tok", GPT2_VOCAB)
        results = []
        chosen = args.configs.split(",") if args.configs else (SMOKE if args.smoke else list(CONFIGS))
        for name in chosen:
            r = run_contender(
                __file__,
                name,
                ["--tokenizer", str(Path(tmp) / "tok"), "--steps", str(steps), "--threads", str(args.threads)],
                args.threads,
            )
            r["mfu"] = r["flops_per_token"] * r["tokens_per_second"] / peaks[best]
            results.append(r)
            print(
                f"{name:26s} {r['params'] / 1e6:7.1f}M params  {r['tokens_per_second']:9,.0f} tok/s  "
                f"MFU {100 * r['mfu']:5.1f}%  (trained in {'bf16' if r['bf16'] else 'fp32'})",
                flush=True,
            )
            print(f"{'':26s} profile of {PROFILED} steps: {step_profile.describe(r['profile'])}", flush=True)
    base = next(r for r in results if r["name"] == "124m defaults")
    for r in results:
        if r["name"].startswith("124m") and r is not base:
            print(f"ratio {r['name']} / defaults: {r['tokens_per_second'] / base['tokens_per_second']:.3f}")
    if torch.cuda.is_available():
        kind, goal = "gpu", 0.50
    else:
        kind, goal = ("cpu_amx", 0.50) if "amx_bf16" in flags else ("cpu_no_amx", 0.80)
    print(target(f"mfu_gpt2_124m_{kind}", base["mfu"], ">=", goal, "{:.3f}"))


if __name__ == "__main__":
    main()
