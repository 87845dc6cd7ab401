"""Train stage: pretrain on packed, document-aware blocks with transformers' Trainer.

Trainer brings the loop, mixed precision, gradient accumulation, torch.compile and DDP. llmforge adds
the packed collator, checkpoints that are only trusted once complete, exact resume from the last
complete one, metrics.jsonl and the progress display (llmforge.callbacks).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from llmforge import rundir
from llmforge.allocator import keep_freed_memory
from llmforge.attention import document_attention
from llmforge.callbacks import LlmforgeCallback, checkpoints, complete_checkpoints, truncate_metrics
from llmforge.config import TrainConfig
from llmforge.context import Context
from llmforge.errors import ConfigError, RunDirError, TrainingError
from llmforge.packing import DocumentMaskGuard, PackedCollator
from llmforge.stages import data
from llmforge.stages.tokenizer import load_tokenizer
from llmforge.streaming import StreamingBlocks, streaming_trainer_class
from llmforge.streaming import load_state as stream_state
from llmforge.trainer import LlmforgeTrainer, fused_loss_supported

ARTEFACT = "train/final"


def enabled(recipe: Any) -> bool:
    return recipe.train is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    if "val_loss" not in out:
        return ""
    tps = out.get("tokens_per_second")
    return (
        f"val loss {out['val_loss']:.3f}, perplexity {out['val_perplexity']:.1f} "
        f"(unigram {out['unigram_perplexity']:.1f})" + (f"; {tps:,.0f} tok/s" if tps else "")
    )


def fingerprint(ctx: Context) -> str:
    return rundir.fingerprint("train", vars(ctx.recipe.train), compat_fingerprint(ctx))


def compat_fingerprint(ctx: Context) -> str:
    """What a checkpoint must share with the recipe to be resumed: the model and its data."""
    return rundir.fingerprint("train-compat", ctx.fingerprints["model"], data.blocks_fingerprint(ctx))


def run(ctx: Context) -> dict[str, Any]:
    cfg: TrainConfig = ctx.recipe.train
    validate(cfg)
    if streaming(ctx):
        validate_streaming(cfg)
    tok = load_tokenizer(ctx)
    blocks = data.blocks(ctx)
    return retry_on_oom(ctx, cfg, lambda attempt: fit(ctx, attempt, tok, blocks))


def retry_on_oom(
    ctx: Context, cfg: TrainConfig, fit: Any, where: str = "train", shorter: str = "model.context_length"
) -> dict[str, Any]:
    """`fit(cfg)`, retried with half the batch and twice the accumulation on out-of-memory if asked."""
    attempt = cfg
    while True:
        try:
            outputs = fit(attempt)
            break
        except torch.OutOfMemoryError as exc:
            if not cfg.auto_batch_size or attempt.batch_size == 1:
                raise TrainingError(
                    f"Out of memory with {where}.batch_size {attempt.batch_size}. Lower {where}.batch_size and raise "
                    f"{where}.grad_accum by the same factor (the effective batch stays), or lower "
                    f"{shorter}; {where}.auto_batch_size: true does the halving for you."
                ) from exc
            attempt = dataclasses.replace(
                attempt, batch_size=attempt.batch_size // 2, grad_accum=attempt.grad_accum * 2
            )
            ctx.console.print(
                f"  out of memory: retrying from the last complete checkpoint with batch_size {attempt.batch_size} "
                f"x grad_accum {attempt.grad_accum} (same effective batch)"
            )
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return outputs


def fit(ctx: Context, cfg: TrainConfig, tok: Any, blocks: Any) -> dict[str, Any]:
    """One attempt at training: build the Trainer, resume if a checkpoint fits, train, save."""
    if cfg.keep_freed_memory and not torch.cuda.is_available():
        keep_freed_memory()
    ckpt_dir = ctx.path("train", "checkpoints")
    resume = resume_point(ckpt_dir, compat_fingerprint(ctx), ctx)
    model = AutoModelForCausalLM.from_pretrained(
        str(ctx.path("model")), attn_implementation=ctx.recipe.model.attn_implementation
    )
    ctx.plugins.call("prepare_model", model=model, stage="train", config=cfg)
    guard = DocumentMaskGuard().attach(model) if cfg.document_aware else None

    T = ctx.recipe.model.context_length
    world = max(1, torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * T * world
    steps = cfg.max_steps if streaming(ctx) else planned_steps(cfg, len(blocks["train"]), world)
    compile_body = cfg.torch_compile and cfg.fused_loss and world == 1 and fused_loss_supported(model)
    if compile_body:  # the fused loss calls the body directly, so compile the body, not the wrapper
        model.base_model.compile()
    args = training_arguments(
        dataclasses.replace(cfg, torch_compile=cfg.torch_compile and not compile_body),
        ckpt_dir,
        steps,
        width=ctx.recipe.model.n_embd,
    )
    train_set = blocks["train"].with_format("torch")
    trainer_class: type = LlmforgeTrainer
    if streaming(ctx):  # read the stream from its saved position; Trainer must not replay batches
        args.ignore_data_skip = True
        train_set = streaming_train_set(ctx, tok, resume, args.process_index, args.world_size)
        trainer_class = streaming_trainer_class(LlmforgeTrainer)
    callback = LlmforgeCallback(
        "train",
        ctx.run_dir,
        ctx.plugins,
        ctx.console,
        tokens_per_step,
        compat_fingerprint(ctx),
        cfg.keep_last,
        divergence_factor=cfg.divergence_factor,
        stream=train_set if streaming(ctx) else None,
        blocks_per_step=cfg.batch_size * cfg.grad_accum,
    )
    callbacks: list[Any] = [callback]
    if cfg.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=blocks["validation"].with_format("torch"),
        data_collator=PackedCollator(tok.eos_token_id, cfg.document_aware),
        processing_class=tok,
        callbacks=callbacks,
        on_nan=cfg.on_nan,
        max_skipped_batches=cfg.max_skipped_batches,
        stage="train",
        fused_loss=cfg.fused_loss,
    )
    trainer.remove_callback(PrinterCallback)  # LlmforgeCallback shows progress and logs
    truncate_metrics(ctx.path("metrics.jsonl"), "train", resume[1] if resume else 0)
    if resume:
        ctx.console.print(f"  resuming from {resume[0].name} (step {resume[1]})")
        log_batch_change(ctx, resume[0], tokens_per_step)
    ctx.console.print(
        f"  {steps} steps of {tokens_per_step:,} tokens ({cfg.batch_size} x {cfg.grad_accum} "
        f"x {T}{f' x {world} processes' if world > 1 else ''})"
    )
    with document_attention(model):
        started = time.perf_counter()
        if resume is not None and resume[1] >= steps and not cfg.early_stopping:
            # Training had finished; only the final save was cut short. Trainer would take one more step.
            model.load_state_dict(load_file(resume[0] / "model.safetensors"), strict=False)
            trainer.state.global_step = resume[1]
            train_loss = logged(ctx, "train_loss", resume[1])
            evaluation = logged(ctx, "eval_loss", resume[1], whole_row=True)
        else:
            train_loss = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None).training_loss
            evaluation = last_evaluation(trainer)
        wall = time.perf_counter() - started
        if guard is not None:
            guard.remove()
        evaluation = evaluation or trainer.evaluate()
    done_steps = trainer.state.global_step - (resume[1] if resume else 0)
    outputs = {
        "steps": trainer.state.global_step,
        "train_loss": train_loss,
        "val_loss": evaluation["eval_loss"],
        "val_perplexity": math.exp(min(evaluation["eval_loss"], 50)),
        "unigram_perplexity": data.block_stats(ctx)["validation"]["unigram_perplexity"],
        "skipped_batches": trainer.skipped_batches,
        "tokens_per_second": round(done_steps * tokens_per_step / wall, 1) if wall > 0 else None,
        "train_seconds": round(wall, 1),
    }
    if streaming(ctx) and resume is not None and train_set.first_block_seconds is not None:
        # the whole cost of continuing the stream: open it at the saved position, read to the first new block
        outputs["stream_resume_seconds"] = round(train_set.first_block_seconds, 4)
        ctx.console.print(
            f"  the stream continued from its saved position in {1000 * train_set.first_block_seconds:,.0f} ms"
        )
    if args.should_save:
        save_final(trainer, tok, ctx.path("train", "final"), ctx.fingerprints["train"], outputs)
    ctx.cache.setdefault("models", {})["train"] = trainer.model  # the evaluate stage scores it without a reload
    return outputs


def streaming(ctx: Context) -> bool:
    return ctx.recipe.data is not None and ctx.recipe.data.streaming


def validate_streaming(cfg: TrainConfig) -> None:
    if not cfg.max_steps:
        raise ConfigError("data.streaming: true needs train.max_steps: a stream has no length to count epochs by.")
    if cfg.dataloader_workers:
        raise ConfigError(
            "data.streaming: true reads the stream in the training process (its position is checkpointed exactly); "
            "set train.dataloader_workers: 0."
        )


def streaming_train_set(
    ctx: Context, tok: Any, resume: tuple[Path, int] | None, rank: int, world: int
) -> StreamingBlocks:
    """This rank's endless packed blocks from the stream, starting where the checkpoint left off."""
    cfg = ctx.recipe.data
    state = stream_state(resume[0], rank, world) if resume else None
    train_set = StreamingBlocks(
        data.open_stream(cfg, ctx),
        tok,
        ctx.recipe.model.context_length,
        first_row=cfg.val_documents,
        max_rows=cfg.max_documents,
        rank=rank,
        world=world,
        state=state,
        where=data.where_of(cfg),
        column=cfg.text_column,
    )
    if state is not None:
        ctx.console.print(
            f"  stream position: epoch {state['epoch']}, row {state['rows']:,}, {len(state['carry'])} carried-over "
            f"tokens, {state['blocks']:,} blocks trained{f' (process {rank})' if world > 1 else ''}"
        )
    return train_set


