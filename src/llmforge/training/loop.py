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
import json
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
from llmforge.training.arguments import UNTIL_TIME_IS_UP, keeps_best, peak_lr, planned_steps, training_arguments
from llmforge.training.budget import Clock, StopAtBudget, budget_schedule, parse_duration, spent_in
from llmforge.training.callbacks import LlmforgeCallback, truncate_metrics
from llmforge.training.checkpoints import last_evaluation, logged, save_final
from llmforge.training.distributed import distributed_state, world_size
from llmforge.training.loss import use_vocab_cross_entropy
from llmforge.training.precision import choose as choose_precision
from llmforge.training.precision import frozen_weights_in
from llmforge.training.reruns import ApplySettings, Mode, Start, settings, start_point
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
    streaming: bool = False
    final_model: Callable[[Any], Any] | None = None  # e.g. LoRA merged into its base before the save
    stop_ids: list[int] | None = None  # the ids generation stops at, saved in the final model dir
    quiet: Callable[[], Any] = contextlib.nullcontext  # warnings of a library this stage has already said
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stage's own facts, saved too
    oom_hint: str = "model.context_length"  # what to shorten when even one row does not fit
    rerun: Mode = "auto"  # what a changed setting does to the checkpoints found (llmforge.training.reruns)
    discard: bool = False  # a run trained afresh deletes the earlier one instead of keeping it aside

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
            job = dataclasses.replace(job, rerun="auto")  # a retry goes on from this attempt's checkpoints
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
    world = world_size()
    tokens_per_step = round(cfg.batch_size * cfg.grad_accum * world * job.row_tokens)
    steps = cfg.max_steps if job.streaming else planned_steps(cfg, len(job.train_set), world)
    current = settings(job.config)  # the recipe's, not an out-of-memory retry's smaller batch
    dist = distributed_state()  # one process decides (and moves an old run aside); the others then agree
    with dist.main_process_first() if dist is not None else contextlib.nullcontext():
        start = start_point(job.stage, job.run_dir, job.compat, current, steps, job.rerun, job.console, job.discard)
    resume = (start.checkpoint, start.step) if start.resumed else None
    budget = parse_duration(cfg.max_time, f"{job.stage}.max_time")
    clock = Clock(budget, spent_in(start.checkpoint)) if budget is not None else None
    model = job.make_model(cfg)
    use_vocab_cross_entropy(model)  # its own loss, same value, fewer passes over the logits
    trainable, total = parameter_counts(model)
    # timed before the plugins' prepare_model: their hooks must see training's forwards only, not the probe's
    with dist.main_process_first() if dist is not None else contextlib.nullcontext():  # the others read its cache
        length = job.block_length or max(1, round(job.row_tokens))
        precision = choose_precision(cfg.precision, model, length, batch=cfg.batch_size)
    if freed := frozen_weights_in(model, precision.precision):
        job.console.print(f"  frozen weights kept in {precision.precision}: {freed / 2**20:,.0f} MB less")
    job.plugins.call("prepare_model", model=model, stage=job.stage, config=cfg)
    guard = DocumentMaskGuard().attach(model) if job.document_guard else None
    compile_body = cfg.torch_compile and cfg.fused_loss and world == 1 and fused_loss_supported(model)
    if compile_body:  # the fused loss calls the body directly, so compile the body, not the wrapper
        model.base_model.compile()
    args = training_arguments(
        dataclasses.replace(cfg, torch_compile=cfg.torch_compile and not compile_body, lr=peak_lr(cfg, model)),
        ckpt_dir,
        steps,
        precision.precision,
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
        checkpoint_info=lambda: {
            "settings": current,
            "planned_steps": steps,
            **({"seconds_spent": round(clock.spent(), 3)} if clock is not None else {}),
        },
        save_at_evaluations=keeps_best(cfg),
        clock=clock,
    )
    callbacks: list[Any] = [callback]
    if start.changed:
        callbacks.append(ApplySettings())
    stop_at_budget = StopAtBudget(clock, evaluate=cfg.eval_every is not None) if clock is not None else None
    if stop_at_budget is not None:
        callbacks.append(stop_at_budget)
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
        optimizer_kind=cfg.optimizer,
        schedule=(lambda opt: budget_schedule(opt, clock, cfg.schedule, cfg.warmup, steps)) if clock else None,
    )
    trainer.remove_callback(PrinterCallback)  # LlmforgeCallback shows progress and logs
    truncate_metrics(job.path("metrics.jsonl"), job.stage, resume[1] if resume else 0)
    if resume and not start.changed:
        job.console.print(f"  resuming from {resume[0].name} (step {resume[1]})")
    if resume:
        _say_batch_change(job.console, resume[0], tokens_per_step)
    job.console.print(f"  {_plan(job, cfg, steps, tokens_per_step, world)}")
    if cfg.lr is None:
        job.console.print(f"  peak learning rate {args.learning_rate:.2g} ({job.stage}.lr unset: set by width)")
    if measured := precision.describe():
        job.console.print(f"  {measured}")
    with document_attention(model), job.quiet():
        started = time.perf_counter()
        spent = clock is not None and clock.left() <= 0  # a resumed run whose budget was already used up
        if resume is not None and (resume[1] >= steps or spent) and not cfg.early_stopping:
            # Training had finished; only the final save was cut short. Trainer would take one more step.
            kept = _kept_checkpoint(resume[0], keeps_best(cfg))
            model.load_state_dict(load_file(kept / "model.safetensors"), strict=False)
            trainer.state.global_step = resume[1]
            trainer.state.best_model_checkpoint = str(kept) if keeps_best(cfg) else None
            kept_step = int(kept.name.split("-")[1])
            train_loss = logged(job.path("metrics.jsonl"), job.stage, "train_loss", resume[1])
            evaluation = logged(job.path("metrics.jsonl"), job.stage, "eval_loss", kept_step, whole_row=True)
        else:
            try:
                train_loss = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None).training_loss
            finally:
                callback.close()
            best = trainer.state.best_model_checkpoint if keeps_best(cfg) else None
            if best is not None and not args.load_best_model_at_end and Path(best).name != f"checkpoint-{steps}":
                trainer._load_best_model()  # Trainer's own loader (adapters too); early stopping has it call this
            evaluation = last_evaluation(trainer, keeps_best(cfg))
        wall = time.perf_counter() - started
        if guard is not None:
            guard.remove()
        evaluation = evaluation or trainer.evaluate()
    done_steps = trainer.state.global_step - (resume[1] if resume else 0)
    best = trainer.state.best_model_checkpoint if keeps_best(cfg) else None
    outputs = {
        "status": _status(start, done_steps),
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
        "seconds_spent": round(clock.spent(), 1) if clock is not None else None,
        "train_seconds": round(wall, 1),
        "precision": precision.precision,
        **job.outputs,
    }
    if job.streaming and resume is not None and train_set.first_block_seconds is not None:
        # the whole cost of continuing the stream: open it at the saved position, read to the first new block
        outputs["stream_resume_seconds"] = round(train_set.first_block_seconds, 4)
        job.console.print(
            f"  the stream continued from its saved position in {1000 * train_set.first_block_seconds:,.0f} ms"
        )
    if outputs["best_step"] not in (None, outputs["steps"]):
        job.console.print(
            f"  final model: step {outputs['best_step']} of {outputs['steps']}, the lowest validation loss "
            f"({outputs['val_loss']:.4f}; {job.stage}.final_model: last keeps the last step's)"
        )
    final_model = job.final_model(trainer.model) if job.final_model is not None else trainer.model
    if args.should_save:
        with job.quiet():
            final = job.path(job.stage, "final")
            save_final(trainer, job.tokenizer, final, job.fingerprint, outputs, final_model, job.stop_ids)
    return outputs, final_model


