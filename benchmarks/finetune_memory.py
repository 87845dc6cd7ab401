"""Full fine-tuning vs LoRA vs QLoRA: peak memory, trainable parameters, tokens/s and validation loss.

Two bases of real shapes, random weights (nothing is downloaded), saved as plain HF dirs with a byte-level
BPE of 8,192 trained on the bundled corpus (the embeddings keep the real vocabulary's rows):
  gpt2-124m    GPT-2 small: 12 x 768, 12 heads, 1,024 positions, 50,257 embedding rows (Conv1D weights)
  smollm-135m  SmolLM-135M: Llama, 30 x 576, 9 heads (3 key/value), MLP 1,536, 49,152 tied rows
Contenders, each a fresh process fine-tuning the same examples (the bundled alpaca rows, chatml,
assistant_only, max_length 256, batch 4) for the same steps at llmforge's default learning rates:
  full    every weight, AdamW
  lora    finetune.lora r 16 on all-linear (peft), merge false (the adapter is saved)
  qlora   the same on a base loaded in 4 bits (nf4, bitsandbytes), merge false
Printed per base: peak RSS (ru_maxrss of the process: libraries, data preparation and training together;
it counts the base's safetensors pages, which transformers maps rather than copies) and peak anonymous
RSS (what the process allocated, sampled every 20 ms),
trainable parameters, tokens/s (median of the logged windows after the first) and validation loss after
the steps, each as a ratio to full. At the smoke's small shapes the libraries' own ~1 GB dominates.
Target (issue 18): LoRA's peak RSS at most 0.6x full fine-tuning's at the 124M shape.

    python benchmarks/finetune_memory.py            # the two real shapes, 12 steps each (about 15 minutes)
    python benchmarks/finetune_memory.py --smoke    # small shapes, 4 steps (about 2 minutes)
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import AnonymousPeak, arguments, corpus_text, emit, machine, run_contender, target, train_bpe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INSTRUCT = REPO / "examples" / "data" / "instruct" / "alpaca.jsonl"
CONTENDERS = ("full", "lora", "qlora")


def shapes(smoke: bool) -> dict[str, dict]:
    if smoke:
        return {
            "gpt2-124m": {
                "family": "gpt2",
                "n_embd": 256,
                "n_layer": 4,
                "n_head": 4,
                "n_positions": 512,
                "vocab": 8192,
            },
            "smollm-135m": {
                "family": "llama",
                "hidden_size": 192,
                "intermediate_size": 512,
                "num_hidden_layers": 4,
                "num_attention_heads": 3,
                "num_key_value_heads": 1,
                "tie_word_embeddings": True,
                "max_position_embeddings": 512,
                "vocab": 8192,
            },
        }
    return {
        "gpt2-124m": {
            "family": "gpt2",
            "n_embd": 768,
            "n_layer": 12,
            "n_head": 12,
            "n_positions": 1024,
            "vocab": 50257,
        },
        "smollm-135m": {
            "family": "llama",
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "tie_word_embeddings": True,
            "max_position_embeddings": 2048,
            "vocab": 49152,
        },
    }


def build_base(path: Path, shape: dict) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    texts = [p for p in corpus_text().split("\n\n") if p.strip()]
    tok = train_bpe(texts, 8192)
    keys = {k: v for k, v in shape.items() if k not in ("family", "vocab")}
    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}
    config = AutoConfig.for_model(shape["family"], vocab_size=shape["vocab"], **ids, **keys)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))


def contender(name: str, base: Path, work: Path, steps: int) -> None:
    from rich.console import Console

    import llmforge
    from llmforge.config.schema import FinetuneConfig, LoraConfig

    anon = AnonymousPeak()
    lora = (
        None if name == "full" else LoraConfig(r=16, alpha=32, merge=False, quantize="nf4" if name == "qlora" else None)
    )
    cfg = FinetuneConfig(
        path=str(INSTRUCT),
        format="alpaca",
        max_examples=400,
        max_length=256,
        batch_size=4,
        max_steps=steps,
        log_every=2,
        eval_every=steps,
        save_every=steps,
        lora=lora,
    )
    console = Console(record=True, width=160)
    run = llmforge.finetune(base, cfg, work, console=console)
    text = console.export_text()
    line = next(x for x in text.splitlines() if "training " in x and " parameters" in x)
    trainable = int(line.split("training ")[1].split(" of ")[0].replace(",", ""))
    rows = run.metrics()
    windows = [r["tokens_per_second"] for r in rows if "tokens_per_second" in r][1:]
    val = [r["eval_loss"] for r in rows if "eval_loss" in r]
    emit(
        {
            "name": name,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mb": anon.stop(),
            "trainable": trainable,
            "tokens_per_second": statistics.median(windows) if windows else float("nan"),
            "val_loss": val[-1] if val else float("nan"),
        }
    )


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--base")
    parser.add_argument("--work")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    if args.contender:
        return contender(args.contender, Path(args.base), Path(args.work), args.steps)
    steps = args.steps or (4 if args.smoke else 12)
    print(machine(2))
    lora_ratio, anon_ratio = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, shape in shapes(args.smoke).items():
            base = Path(tmp) / label
            build_base(base, shape)
            results = {}
            for name in CONTENDERS:
                extra = ["--base", str(base), "--work", str(Path(tmp) / f"{label}-{name}"), "--steps", str(steps)]
                results[name] = run_contender(__file__, name, extra, threads=2, timeout=7200)
            full = results["full"]
            print(f"\n{label} ({steps} steps, batch 4, max_length 256)")
            print(
                "| contender | peak RSS MB | x full | anonymous MB | x full | trainable | x full | tokens/s | x full "
                "| val loss |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for name, r in results.items():
                print(
                    f"| {name} | {r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] / full['peak_rss_mb']:.2f} | "
                    f"{r['peak_anon_mb']:,.0f} | {r['peak_anon_mb'] / full['peak_anon_mb']:.2f} | "
                    f"{r['trainable']:,} | {r['trainable'] / full['trainable']:.4f} | {r['tokens_per_second']:,.0f} | "
                    f"{r['tokens_per_second'] / full['tokens_per_second']:.2f} | {r['val_loss']:.3f} |",
                    flush=True,
                )
            lora_ratio[label] = results["lora"]["peak_rss_mb"] / full["peak_rss_mb"]
            anon_ratio[label] = results["lora"]["peak_anon_mb"] / full["peak_anon_mb"]
    print()
    print(target("lora_peak_rss_vs_full_gpt2_124m", lora_ratio["gpt2-124m"], "<=", 0.6, "{:.2f}"))
    print(target("lora_peak_anon_vs_full_gpt2_124m", anon_ratio["gpt2-124m"], "<=", 0.6, "{:.2f}"))


if __name__ == "__main__":
    main()
