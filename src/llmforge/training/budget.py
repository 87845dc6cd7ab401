"""A wall-clock budget for a training stage (`max_time: 3m`, `2h`): what a user has is hours, not steps.

The learning-rate schedule runs on the budget's clock: its progress is the larger of the steps done
over the planned steps and the training seconds spent over the budget, so warmup and decay end when
the time does, whatever the machine's speed. Training stops at the first optimizer step that ends
past the budget and saves its final model there. The seconds spent are stored in every checkpoint,
so a resumed run gets only the time that is left.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llmforge import rundir
from llmforge.errors import ConfigError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int | None, key: str) -> float | None:
    """Seconds of `90`, `90s`, `3m`, `1.5h`, `2d` (a bare number is seconds); None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", str(value))
        if not match:
            raise ConfigError(
                f"{key} '{value}' is not a duration: write seconds, or a number with s, m, h or d (3m, 2h)."
            )
        seconds = float(match[1]) * UNITS[match[2] or "s"]
    if not seconds > 0:
        raise ConfigError(f"{key} must be positive, got {value!r}.")
    return seconds


class Clock:
    """Training seconds spent in this stage, across resumes: those saved in the checkpoint resumed from,
    plus this process's since training began."""

    def __init__(self, budget: float, spent_before: float = 0.0) -> None:
        self.budget = budget
        self.spent_before = spent_before
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def spent(self) -> float:
        return self.spent_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def progress(self) -> float:
        return min(1.0, self.spent() / self.budget)

    def left(self) -> float:
        return max(0.0, self.budget - self.spent())


def spent_in(checkpoint: Path | None) -> float:
    """The training seconds a checkpoint recorded (0 for none, or for one written without a budget)."""
    if checkpoint is None:
        return 0.0
    info = (rundir.read_manifest(checkpoint) or {}).get("info", {})
    return float(info.get("seconds_spent", 0.0))


WSD_DECAY = 0.2  # warmup-stable-decay: the share of the run (after warmup) spent decaying to zero


def budget_schedule(optimizer: Any, clock: Clock, schedule: str, warmup: float, steps: int) -> Any:
    """A LambdaLR whose progress is max(step / steps, seconds spent / budget): warmup (a fraction of the
    budget below 1, else a number of steps), then cosine or linear decay to zero, warmup-stable-decay
    (constant, then linear to zero over the last WSD_DECAY of it), or constant."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        progress = max(step / max(steps, 1), clock.progress())
        if warmup >= 1:
            if step < warmup:
                return (step + 1) / warmup
            start = warmup / max(steps, 1)
        else:
            if progress < warmup:
                return max(progress / warmup, 1.0 / max(steps, 1))
            start = warmup
        rest = min(1.0, (progress - start) / max(1e-9, 1.0 - start))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * rest))
        if schedule == "linear":
            return 1.0 - rest
        if schedule == "wsd":
            return min(1.0, (1.0 - rest) / WSD_DECAY)
        return 1.0

    return LambdaLR(optimizer, factor)


class StopAtBudget(TrainerCallback):
    """Starts the clock when training begins; ends training (evaluating and saving) at the first step past it."""

    def __init__(self, clock: Clock, evaluate: bool) -> None:
        self.clock = clock
        self.evaluate = evaluate
        self.stopped_at: int | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.clock.start()
        if self.clock.left() <= 0:  # a resumed run whose budget was already spent
            control.should_training_stop = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.clock.left() <= 0 and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = control.should_evaluate or self.evaluate
            self.stopped_at = state.global_step
