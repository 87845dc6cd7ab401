"""Training settings: a stage config checked, the planned steps, and the TrainingArguments it becomes."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import TrainingArguments

from llmforge.config.schema import TrainConfig
from llmforge.errors import ConfigError
from llmforge.training.budget import WSD_DECAY, parse_duration
from llmforge.training.distributed import use_cpu
from llmforge.training.precision import check as check_precision


def validate(cfg: TrainConfig, where: str = "train") -> None:
    for key in ("batch_size", "grad_accum", "keep_last", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where}.{key} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ConfigError(f"{where}.max_steps must be at least 1, got {cfg.max_steps}.")
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise ConfigError(f"{where}.epochs must be positive, got {cfg.epochs}.")
    parse_duration(cfg.max_time, f"{where}.max_time")
    if cfg.lr is not None and not cfg.lr > 0:
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


def keeps_best(cfg: TrainConfig) -> bool:
    """The final model is the best evaluated checkpoint (validation runs and the recipe did not ask for the
    last): a checkpoint is then saved at every evaluation too (LlmforgeCallback), so the best one exists."""
    return cfg.eval_every is not None and (cfg.final_model == "best" or bool(cfg.early_stopping))


UNTIL_TIME_IS_UP = 10**9  # the steps Trainer plans when only a wall-clock budget ends training


AUTO_LR = 2e-3  # the best peak rate measured at AUTO_LR_WIDTH (docs/performance.md, benchmarks/quality.py)
AUTO_LR_WIDTH = 256


def peak_lr(cfg: TrainConfig, model: torch.nn.Module) -> float:
    """`lr`, or where the recipe leaves it unset: AUTO_LR up to AUTO_LR_WIDTH wide, then falling as 1/width,
    as AdamW's best rate does (GPT-3's table: 6e-4 at 768 wide, 2e-4 at 2,048; this gives 6.7e-4 and 2.5e-4).
    One fixed rate cannot serve both: 2e-3 is measured best at 256 wide and too high for GPT-2 124M."""
    if cfg.lr is not None:
        return cfg.lr
    config = getattr(model, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return AUTO_LR * min(1.0, AUTO_LR_WIDTH / width) if width else AUTO_LR


def planned_steps(cfg: TrainConfig, n_blocks: int, world: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.max_time is not None:
        return UNTIL_TIME_IS_UP
    per_epoch = math.ceil(math.ceil(n_blocks / (cfg.batch_size * world)) / cfg.grad_accum)
    return max(1, math.ceil(per_epoch * cfg.epochs))


def precision_flags(precision: str) -> dict[str, bool]:
    """bf16/fp16 flags for TrainingArguments of a resolved precision (llmforge.training.precision.choose),
    or a clear error where the hardware cannot."""
    if precision == "auto":
        raise ValueError("precision 'auto' is chosen by llmforge.training.precision.choose before the arguments")
    check_precision(precision)
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(
    cfg: TrainConfig, output_dir: Path, steps: int, precision: str | None = None
) -> TrainingArguments:
    """`precision`: the one chosen for `auto` (default: cfg.precision, which must then not be auto); cfg.lr
    must be set (llmforge.training.arguments.peak_lr fills it in from the model)."""
    if cfg.lr is None:
        raise ValueError("training_arguments needs a learning rate: pass dataclasses.replace(cfg, lr=peak_lr(...))")
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    evaluate = cfg.eval_every is not None
    best = keeps_best(cfg)
    save_every = cfg.save_every or (cfg.eval_every if best else None)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type={
            "cosine": "cosine",
            "linear": "linear",
            "wsd": "warmup_stable_decay",
            "constant": "constant_with_warmup",
        }[cfg.schedule],
        lr_scheduler_kwargs=(
            {"num_decay_steps": max(1, int(WSD_DECAY * (steps - warmup))), "decay_type": "linear"}
            if cfg.schedule == "wsd"
            else {}
        ),
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
        prediction_loss_only=True,  # only eval_loss is used: else every batch's logits are kept (GBs at 50k vocab)
        save_strategy="steps" if save_every else "no",
        save_steps=save_every,
        save_total_limit=None,  # LlmforgeCallback rotates, counting complete checkpoints only
        load_best_model_at_end=bool(cfg.early_stopping),  # EarlyStoppingCallback needs it; else the loop loads the best
        metric_for_best_model="eval_loss" if best else None,
        greater_is_better=False if best else None,
        seed=cfg.seed,
        torch_compile=cfg.torch_compile,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers' new name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        report_to=[r for r in cfg.report_to if r != "none"] or "none",
        dataloader_num_workers=cfg.dataloader_workers,
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        use_cache=False,
        logging_nan_inf_filter=False,  # a NaN must show, not be averaged away
        ddp_find_unused_parameters=False,  # every weight gets a gradient: no extra pass under DDP
        use_cpu=use_cpu(),
        **precision_flags(precision or cfg.precision),
    )