def _status(start: Start, done_steps: int) -> str:
    """The stage's word in the summary table: what this run did, never "ran" when no step ran."""
    if start.resumed and done_steps == 0:
        return "saved (no step left)"
    if start.resumed:
        return f"resumed at {start.step}, +{done_steps} steps"
    return f"{'trained afresh' if start.set_aside is not None else 'trained'}, {done_steps} steps"


def _kept_checkpoint(last: Path, best: bool) -> Path:
    """The checkpoint whose weights a finished run keeps: the best evaluated one, or the last."""
    if best:
        state = last / "trainer_state.json"
        name = json.loads(state.read_text()).get("best_model_checkpoint") if state.is_file() else None
        if name and (last.parent / Path(name).name).is_dir():
            return last.parent / Path(name).name
    return last


def _plan(job: TrainingJob, cfg: TrainConfig, steps: int, tokens_per_step: int, world: int) -> str:
    processes = f" x {world} processes" if world > 1 else ""
    until = steps >= UNTIL_TIME_IS_UP
    how_long = f"{cfg.max_time} of training" if until else f"{steps} steps"
    if job.block_length is not None:
        shape = f"{cfg.batch_size} x {cfg.grad_accum} x {job.block_length}{processes}"
        line = f"{how_long} of {tokens_per_step:,} tokens ({shape})"
    else:
        line = (
            f"{how_long} of {cfg.batch_size} x {cfg.grad_accum}{processes} {job.rows}, "
            f"about {tokens_per_step:,} tokens per step"
        )
    if cfg.max_time is not None and not until:
        line += f", or {cfg.max_time} of training if that ends first"
    if not job.streaming and not until:
        rows = len(job.train_set)
        epochs = steps * cfg.batch_size * cfg.grad_accum * world / max(rows, 1)
        line += f": {epochs:.3g} epochs over {rows:,} {job.rows}"
    return line


def _say_batch_change(console: Console, checkpoint: Path, tokens_per_step: int) -> None:
    """Resuming with another effective batch is allowed (the seed tutorial did it) and said aloud."""
    before = (rundir.read_manifest(checkpoint) or {}).get("info", {}).get("tokens_per_step")
    if before is not None and before != tokens_per_step:
        console.print(
            f"  note: the effective batch changed since {checkpoint.name}: {before:,} -> {tokens_per_step:,} "
            "tokens per optimizer step"
        )
