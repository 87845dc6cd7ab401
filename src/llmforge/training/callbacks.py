"""Trainer callbacks: progress display, metrics.jsonl, complete-checkpoint markers and rotation."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llmforge import rundir
from llmforge.data.streaming import gather_states, save_states
from llmforge.errors import TrainingError
from llmforge.plugin.manager import Plugins
from llmforge.training.arguments import UNTIL_TIME_IS_UP
from llmforge.training.budget import Clock
from llmforge.training.checkpoints import complete_checkpoints
from llmforge.training.trainer import NAN_ADVICE


def truncate_metrics(path: Path, stage: str, after_step: int) -> None:
    """Drop `stage` lines logged after `after_step` (they are replayed exactly on resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if row.get("stage") == stage and row.get("step", 0) > after_step:
            continue
        kept.append(json.dumps(row))
    rundir.write_text(path, "".join(k + "\n" for k in kept))


class LlmforgeCallback(TrainerCallback):
    """Everything llmforge adds around a Trainer's loop, in one place."""

    def __init__(
        self,
        stage: str,
        run_dir: Path,
        plugins: Plugins,
        console: Console,
        tokens_per_step: int,
        compat: str,
        keep_last: int,
        divergence_factor: float | None = None,
        stream: Any = None,
        blocks_per_step: int = 0,
        checkpoint_info: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        save_at_evaluations: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.stage = stage
        self.metrics_path = run_dir / "metrics.jsonl"
        self.plugins = plugins
        self.console = console
        self.tokens_per_step = tokens_per_step
        self.compat = compat
        self.keep_last = keep_last
        self.progress: Progress | None = None
        self.task = None
        self.last: tuple[int, float] = (0, time.perf_counter())
        self.start: tuple[int, float] = (0, time.perf_counter())
        self.latest: dict[str, Any] = {}
        self.divergence_factor = divergence_factor
        self.best_loss = math.inf
        self.stream = stream  # a StreamingBlocks: its position goes into every checkpoint
        self.blocks_per_step = blocks_per_step
        self.checkpoint_info = checkpoint_info or {}  # settings a checkpoint was made with (reruns), time spent
        self.save_at_evaluations = save_at_evaluations  # the best evaluated checkpoint can become the final model
        self.clock = clock  # a wall-clock budget: progress is then time spent, not steps of a placeholder plan

    def steps_text(self, state: TrainerState) -> str:
        """`step 20/400`, or under a budget `step 20, 1:02 of 3:00` (and `/400` only when max_steps was set)."""
        text = f"step {state.global_step}"
        if state.max_steps < UNTIL_TIME_IS_UP:
            text += f"/{state.max_steps}"
        if self.clock is not None:
            text += f", {_clock(self.clock.spent())} of {_clock(self.clock.budget)}"
        return text

    def fraction_done(self, state: TrainerState) -> float:
        done = state.global_step / max(state.max_steps, 1)
        return min(1.0, max(done, self.clock.progress())) if self.clock is not None else done

    # progress ------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.last = self.start = (state.global_step, time.perf_counter())
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn(f"[bold]{self.stage}[/]"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task(
            self.stage,
            total=1.0,
            completed=self.fraction_done(state),
            steps=self.steps_text(state),
            loss="-",
            lr="-",
            tps="-",
        )
        self.progress.start()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.save_at_evaluations and control.should_evaluate:  # set by Trainer's flow callback, called first
            control.should_save = True
        if self.progress is not None:
            self.progress.update(self.task, completed=self.fraction_done(state), steps=self.steps_text(state))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.close()

    def close(self) -> None:
        """Stop the progress bar (also when training ends by an exception or Ctrl-C: the next line is
        then printed on a line of its own, not glued to the bar)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # metrics -------------------------------------------------------------------------------------
    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {
            "stage": self.stage,
            "step": state.global_step,
            "tokens": state.global_step * self.tokens_per_step,
        }
        for key, value in logs.items():
            row[key] = value
        if "loss" in logs:
            self.check_divergence(logs["loss"], state)
            steps, elapsed = state.global_step - self.last[0], now - self.last[1]
            if steps > 0 and elapsed > 0:
                row["tokens_per_second"] = round(steps * self.tokens_per_step / elapsed, 1)
            self.last = (state.global_step, now)
        if "eval_loss" in logs and math.isfinite(logs["eval_loss"]):
            row["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50))
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.latest.update(row)
        self.plugins.call("on_log", stage=self.stage, metrics=row)
        if self.progress is not None and "loss" in logs:
            self.progress.update(
                self.task,
                loss=f"{logs['loss']:.3f}",
                lr=f"{logs.get('learning_rate', 0):.2e}",
                tps=f"{row.get('tokens_per_second', 0):,.0f}",
            )
        if "eval_loss" in logs:
            self.console.print(
                f"  step {state.global_step}: validation loss {logs['eval_loss']:.4f}"
                + (f", perplexity {row['eval_perplexity']:.2f}" if "eval_perplexity" in row else " (not finite)")
            )
        elif not self.console.is_terminal and "loss" in logs:
            self.console.print(
                f"  {self.steps_text(state)}: loss {logs['loss']:.4f}, {row.get('tokens_per_second', 0):,.0f} tok/s"
            )

    def check_divergence(self, loss: float, state: TrainerState) -> None:
        if not math.isfinite(loss):
            raise TrainingError(f"The {self.stage} loss is {loss} at step {state.global_step}. {NAN_ADVICE}")
        if self.divergence_factor and math.isfinite(self.best_loss) and loss > self.divergence_factor * self.best_loss:
            raise TrainingError(
                f"The {self.stage} loss diverged: {loss:.4g} at step {state.global_step}, more than "
                f"{self.divergence_factor}x its lowest logged value {self.best_loss:.4g}. {NAN_ADVICE} The last "
                "complete checkpoint is kept."
            )
        if loss > 0:  # a skipped batch logs 0
            self.best_loss = min(self.best_loss, loss)

    # checkpoints ---------------------------------------------------------------------------------
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        """Trainer has written checkpoint-N: add the stream position, mark it complete, rotate old ones."""
        states = gather_states(self.stream) if self.stream is not None else None  # every rank takes part
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        path = out / f"checkpoint-{state.global_step}"
        if not path.is_dir():
            return
        if states is not None:  # written before the manifest: a checkpoint without it is never complete
            save_states(path, states, self.blocks_per_step, state.global_step)
        model = kw.get("model")
        if model is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            shutil.rmtree(path, ignore_errors=True)
            raise TrainingError(
                f"The {self.stage} weights hold NaN/inf at step {state.global_step}; that checkpoint was discarded "
                f"and the last complete one kept. {NAN_ADVICE}"
            )
        extra = self.checkpoint_info() if callable(self.checkpoint_info) else self.checkpoint_info
        info = {"step": state.global_step, "tokens_per_step": self.tokens_per_step, **extra}
        rundir.write_manifest(path, self.compat, info)
        keep = {path}
        if state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint))
        done = complete_checkpoints(out)
        for old in done[: max(0, len(done) - self.keep_last)]:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
        self.plugins.call("on_checkpoint", stage=self.stage, path=path)


def _clock(seconds: float) -> str:
    """1:02, 1:02:03: a budget's time as a person reads it."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
