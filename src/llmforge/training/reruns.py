"""Reruns of a training stage: what a changed setting means for the checkpoints already in the run dir.

A training stage runs again whenever its fingerprint changed. What it then does with the checkpoints
it finds is decided here and said in one line, so a rerun never returns the old model for a new recipe:

- the same settings: resume (a killed run goes on exactly where it stopped);
- an unfinished run with changed settings: resume with the new settings, printing what changed (the
  seed tutorials stop a run, change the batch size or the learning rate, and go on);
- a finished run whose only change is a later end (`max_steps` or `epochs` raised): train on to it;
- any other change to a finished run, or a different model, tokenizer, data or optimizer: train afresh, the old
  checkpoints and model moved to `RUN/previous/STAGE-N/` (deleted instead with `discard`).

`restart` always trains afresh; `resume` goes on from the last checkpoint whatever setting changed (not
with another model or data: those checkpoints cannot be loaded into it).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llmforge import rundir
from llmforge.errors import RunDirError
from llmforge.training.checkpoints import checkpoints, complete_checkpoints

Mode = Literal["auto", "restart", "resume"]

# Settings that change how a run is watched, never the weights it ends with: not part of a stage's
# fingerprint, so changing them leaves a finished stage up to date.
BOOKKEEPING = ("keep_last", "log_every", "report_to", "dataloader_workers", "keep_freed_memory")
LATER_END = {"max_steps", "epochs", "max_time"}  # a finished run with only these raised trains on
PREVIOUS = "previous"  # RUN/previous/STAGE-N: the artefacts of a run set aside by a retrain


def settings(config: Any) -> dict[str, Any]:
    """A training block's settings that shape the weights, as plain JSON values (nested blocks flattened
    to dotted keys), for fingerprints and for the diff printed on a rerun."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            flat[prefix[:-1]] = value

    walk("", json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    return {key: value for key, value in flat.items() if key not in BOOKKEEPING}


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Key -> (old, new) for every setting that differs."""
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def describe_changes(diff: dict[str, tuple[Any, Any]]) -> str:
    """`lr 0.002 -> 0.0001, grad_accum 32 -> 16`."""

    def show(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else json.dumps(value) if value is None else str(value)

    return ", ".join(f"{key} {show(old)} -> {show(new)}" for key, (old, new) in diff.items())


@dataclasses.dataclass
class Start:
    """Where a training stage starts: a checkpoint (and the settings that changed since it) or nothing."""

    checkpoint: Path | None = None
    step: int = 0
    changed: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    set_aside: Path | None = None  # where the earlier run went (None: nothing was set aside, or deleted)

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None


def start_point(
    stage: str,
    run_dir: Path,
    compat: str,
    current: dict[str, Any],
    steps: int,
    mode: Mode,
    console: Console,
    discard: bool = False,
) -> Start:
    """Decide where `stage` starts, move an outdated run aside, and say so in one line."""
    ckpt_dir = run_dir / stage / "checkpoints"
    for path in checkpoints(ckpt_dir):
        if rundir.read_manifest(path) is None:
            console.print(f"  removing incomplete {path.name} (interrupted while saving)")
            shutil.rmtree(path, ignore_errors=True)
    rundir.clean_stale(ckpt_dir)
    done = complete_checkpoints(ckpt_dir)
    final = run_dir / stage / "final"
    if mode == "restart":
        had = ckpt_dir.exists() or final.exists()
        where = set_aside(run_dir, stage, discard)
        if had:
            console.print(f"  --restart {stage}: training afresh; {_kept(run_dir, where, 'the earlier run')}")
        return Start(set_aside=where)
    if not done:
        if rundir.is_complete(final):  # a finished model of other settings whose checkpoints are gone
            if mode == "resume":
                raise RunDirError(f"--resume: {ckpt_dir} holds no complete checkpoint to resume {stage} from.")
            where = set_aside(run_dir, stage, discard)
            console.print(
                f"  {stage}'s settings changed and it has no checkpoint to go on from: training afresh; "
                f"{_kept(run_dir, where, 'the earlier model')}"
            )
            return Start(set_aside=where)
        return Start()
    last = done[-1]
    step = int(last.name.split("-")[1])
    if not rundir.is_complete(last, compat):
        if mode == "resume":
            raise RunDirError(
                f"--resume: {ckpt_dir} holds checkpoints of a different model, tokenizer, data or optimizer than this "
                f"recipe, so {stage} cannot go on from them. Rerun without --resume to train afresh (the old run is "
                "kept)."
            )
        where = set_aside(run_dir, stage, discard)
        console.print(
            f"  the model, tokenizer, data or optimizer changed since {stage}'s {last.name}: training afresh; "
            f"{_kept(run_dir, where, 'the earlier run')}"
        )
        return Start(set_aside=where)
    info = (rundir.read_manifest(last) or {}).get("info", {})
    before = info.get("settings")
    diff = changes(before, current) if before is not None else {}  # older checkpoints recorded none
    if not diff:
        return Start(last, step)
    finished = step >= info.get("planned_steps", step + 1) or (
        rundir.is_complete(final) and (rundir.read_manifest(final) or {}).get("info", {}).get("steps") == step
    )
    said = describe_changes(diff)
    if not finished or mode == "resume":
        why = "(--resume)" if finished else f"(step {step} of {info.get('planned_steps', '?')})"
        console.print(
            f"  resuming {stage} from {last.name} {why} with changed settings: {said}; "
            f"`--restart {stage}` trains afresh instead"
        )
        return Start(last, step, diff)
    if set(diff) <= LATER_END and steps > step:
        console.print(f"  training {stage} on from {last.name} (step {step}) to step {steps}: {said}")
        return Start(last, step, diff)
    where = set_aside(run_dir, stage, discard)
    console.print(
        f"  {stage}'s settings changed since the finished run ({said}): training afresh; "
        f"{_kept(run_dir, where, 'the finished run')} (`--resume` continues it instead)"
    )
    return Start(set_aside=where)


def _kept(run_dir: Path, where: Path | None, what: str) -> str:
    if where is None:
        return f"{what} was deleted (--discard)"
    return f"{what} is kept in {where}"


def set_aside(run_dir: Path, stage: str, discard: bool = False) -> Path | None:
    """Move `stage`'s checkpoints, final model and metrics rows to RUN/previous/STAGE-N (or delete them)."""
    present = [p for p in (run_dir / stage / "checkpoints", run_dir / stage / "final") if p.exists()]
    metrics = run_dir / "metrics.jsonl"
    rows = _rows(metrics)
    moved = [r for r in rows if r.get("stage") == stage]
    if not present and not moved:
        return None
    target = None
    if not discard:
        n = 1
        while (run_dir / PREVIOUS / f"{stage}-{n}").exists():
            n += 1
        target = run_dir / PREVIOUS / f"{stage}-{n}"
        target.mkdir(parents=True)
        if moved:
            rundir.write_text(target / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in moved))
    for path in present:
        if target is None:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.rename(target / path.name)
    if moved:
        rundir.write_text(metrics, "".join(json.dumps(r) + "\n" for r in rows if r.get("stage") != stage))
    return target


def _rows(metrics: Path) -> list[dict[str, Any]]:
    out = []
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return out


class ApplySettings(TrainerCallback):
    """On a resume with changed settings, the new learning rate, betas and weight decay take effect.

    Trainer restores the optimizer's param groups and the scheduler's base rates from the checkpoint,
    so without this a resumed run would silently keep the old ones. The schedule's shape, warmup,
    batch and clipping come from the new TrainingArguments already."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        optimizer, scheduler = kw.get("optimizer"), kw.get("lr_scheduler")
        if optimizer is None or scheduler is None:
            return
        scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper
        groups = optimizer.param_groups
        for index, group in enumerate(groups):
            group["initial_lr"] = args.learning_rate
            group["betas"] = (args.adam_beta1, args.adam_beta2)
            decayed = group.get("decay", index == 0)  # Trainer's AdamW: the decayed group first; Muon's mark theirs
            group["weight_decay"] = args.weight_decay if decayed else 0.0
        scheduler.base_lrs = [args.learning_rate] * len(groups)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:
            for group, base, factor in zip(groups, scheduler.base_lrs, lambdas, strict=True):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in groups]
