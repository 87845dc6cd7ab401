"""The one training loop: pretraining and fine-tuning are the same Trainer run with different parts.

A stage hands `fit` a `TrainingJob`: how to build the model, the train and validation sets, the
collator, the fingerprints a checkpoint and the final model must carry. The loop does the rest the
same way for every stage (and for the next objective): resume from the last complete checkpoint,
plugins' `prepare_model`, the document-mask guard, document-aware attention, progress and
metrics.jsonl, early stopping, out-of-memory retries with a smaller batch, the atomic final save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback
from transformers.trainer_callback import PrinterCallback

from llmforge import rundir
from llmforge.config.schema import TrainConfig
from llmforge.data.batches import DocumentMaskGuard
from llmforge.data.streaming import streaming_trainer_class
from llmforge.errors import TrainingError
from llmforge.models.attention import document_attention
from llmforge.models.lora import parameter_counts
from llmforge.plugin.manager import Plugins
from llmforge.training.allocator import keep_freed_memory
from llmforge.training.arguments import planned_steps, training_arguments
from llmforge.training.callbacks import LlmforgeCallback, truncate_metrics
from llmforge.training.checkpoints import last_evaluation, logged, resume_point, save_final
from llmforge.training.distributed import world_size
from llmforge.training.trainer import LlmforgeTrainer, fused_loss_supported


@dataclasses.dataclass
class TrainingJob:
    """What one training stage hands the loop; everything else is the same for every stage."""

    stage: str  # "train", "finetune": its folder in the run dir and its rows in metrics.jsonl
    config: TrainConfig  # the stage's block (a FinetuneConfig is a TrainConfig)
    run_dir: Path
    plugins: Plugins
    console: Console
    tokenizer: Any
    make_model: Callable[[TrainConfig], torch.nn.Module]  # a fresh model for each attempt
    train_set: Any  # a Dataset, or (streaming) a function (resume, rank, world) -> an IterableDataset
    eval_set: Any
    collator: Any
    compat: str  # what a checkpoint must share with the recipe to be resumed
    fingerprint: str  # the final model's
    row_tokens: float  # tokens in one training row: the block length, or the rows' mean
    block_length: int | None = None  # rows of exactly this many tokens (pretraining blocks)
    rows: str = "examples"  # what a row is, for the plan line
    document_guard: bool = False  # refuse a forward call that would attend across packed documents
    width: int | None = None  # the model's width (precision 'auto' on a CPU)
    streaming: bool = False
    final_model: Callable[[Any], Any] | None = None  # e.g. LoRA merged into its base before the save
    stop_ids: list[int] | None = None  # the ids generation stops at, saved in the final model dir
    quiet: Callable[[], Any] = contextlib.nullcontext  # warnings of a library this stage has already said
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stage's own facts, saved too
    oom_hint: str = "model.context_length"  # what to shorten when even one row does not fit

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)


def fit(job: TrainingJob) -> tuple[dict[str, Any], Any]:
    """Train (retrying with half the batch and twice the accumulation on out-of-memory when asked);
    the outputs and the final model in memory."""
    cfg = job.config
    attempt = cfg
    while True:
        try:
            return _fit_once(job, attempt)
        except torch.OutOfMemoryError as exc:
            where = job.stage
            if not cfg.auto_batch_size or attempt.batch_size == 1:
                raise TrainingError(
                    f"Out of memory with {where}.batch_size {attempt.batch_size}. Lower {where}.batch_size and raise "
                    f"{where}.grad_accum by the same factor (the effective batch stays), or lower "
                    f"{job.oom_hint}; {where}.auto_batch_size: true does the halving for you."
                ) from exc
            attempt = dataclasses.replace(
                attempt, batch_size=attempt.batch_size // 2, grad_accum=attempt.grad_accum * 2
            )
            job.console.print(
                f"  out of memory: retrying from the last complete checkpoint with batch_size {attempt.batch_size} "
                f"x grad_accum {attempt.grad_accum} (same effective batch)"
            )
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _fit_once(job: TrainingJob, cfg: TrainConfig) -> tuple[dict[str, Any], Any]:
    """One attempt: build the Trainer, resume if a checkpoint fits, train, save."""
    if cfg.keep_freed_memory and not torch.cuda.is_available():
        keep_freed_memory()
    ckpt_dir = job.path(job.stage, "checkpoints")
    resume = resume_point(ckpt_dir, job.compat, job.console)
    model = job.make_model(cfg)
    trainable, total = parameter_counts(model)
    job.plugins.call("prepare_model", model=model, stage=job.stage, config=cfg)
    guard = DocumentMaskGuard().attach(model) if job.document_guard else None

    world = world_size()
    tokens_per_step = round(cfg.batch_size * cfg.grad_accum * world * job.row_tokens)
    steps = cfg.max_steps if job.streaming else planned_steps(cfg, len(job.train_set), world)
    compile_body = cfg.torch_compile and cfg.fused_loss and world == 1 and fused_loss_supported(model)
    if compile_body:  # the fused loss calls the body directly, so compile the body, not the wrapper
        model.base_model.compile()
    args = training_arguments(
        dataclasses.replace(cfg, torch_compile=cfg.torch_compile and not compile_body), ckpt_dir, steps, job.width
    )
    train_set = job.train_set
    trainer_class: type = LlmforgeTrainer
    if job.streaming:  # read the stream from its saved position; Trainer must not replay batches
        args.ignore_data_skip = True
        train_set = job.train_set(resume, args.process_index, args.world_size)
        trainer_class = streaming_trainer_class(LlmforgeTrainer)
    callback = LlmforgeCallback(
        job.stage,
        job.run_dir,
        job.plugins,
        job.console,
        tokens_per_step,
        job.compat,
        cfg.keep_last,
        divergence_factor=cfg.divergence_factor,
        stream=train_set if job.streaming else None,
        blocks_per_step=cfg.batch_size * cfg.grad_accum,
    )
    callbacks: list[Any] = [callback]
    if cfg.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=job.eval_set,
        data_collator=job.collator,
        processing_class=job.tokenizer,
        callbacks=callbacks,
        on_nan=cfg.on_nan,
        max_skipped_batches=cfg.max_skipped_batches,
        stage=job.stage,
        fused_loss=cfg.fused_loss,
    )
    trainer.remove_callback(PrinterCallback)  # LlmforgeCallback shows progress and logs
    truncate_metrics(job.path("metrics.jsonl"), job.stage, resume[1] if resume else 0)
    if resume:
        job.console.print(f"  resuming from {resume[0].name} (step {resume[1]})")
        _say_batch_change(job.console, resume[0], tokens_per_step)
    job.console.print(f"  {_plan(job, cfg, steps, tokens_per_step, world)}")
    with document_attention(model), job.quiet():
        started = time.perf_counter()
        if resume is not None and resume[1] >= steps and not cfg.early_stopping:
            # Training had finished; only the final save was cut short. Trainer would take one more step.
            model.load_state_dict(load_file(resume[0] / "model.safetensors"), strict=False)
            trainer.state.global_step = resume[1]
            train_loss = logged(job.path("metrics.jsonl"), job.stage, "train_loss", resume[1])
            evaluation = logged(job.path("metrics.jsonl"), job.stage, "eval_loss", resume[1], whole_row=True)
        else:
            train_loss = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None).training_loss
            evaluation = last_evaluation(trainer)
        wall = time.perf_counter() - started
        if guard is not None:
            guard.remove()
        evaluation = evaluation or trainer.evaluate()
    done_steps = trainer.state.global_step - (resume[1] if resume else 0)
    best = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
    outputs = {
        "steps": trainer.state.global_step,
        "stopped_early": trainer.state.global_step < steps,
        "best_step": int(Path(best).name.split("-")[-1]) if best else None,
        "train_loss": train_loss,
        "val_loss": evaluation["eval_loss"],
        "val_perplexity": math.exp(min(evaluation["eval_loss"], 50)),
        "skipped_batches": trainer.skipped_batches,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "tokens_per_second": round(done_steps * tokens_per_step / wall, 1) if wall > 0 else None,
        "train_seconds": round(wall, 1),
        **job.outputs,
    }
    if job.streaming and resume is not None and train_set.first_block_seconds is not None:
        # the whole cost of continuing the stream: open it at the saved position, read to the first new block
        outputs["stream_resume_seconds"] = round(train_set.first_block_seconds, 4)
        job.console.print(
            f"  the stream continued from its saved position in {1000 * train_set.first_block_seconds:,.0f} ms"
        )
    final_model = job.final_model(trainer.model) if job.final_model is not None else trainer.model
    if args.should_save:
        with job.quiet():
            final = job.path(job.stage, "final")
            save_final(trainer, job.tokenizer, final, job.fingerprint, outputs, final_model, job.stop_ids)
    return outputs, final_model


def _plan(job: TrainingJob, cfg: TrainConfig, steps: int, tokens_per_step: int, world: int) -> str:
    processes = f" x {world} processes" if world > 1 else ""
    if job.block_length is not None:
        shape = f"{cfg.batch_size} x {cfg.grad_accum} x {job.block_length}{processes}"
        return f"{steps} steps of {tokens_per_step:,} tokens ({shape})"
    return (
        f"{steps} steps of {cfg.batch_size} x {cfg.grad_accum}{processes} {job.rows}, "
        f"about {tokens_per_step:,} tokens per step"
    )


def _say_batch_change(console: Console, checkpoint: Path, tokens_per_step: int) -> None:
    """Resuming with another effective batch is allowed (the seed tutorial did it) and said aloud."""
    before = (rundir.read_manifest(checkpoint) or {}).get("info", {}).get("tokens_per_step")
    if before is not None and before != tokens_per_step:
        console.print(
            f"  note: the effective batch changed since {checkpoint.name}: {before:,} -> {tokens_per_step:,} "
            "tokens per optimizer step"
        )
