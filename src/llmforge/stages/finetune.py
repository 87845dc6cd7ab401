"""Finetune stage: turn a base model into an instruction-following one with the one training loop.

The base is this run's `train/final` or any local HF causal-LM dir (`finetune.base`). The examples
(llmforge.chat.examples) are cached in `finetune/data/`. Training is llmforge.training.loop on every
weight or on LoRA adapters (llmforge.models.lora); plugins adjust the model through `prepare_model`
(NEFTune attaches there). The result in `finetune/final/` is a plain HF model dir whose tokenizer
carries the chat template and whose generation config stops at the end-of-turn token; with
`lora.merge: false` it holds the adapter, which names its base dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import datasets

from llmforge import rundir
from llmforge.chat.conversations import Installed
from llmforge.chat.examples import (
    base_dir,
    base_model,
    base_tokenizer,
    build_examples,
    max_length,
    source_config,
    summary_lines,
)
from llmforge.config.schema import FinetuneConfig
from llmforge.data.batches import ExampleCollator
from llmforge.errors import ConfigError
from llmforge.models.lora import (
    apply_lora,
    check_targets,
    merge_into,
    parameter_counts,
    prepare_quantized,
    quantization,
    quiet_peft,
    rounded_base,
)
from llmforge.stages.context import Context
from llmforge.training.arguments import validate
from llmforge.training.checkpoints import best_step
from llmforge.training.distributed import distributed_state, training_device
from llmforge.training.loop import TrainingJob, fit
from llmforge.training.precision import compute_dtype
from llmforge.training.reruns import settings

ARTEFACT = "finetune/final"
EXAMPLES = "finetune/data"
DATA_KEYS = (  # the settings that shape the examples (and so the cached finetune/data)
    "source", "path", "name", "config", "split", "data_files", "encoding", "options", "max_examples",
    "val_fraction", "seed", "format", "chat_template", "loss_mask", "system_prompt", "max_length",
    "length_policy", "packing",
)  # fmt: skip


def enabled(recipe: Any) -> bool:
    return recipe.finetune is not None


def describe(out: dict[str, Any]) -> str:
    if "val_loss" not in out:
        return ""
    how = f"LoRA r={out['lora_r']}{' merged' if out.get('merged') else ' adapter'}" if out.get("lora_r") else "full"
    return (
        f"val loss {out['val_loss']:.3f} on {out['validation_examples']} examples{best_step(out)}; {how}, "
        f"{out['trainable_parameters'] / out['total_parameters']:.1%} of weights trained; "
        f"loss on {out['loss_share']:.0%} of tokens"
    )


def fingerprint(ctx: Context) -> str:
    return rundir.fingerprint("finetune", settings(ctx.recipe.finetune), compat_fingerprint(ctx))


def compat_fingerprint(ctx: Context) -> str:
    """What a checkpoint must share with the recipe to be resumed: the base, the examples, the adapters, the
    optimizer's kind."""
    lora = ctx.recipe.finetune.lora
    adapters = dataclasses.asdict(lora) if lora else None
    return rundir.fingerprint("finetune-compat", data_fingerprint(ctx), adapters, ctx.recipe.finetune.optimizer)


def data_fingerprint(ctx: Context) -> str:
    cfg: FinetuneConfig = ctx.recipe.finetune
    settings = {key: getattr(cfg, key) for key in DATA_KEYS}
    inputs = ctx.source(source_config(cfg), cache="finetune").inputs() if cfg.path else None
    return rundir.fingerprint("finetune-data", settings, inputs, base_fingerprint(ctx))


def base_fingerprint(ctx: Context) -> Any:
    cfg: FinetuneConfig = ctx.recipe.finetune
    if cfg.base is None:
        if "train" not in ctx.fingerprints:
            raise ConfigError(
                "finetune.base is not set and the recipe trains no model (no train block): name the model dir "
                "to fine-tune in finetune.base."
            )
        return ctx.fingerprints["train"]
    path = Path(cfg.base).expanduser()
    if path.is_dir():
        return rundir.file_stats([p for p in path.rglob("*") if p.is_file()])
    return cfg.base