def logged(ctx: Context, key: str, step: int, whole_row: bool = False) -> Any:
    """The last value of `key` that this stage logged at `step` in metrics.jsonl (None if there is none)."""
    path = ctx.path("metrics.jsonl")
    found = None
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("stage") == "train" and row.get("step") == step and key in row:
            found = row if whole_row else row[key]
    return found


def log_batch_change(ctx: Context, checkpoint: Path, tokens_per_step: int) -> None:
    """Resuming with another effective batch is allowed (the seed tutorial did it) and said aloud."""
    before = (rundir.read_manifest(checkpoint) or {}).get("info", {}).get("tokens_per_step")
    if before is not None and before != tokens_per_step:
        ctx.console.print(
            f"  note: the effective batch changed since {checkpoint.name}: {before:,} -> {tokens_per_step:,} "
            "tokens per optimizer step"
        )


def last_evaluation(trainer: Trainer) -> dict[str, float] | None:
    """The evaluation of the model training ended with, if one was logged (no need to evaluate twice).

    With early stopping that is the best checkpoint's (load_best_model_at_end), else the final step's."""
    best = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    if best is not None:
        step = int(Path(best).name.split("-")[-1])
        for entry in trainer.state.log_history:
            if "eval_loss" in entry and entry.get("step") == step:
                return entry
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == trainer.state.global_step else None
    return None


