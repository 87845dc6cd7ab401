"""Checkpoints and the final model: the checkpoints in a run dir, what they logged, the atomic final save."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Trainer

from llmforge import rundir


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint dirs in step order (complete or not)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1)


def complete_checkpoints(directory: Path, compat: str | None = None) -> list[Path]:
    return [p for p in checkpoints(directory) if rundir.is_complete(p, compat)]


def logged(metrics: Path, stage: str, key: str, step: int, whole_row: bool = False) -> Any:
    """The last value of `key` that `stage` logged at `step` in metrics.jsonl (None if there is none)."""
    path = metrics
    found = None
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("stage") == stage and row.get("step") == step and key in row:
            found = row if whole_row else row[key]
    return found


def best_step(outputs: dict[str, Any]) -> str:
    """` (best of 500 steps: step 100)` for a summary line, when the final model is not the last step's."""
    best, steps = outputs.get("best_step"), outputs.get("steps")
    return f" (best of {steps} steps: step {best})" if best is not None and best != steps else ""


def last_evaluation(trainer: Trainer, best_kept: bool = False) -> dict[str, float] | None:
    """The evaluation of the model training ended with, if one was logged (no need to evaluate twice).

    When the best evaluated checkpoint is kept (`best_kept`) that is its evaluation, else the final step's."""
    best = trainer.state.best_model_checkpoint if best_kept else None
    if best is not None:
        step = int(Path(best).name.split("-")[-1])
        for entry in trainer.state.log_history:
            if "eval_loss" in entry and entry.get("step") == step:
                return entry
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == trainer.state.global_step else None
    return None


def stop_ids(asked: int | list[int] | None, own: int | list[int] | None) -> int | list[int] | None:
    """`asked` first, then the model's `own` stop ids it lacks, without repeats; a single id stays an int."""
    ids: list[int] = []
    for group in (asked, own):
        for i in [group] if isinstance(group, int) else group or []:
            if i not in ids:
                ids.append(i)
    return ids[0] if len(ids) == 1 and isinstance(asked, int) else ids or None


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
    stops at (e.g. a chat template's end-of-turn token and EOS), ahead of the ones the model already
    stopped at (a base's own list, such as Llama 3's three ids, is kept, not replaced)."""
    model = trainer.model if model is None else model
    model.config.use_cache = True
    if model.generation_config is not None:
        model.generation_config.eos_token_id = stop_ids(
            tok.eos_token_id if eos_token_id is None else eos_token_id, model.generation_config.eos_token_id
        )
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