def run(ctx: Context) -> dict[str, Any]:
    cfg: FinetuneConfig = ctx.recipe.finetune
    validate(cfg, "finetune")
    base = base_dir(cfg, ctx.run_dir)
    if cfg.lora is not None:
        check_targets(base, cfg.lora)  # a wrong target module is reported before anything is written
    tok, installed = base_tokenizer(base, cfg, ctx.plugins)
    examples, stats = prepare(ctx, tok, installed, base)
    attn = ctx.recipe.model.attn_implementation if ctx.recipe.model is not None else "sdpa"

    quantized = quantization(cfg.lora, compute_dtype(cfg.precision), training_device())

    def make_model(_: FinetuneConfig) -> Any:
        model = base_model(base, tok, cfg, ctx.console, attn, **quantized)
        how = ""
        if cfg.lora is not None:
            with quiet_peft():
                model = apply_lora(prepare_quantized(model), cfg.lora, installed.added_ids, base)
            targets = {
                t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules
            }  # all-linear: full names
            how = f": LoRA r={cfg.lora.r} on {', '.join(sorted(targets))}"
            how += f" of a {cfg.lora.quantize} 4-bit base" if cfg.lora.quantize else ""
            how += f" + {len(installed.added_ids)} new token rows" if installed.added_ids else ""
        trainable, total = parameter_counts(model)
        ctx.console.print(f"  training {trainable:,} of {total:,} parameters ({trainable / total:.2%}){how}")
        return model

    merge = cfg.lora is not None and cfg.lora.merge

    def merged(model: Any) -> Any:
        if not rounded_base(model):
            return model.merge_and_unload()
        ctx.console.print("  merging the adapters into the base loaded again in full precision")
        return merge_into(base_model(base, tok, cfg, ctx.console, attn), model)

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    job = TrainingJob(
        stage="finetune",
        config=cfg,
        run_dir=ctx.run_dir,
        plugins=ctx.plugins,
        console=ctx.console,
        tokenizer=tok,
        make_model=make_model,
        train_set=examples["train"],
        eval_set=examples["validation"],
        collator=ExampleCollator(pad_id, cfg.document_aware, fill_id=tok.eos_token_id),
        compat=compat_fingerprint(ctx),
        fingerprint=ctx.fingerprints["finetune"],
        row_tokens=stats["train"]["tokens"] / max(stats["train"]["rows"], 1),  # a mean: rows vary in length
        rows="packed rows" if cfg.packing else "examples",
        document_guard=cfg.packing and cfg.document_aware,
        final_model=merged if merge else None,
        stop_ids=list(dict.fromkeys(i for i in (installed.end_of_turn_id, tok.eos_token_id) if i is not None)),
        quiet=quiet_peft,
        rerun=ctx.rerun("finetune"),
        discard=ctx.discard,
        oom_hint="finetune.max_length" if cfg.packing else "finetune.max_length or the longest examples",
        outputs={
            "train_examples": stats["train"]["examples"],
            "validation_examples": stats["validation"]["examples"],
            "loss_share": stats["train"]["loss_share"],
            "lora_r": cfg.lora.r if cfg.lora else None,
            "merged": merge,
            "neftune_alpha": cfg.neftune_alpha,
            "end_of_turn": installed.end_of_turn,
            "base": base,
            "examples": str(ctx.path(EXAMPLES)),
            "pad_id": pad_id,
            "fill_id": tok.eos_token_id,
            "document_aware": cfg.document_aware,
        },
    )
    outputs, model = fit(job)
    ctx.cache.setdefault("models", {})["finetune"] = model  # the evaluate stage scores it without a reload
    return outputs


def prepare(ctx: Context, tok: Any, installed: Installed, base: str) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Train and validation examples (cached in finetune/data) and their statistics."""
    cfg: FinetuneConfig = ctx.recipe.finetune
    out = ctx.path(EXAMPLES)
    fp = data_fingerprint(ctx)
    dist = distributed_state()  # under torchrun every process fine-tunes; one prepares, the others wait
    with dist.main_process_first() if dist is not None else contextlib.nullcontext():
        if not rundir.is_complete(out, fp):
            if not 0.0 < cfg.val_fraction < 1.0:
                raise ConfigError(f"finetune.val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}.")
            splits, stats = build_examples(cfg, tok, installed, ctx.plugins, max_length(cfg, base), ctx.console)
            with rundir.atomic_dir(out, fp, stats) as tmp:
                splits.save_to_disk(str(tmp))
    stats = rundir.read_manifest(out)["info"]
    for line in summary_lines(stats, cfg):
        ctx.console.print(f"  {line}")
    return datasets.load_from_disk(str(out)), stats
