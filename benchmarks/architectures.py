"""GPT-2 against the Llama-style shape at the same parameter count: validation loss after the same tokens, and speed.

Every contender trains through llmforge's own path (a Recipe: the bundled corpus examples/data/corpus,
a 4,096-token BPE trained on it, the same packed blocks, seed, batches, learning-rate schedule,
fused loss and document-aware attention), each in a fresh process, one after the other in one run.
The Llama-style contender has GPT-2's depth, width and heads, half as many key/value heads, and the
SwiGLU width that gives it GPT-2's parameter count (GPT-2's learned positions included).

    python benchmarks/architectures.py                        # 4 x 256 shapes, ~600k tokens each (~10 min)
    python benchmarks/architectures.py --smoke                # 2 x 64 shapes, a few steps (under 2 minutes)
    python benchmarks/architectures.py --archs gpt2,llama,qwen3 --tokens 300000 --threads 2

Prints the machine, the thread count and the load, a table (parameters, tokens, validation loss and
perplexity, tokens/s as the median step and the 90th percentile, time, load average before and after),
and one comparison line per contender as ratios to the first (gpt2). Validation loss does not depend
on the machine's load; tokens/s does (2 threads on 2 shared cores): the p90 column is the speed when
nothing else competed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import CORPUS, arguments, emit, machine, run_contender  # noqa: E402

VOCAB = 4096
FULL = {"n_layer": 4, "n_embd": 256, "n_head": 4, "context_length": 256, "batch_size": 16, "tokens": 600_000}
SMOKE = {"n_layer": 2, "n_embd": 64, "n_head": 2, "context_length": 64, "batch_size": 8, "tokens": 25_000}


def matched_shape(arch: str, base: dict, vocab: int) -> dict:
    """`arch` at GPT-2's depth, width and heads (GQA: half the KV heads), MLP width matched to GPT-2's count."""
    from llmforge.models.families import FAMILIES

    shape = {k: base[k] for k in ("n_layer", "n_embd", "n_head", "context_length")}
    family = FAMILIES[arch]
    if arch == "gpt2" or not family.mlp:
        return {"arch": arch, **shape}
    if family.kv_heads and base["n_head"] % 2 == 0:
        shape["n_kv_head"] = base["n_head"] // 2
    target = parameters({"arch": "gpt2", **{k: base[k] for k in shape if k != "n_kv_head"}}, vocab)
    lo, hi = (parameters({"arch": arch, **shape, "extra": {family.mlp: w}}, vocab) for w in (64, 128))
    per_unit = (hi - lo) / 64  # parameters per unit of MLP width: linear in it
    width = 64 + (target - lo) / per_unit
    return {"arch": arch, **shape, "extra": {family.mlp: max(8, 8 * round(width / 8))}}


def parameters(model: dict, vocab: int) -> int:
    from transformers import AutoModelForCausalLM

    from llmforge.config.schema import ModelConfig
    from llmforge.models.build import family_config

    class Vocabulary:
        eos_token_id, bos_token_id, pad_token_id = 0, None, 1

        def __len__(self) -> int:
            return vocab

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(family_config(ModelConfig(**model), Vocabulary()))
    return sum(p.numel() for p in net.parameters())


def contender(model: dict, setting: dict, lr: float, seed: int, max_documents: int | None) -> None:
    """One training run in this process; prints a RESULT line."""
    from rich.console import Console

    from llmforge import Recipe

    load_at_start = os.getloadavg()[0]
    steps = math.ceil(setting["tokens"] / (setting["batch_size"] * setting["context_length"]))
    recipe = Recipe.from_dict(
        {
            "name": "architectures",
            "data": {
                "source": "text",
                "path": str(CORPUS),
                "documents": "paragraph",
                "val_fraction": 0.05,
                "max_documents": max_documents,
            },
            "tokenizer": {"vocab_size": VOCAB},
            "model": model,
            "train": {
                "max_steps": steps,
                "batch_size": setting["batch_size"],
                "lr": lr,
                "schedule": "cosine",
                "warmup": 0.05,
                "log_every": 1,
                "seed": seed,
            },
        }
    )
    with tempfile.TemporaryDirectory() as out:
        recipe.run(out, console=Console(quiet=True))
        run = Path(out)
        final = json.loads((run / "train" / "final" / ".llmforge.json").read_text())["info"]
        params = json.loads((run / "model" / ".llmforge.json").read_text())["info"]["parameters"]
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        tokenizer = hashlib.sha256((run / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()[:12]
        blocks = json.loads((run / "data" / "stats.json").read_text())["blocks"]
    # per optimizer step, after two warm-up steps: the median is what a run gets on this (shared) machine,
    # the 90th percentile the speed when no other process competes for the cores
    speeds = sorted(r["tokens_per_second"] for r in rows if "loss" in r and r["step"] > 2)
    emit(
        {
            "arch": model["arch"],
            "model": model,
            "parameters": params,
            "tokens": steps * setting["batch_size"] * setting["context_length"],
            "val_loss": final["val_loss"],
            "tokens_per_second": speeds[len(speeds) // 2],
            "tokens_per_second_p90": speeds[int(0.9 * (len(speeds) - 1))],
            "load": [load_at_start, os.getloadavg()[0]],
            "train_seconds": final["train_seconds"],
            "tokenizer": tokenizer,
            "validation_tokens": blocks["validation"]["tokens"],
        }
    )


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--archs", default="gpt2,llama", help="families to compare; the first is the baseline")
    parser.add_argument("--tokens", type=int, help="training tokens per contender (default: 600k, smoke 25k)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, the same for all (default 2e-3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per contender (default 2)")
    parser.add_argument("--seed", type=int, default=1234, help="initialisation and data order, the same for all")
    args = parser.parse_args()
    setting = dict(SMOKE if args.smoke else FULL)
    if args.tokens:
        setting["tokens"] = args.tokens
    max_documents = 3000 if args.smoke else None
    if args.contender:
        torch.set_num_threads(args.threads)
        return contender(json.loads(args.contender), setting, args.lr, args.seed, max_documents)

    torch.set_num_threads(args.threads)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    print(machine(args.threads))
    models = [matched_shape(arch, setting, VOCAB) for arch in archs]
    subset = f" (first {max_documents} paragraphs)" if max_documents else ""
    print(
        f"corpus {CORPUS.relative_to(CORPUS.parents[2])}{subset}, "
        f"BPE vocabulary {VOCAB}, context {setting['context_length']}, batch {setting['batch_size']}, "
        f"~{setting['tokens']:,} training tokens each, lr {args.lr} (cosine, 5% warmup), seed {args.seed}, "
        "precision auto"
    )
    results = []
    for model in models:
        print(f"  training {model} ...", flush=True)
        extra = ["--threads", str(args.threads), "--lr", str(args.lr), "--seed", str(args.seed)]
        extra += (["--smoke"] if args.smoke else []) + (["--tokens", str(args.tokens)] if args.tokens else [])
        results.append(run_contender(__file__, json.dumps(model), extra, args.threads))
    if len({r["tokenizer"] for r in results}) != 1 or len({r["validation_tokens"] for r in results}) != 1:
        raise SystemExit("contenders saw different tokenizers or validation data: the comparison is void")

    print()
    print("| arch | shape | parameters | tokens | val loss | perplexity | tokens/s median (p90) | train time | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["model"]
        shape = f"{m['n_layer']}x{m['n_embd']}, {m['n_head']} heads" + (
            f" ({m['n_kv_head']} KV)" if m.get("n_kv_head") else ""
        )
        shape += "".join(f", {k} {v}" for k, v in m.get("extra", {}).items())
        print(
            f"| {r['arch']} | {shape} | {r['parameters'] / 1e6:.2f}M | {r['tokens']:,} | {r['val_loss']:.3f} | "
            f"{math.exp(r['val_loss']):.1f} | {r['tokens_per_second']:,.0f} ({r['tokens_per_second_p90']:,.0f}) | "
            f"{r['train_seconds']:.0f}s | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.2f} at the end; {args.threads} torch thread(s) per contender")
    base = results[0]
    for r in results[1:]:
        print(
            f"{r['arch']} / {base['arch']}: parameters {r['parameters'] / base['parameters']:.3f}x, "
            f"val loss {r['val_loss'] / base['val_loss']:.3f}x, "
            f"perplexity {math.exp(r['val_loss'] - base['val_loss']):.3f}x, "
            f"tokens/s {r['tokens_per_second'] / base['tokens_per_second']:.3f}x "
            f"(p90 {r['tokens_per_second_p90'] / base['tokens_per_second_p90']:.3f}x)"
        )


if __name__ == "__main__":
    main()