def validate(cfg: TrainConfig, where: str = "train") -> None:
    for key in ("batch_size", "grad_accum", "keep_last", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where}.{key} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"{where}.max_steps must be at least 1, got {cfg.max_steps}.")
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise ConfigError(f"{where}.epochs must be positive, got {cfg.epochs}.")
    if not cfg.lr > 0:
        raise ConfigError(f"{where}.lr must be positive, got {cfg.lr}.")
    if cfg.early_stopping and not cfg.eval_every:
        raise ConfigError(f"{where}.early_stopping needs {where}.eval_every: the patience counts evaluations.")
    for key in ("eval_every", "save_every"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{where}.{key} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.early_stopping and cfg.save_every and cfg.save_every % cfg.eval_every:
        raise ConfigError(
            f"{where}.early_stopping keeps the best evaluated checkpoint, so {where}.save_every ({cfg.save_every}) "
            f"must be a multiple of {where}.eval_every ({cfg.eval_every}); leave save_every out to save at each one."
        )


def planned_steps(cfg: TrainConfig, n_blocks: int, world: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(math.ceil(n_blocks / (cfg.batch_size * world)) / cfg.grad_accum)
    return max(1, math.ceil(per_epoch * cfg.epochs))


CPU_BF16_MIN_WIDTH = 512  # below this, bf16 autocast on a CPU measured no faster than fp32 (performance.md)


def precision_flags(precision: str, width: int | None = None) -> dict[str, bool]:
    """bf16/fp16 flags for TrainingArguments, or a clear error where the hardware cannot."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            return {"bf16": torch.cuda.is_bf16_supported(), "fp16": False}
        return {"bf16": _cpu_has_bf16() and (width or 0) >= CPU_BF16_MIN_WIDTH, "fp16": False}
    if precision == "fp16" and not cuda:
        raise TrainingError("train.precision fp16 needs a CUDA GPU. Use bf16 (or auto) on a CPU, or fp32.")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError("This GPU has no bf16 support. Use train.precision fp16 or fp32.")
    if precision == "bf16" and not cuda and not _cpu_has_bf16():
        raise TrainingError("This CPU has no bf16 support (avx512_bf16/AMX). Use train.precision fp32.")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_arguments(cfg: TrainConfig, output_dir: Path, steps: int, width: int | None = None) -> TrainingArguments:
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    evaluate = cfg.eval_every is not None
    save_every = cfg.save_every or (cfg.eval_every if cfg.early_stopping else None)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type={"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule],
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch_fused",
        logging_strategy="steps",
        logging_steps=cfg.log_every,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=cfg.eval_every,
        save_strategy="steps" if save_every else "no",
        save_steps=save_every,
        save_total_limit=None,  # LlmforgeCallback rotates, counting complete checkpoints only
        load_best_model_at_end=bool(cfg.early_stopping),
        metric_for_best_model="eval_loss" if cfg.early_stopping else None,
        greater_is_better=False if cfg.early_stopping else None,
        seed=cfg.seed,
        torch_compile=cfg.torch_compile,
        report_to=[r for r in cfg.report_to if r != "none"] or "none",
        dataloader_num_workers=cfg.dataloader_workers,
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        use_cache=False,
        logging_nan_inf_filter=False,  # a NaN must show, not be averaged away
        ddp_find_unused_parameters=False,  # every weight gets a gradient: no extra pass under DDP
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        **precision_flags(cfg.precision, width),
    )


def resume_point(ckpt_dir: Path, compat: str, ctx: Context) -> tuple[Path, int] | None:
    """The latest complete checkpoint; incomplete ones (a kill during a save) are removed."""
    for path in checkpoints(ckpt_dir):
        if rundir.read_manifest(path) is None:
            ctx.console.print(f"  removing incomplete {path.name} (interrupted while saving)")
            shutil.rmtree(path, ignore_errors=True)
    rundir.clean_stale(ckpt_dir)
    done = complete_checkpoints(ckpt_dir)
    if not done:
        return None
    if not rundir.is_complete(done[-1], compat):
        raise RunDirError(
            f"{ckpt_dir} holds checkpoints of a different model, tokenizer or data than this recipe, so "
            "training cannot resume from them. Use another --out, or delete that directory to start over."
        )
    return done[-1], int(done[-1].name.split("-")[1])


def save_final(
    trainer: Trainer,
    tok: Any,
    final: Path,
    fp: str,
    outputs: dict[str, Any],
    model: Any = None,
    eos_token_id: int | list[int] | None = None,
) -> None:
    """The finished model as a plain HF dir (loads without llmforge), written atomically.

    `model` replaces the trainer's (e.g. LoRA merged into its base); `eos_token_id` the ids generation
    stops at (e.g. a chat template's end-of-turn token and EOS)."""
    model = trainer.model if model is None else model
    model.config.use_cache = True
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tok.eos_token_id if eos_token_id is None else eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
    with rundir.atomic_dir(final, fp, outputs) as tmp:
        if model is trainer.model:
            trainer.save_model(str(tmp))
        else:
            model.save_pretrained(str(tmp))
        if model.generation_config is not None and not (tmp / "generation_config.json").exists():
            model.generation_config.save_pretrained(str(tmp))  # a LoRA adapter dir: where generation stops
        tok.save_pretrained(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle: a model dir holds safetensors only
