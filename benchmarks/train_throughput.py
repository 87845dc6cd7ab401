"""Real (non-padding) training tokens per second: llmforge's default pretrain path against the seed
recipe and against a bare PyTorch loop, on the same model shape, corpus, tokenizer and step count.

The seed recipe (a popular tutorial): sentence-split text, each sentence padded to `max_length`,
labels = input_ids, `GPT2Config` defaults (dropout 0.1), transformers `Trainer` defaults (fp32).
The bare loop: llmforge's own packed blocks and initial model, the same precision, optimizer,
schedule and attention, `model(**batch).loss`, no Trainer. Each contender runs in its own process.

    python benchmarks/train_throughput.py           # GPT-2 124M shape at context 256 (~6 minutes on 2 cores)
    python benchmarks/train_throughput.py --smoke   # a 4-layer, 256-wide model (under 2 minutes)
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import CORPUS, arguments, emit, machine, run_contender, target  # noqa: E402

FULL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "context_length": 256, "batch_size": 8, "steps": 6}
SMOKE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "context_length": 128, "batch_size": 8, "steps": 5}
WARM = 2


def recipe_for(shape: dict, tokenizer: str, steps: int, **train):
    from llmforge import Recipe

    return Recipe.from_dict(
        {
            "name": "throughput",
            "data": {"source": "text", "path": str(CORPUS), "documents": "paragraph", "val_fraction": 0.01},
            "tokenizer": {"train": False, "path": tokenizer},
            "model": {k: shape[k] for k in ("n_layer", "n_embd", "n_head", "context_length")},
            "train": {
                "max_steps": steps,
                "batch_size": shape["batch_size"],
                "log_every": 1,
                "lr": 3e-4,
                "warmup": 0,
                **train,
            },
        }
    )


def llmforge_contender(shape: dict, tokenizer: str) -> dict:
    from rich.console import Console

    with tempfile.TemporaryDirectory() as out:
        recipe_for(shape, tokenizer, WARM + shape["steps"]).run(out, console=Console(quiet=True))
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    tps = sorted(r["tokens_per_second"] for r in rows if "loss" in r and r["step"] > WARM)
    return {"real_tokens_per_second": tps[len(tps) // 2], "padding": 0.0}


def bare_contender(shape: dict, tokenizer: str) -> dict:
    """A hand-written loop over the blocks llmforge prepared, with llmforge's default settings."""
    import datasets
    from rich.console import Console
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    from llmforge.data.batches import PackedCollator
    from llmforge.models.attention import document_attention
    from llmforge.training.allocator import keep_freed_memory
    from llmforge.training.optimizers import MuonWithAdamW
    from llmforge.training.precision import choose

    with tempfile.TemporaryDirectory() as out:
        recipe = recipe_for(shape, tokenizer, 1)
        recipe.run(out, console=Console(quiet=True))  # data, tokenizer, initial model (and one step)
        keep_freed_memory()
        blocks = datasets.load_from_disk(str(Path(out) / "data" / "blocks"))["train"].with_format("torch")
        model = AutoModelForCausalLM.from_pretrained(str(Path(out) / "model"), attn_implementation="sdpa")
        model.config.use_cache = False
        bf16 = choose("auto", model, shape["context_length"]).precision == "bf16"
        eos = model.config.eos_token_id
    torch.manual_seed(0)
    collate = PackedCollator(eos)
    loader = torch.utils.data.DataLoader(blocks, batch_size=shape["batch_size"], shuffle=True, collate_fn=collate)
    steps = WARM + shape["steps"]
    # llmforge's default optimizer (train.optimizer: muon), Newton-Schulz in the training's precision
    ns_dtype = torch.bfloat16 if bf16 else torch.float32
    opt = MuonWithAdamW(model, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.999), ns_dtype=ns_dtype)
    sched = get_cosine_schedule_with_warmup(opt, 0, steps)
    model.train()
    times = []
    batches = iter(loader)
    with document_attention(model):  # the same attention as llmforge's path: only the loop around it differs
        for _ in range(steps):
            start = time.perf_counter()
            batch = next(batches)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            times.append(time.perf_counter() - start)
    step_time = sorted(times[WARM:])[len(times[WARM:]) // 2]
    return {"real_tokens_per_second": shape["batch_size"] * shape["context_length"] / step_time, "padding": 0.0}


def seed_contender(shape: dict, tokenizer: str) -> dict:
    """The seed tutorial: sentences padded to max_length, labels = input_ids, GPT2Config defaults, Trainer."""
    import datasets
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer)
    tok.pad_token = tok.eos_token  # what the seed does
    text = "\n".join(p.read_text() for p in sorted(CORPUS.glob("*.txt")))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    T = shape["context_length"]

    def encode(batch):
        enc = tok(batch["text"], padding="max_length", truncation=True, max_length=T)
        enc["labels"] = [list(ids) for ids in enc["input_ids"]]
        return enc

    ds = datasets.Dataset.from_dict({"text": sentences}).map(encode, batched=True, remove_columns=["text"])
    real = sum(sum(m) for m in ds["attention_mask"])
    padding = 1 - real / (len(ds) * T)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=T,
        n_embd=shape["n_embd"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.start)

    steps = WARM + shape["steps"]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=shape["batch_size"],
            max_steps=steps,
            learning_rate=3e-4,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=[Clock()]
        )
        trainer.train()
    step_time = sorted(times[WARM:])[len(times[WARM:]) // 2]
    real_per_step = shape["batch_size"] * T * (1 - padding)
    return {
        "real_tokens_per_second": real_per_step / step_time,
        "padding": padding,
        "positions_per_second": shape["batch_size"] * T / step_time,
    }


def build_tokenizer(out: Path) -> None:
    from rich.console import Console

    from llmforge import Recipe

    recipe = Recipe.from_dict(
        {"name": "tok", "data": {"path": str(CORPUS), "documents": "paragraph"}, "tokenizer": {"vocab_size": 8192}}
    )
    with tempfile.TemporaryDirectory() as run:
        from transformers import AutoTokenizer

        recipe.run(run, until="tokenizer", console=Console(quiet=True))
        AutoTokenizer.from_pretrained(str(Path(run) / "tokenizer")).save_pretrained(str(out))


CONTENDERS = {"seed": seed_contender, "llmforge": llmforge_contender, "bare-loop": bare_contender}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    shape = SMOKE if args.smoke else FULL
    torch.set_num_threads(args.threads)
    if args.contender:
        return emit(CONTENDERS[args.contender](shape, args.tokenizer))

    print(machine(args.threads))
    print(
        f"shape: {shape['n_layer']} layers x {shape['n_embd']} wide, context {shape['context_length']}, "
        f"batch {shape['batch_size']}, {shape['steps']} timed steps after {WARM} warm-up steps"
    )
    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(Path(tmp) / "tok")
        results = {
            name: run_contender(
                __file__,
                name,
                ["--tokenizer", str(Path(tmp) / "tok"), "--threads", str(args.threads)]
                + (["--smoke"] if args.smoke else []),
                args.threads,
            )
            for name in CONTENDERS
        }
    for name, r in results.items():
        extra = f" ({100 * r['padding']:.0f}% of positions are padding)" if r["padding"] else ""
        print(f"{name:10s} {r['real_tokens_per_second']:10,.0f} real tokens/s{extra}")
    vs_seed = results["llmforge"]["real_tokens_per_second"] / results["seed"]["real_tokens_per_second"]
    overhead = results["bare-loop"]["real_tokens_per_second"] / results["llmforge"]["real_tokens_per_second"] - 1
    print(f"ratio llmforge / seed: {vs_seed:.1f}x; llmforge overhead over the bare loop: {100 * overhead:+.1f}%")
    print(target("train_throughput_vs_seed", vs_seed, ">=", 40.0, "{:.1f}"))
    print(target("llmforge_overhead_vs_bare_loop", overhead, "<=", 0.05, "{:+.3f}"))


if __name__ == "__main__":
    main()
