"""Model FLOPs utilisation of llmforge's real training path (Recipe -> Trainer) on this machine.

MFU = (6 N + 12 L d T) FLOPs per token x tokens/s / the bf16 (or fp32) matmul peak measured in this run.
GPT-2 124M (12 layers, 768 wide, context 1024, 50,257-token vocabulary) and the tiny example, each
configuration in its own process. Target on a CPU: at least 75% of the measured bf16 peak for 124M.

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
from benchlib import CORPUS, arguments, emit, machine, matmul_peak, run_contender, target, train_bpe  # noqa: E402

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
    recipe = Recipe.from_dict(
        {
            "name": "mfu",
            "data": {"source": "text", "path": str(CORPUS), "documents": "paragraph", "val_fraction": 0.01},
            "tokenizer": {"train": False, "path": tokenizer} if big else {"vocab_size": 4096},
            "model": sizes,
            "train": {
                "max_steps": warm + steps,
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
    tps = [r["tokens_per_second"] for r in rows if "loss" in r and r["step"] > warm]
    T, L, d = sizes["context_length"], sizes["n_layer"], sizes["n_embd"]
    precision = overrides.get("precision", "auto")
    bf16 = precision == "bf16" or (precision == "auto" and d >= 512)
    emit(
        {
            "name": name,
            "params": params,
            "flops_per_token": 6 * params + 12 * L * d * T,
            "tokens_per_second": sorted(tps)[len(tps) // 2],
            "bf16": bf16,
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
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"measured matmul peak: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s")
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
            peak = peaks["bf16" if r["bf16"] else "fp32"]
            r["mfu_bf16_peak"] = r["flops_per_token"] * r["tokens_per_second"] / peaks["bf16"]
            r["mfu_own_peak"] = r["flops_per_token"] * r["tokens_per_second"] / peak
            results.append(r)
            print(
                f"{name:26s} {r['params'] / 1e6:7.1f}M params  {r['tokens_per_second']:9,.0f} tok/s  "
                f"MFU {100 * r['mfu_bf16_peak']:5.1f}% of bf16 peak ({100 * r['mfu_own_peak']:5.1f}% of "
                f"{'bf16' if r['bf16'] else 'fp32'} peak)",
                flush=True,
            )
    base = next(r for r in results if r["name"] == "124m defaults")
    for r in results:
        if r["name"].startswith("124m") and r is not base:
            print(f"ratio {r['name']} / defaults: {r['tokens_per_second'] / base['tokens_per_second']:.3f}")
    print(target("mfu_gpt2_124m_bf16", base["mfu_bf16_peak"], ">=", 0.75, "{:.3f}"))


if __name__ == "__main__":
    main()
