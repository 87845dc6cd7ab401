"""Compare a run's saved checkpoints: a sample for each prompt and the validation loss, side by side.

The seed tutorials pick the best checkpoint by reading samples from each one next to its validation
loss; `llmforge compare RUN --prompt ...` does that for every complete checkpoint of the train and
finetune stages and their final models. The validation loss is the one the Trainer logged at that
step (metrics.jsonl); a pretraining checkpoint saved without an evaluation is scored on the run's
validation blocks, exactly as training scores them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmforge import rundir
from llmforge.data.blocks import open_blocks
from llmforge.errors import RunDirError
from llmforge.eval.perplexity import perplexity
from llmforge.models.loading import load_model_dir
from llmforge.tools.generate import chat as chat_reply
from llmforge.tools.generate import generate
from llmforge.tools.plots import read_metrics
from llmforge.training.checkpoints import complete_checkpoints


@dataclass
class Snapshot:
    """One saved model of a run: where it is, its step, its validation loss and its samples."""

    stage: str
    name: str
    path: Path
    step: int | None
    val_loss: float | None = None
    val_source: str = ""  # "logged" (metrics.jsonl), "computed" (validation blocks now) or "" (none)
    samples: list[str] = field(default_factory=list)


def snapshots(run_dir: str | Path, stages: tuple[str, ...] = ("train", "finetune")) -> list[Snapshot]:
    """Every complete checkpoint and final model of the run's training stages, in training order."""
    run_dir = Path(run_dir)
    found = []
    for stage in stages:
        for ckpt in complete_checkpoints(run_dir / stage / "checkpoints"):
            found.append(Snapshot(stage, f"{stage}/{ckpt.name}", ckpt, int(ckpt.name.split("-")[1])))
        final = run_dir / stage / "final"
        if rundir.is_complete(final):
            info = rundir.read_manifest(final)["info"]
            found.append(Snapshot(stage, f"{stage}/final", final, info.get("steps"), info.get("val_loss"), "logged"))
    if not found:
        raise RunDirError(f"{run_dir} has no complete checkpoint or final model under train/ or finetune/.")
    return found


def compare(
    run_dir: str | Path,
    prompts: list[str],
    chat: bool = False,
    max_new_tokens: int = 40,
    seed: int = 0,
    greedy: bool = False,
    score_missing: bool = True,
) -> list[Snapshot]:
    """Fill each snapshot's validation loss and one sample per prompt (the same seed for every model, so
    the differences come from the weights). With `chat`, models with a chat template answer the prompt
    as a user turn; the others (pretraining checkpoints) continue it."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    result = snapshots(run_dir)
    for snap in result:
        if snap.val_loss is None:
            logged = [
                r["eval_loss"]
                for r in rows
                if r.get("stage") == snap.stage and r.get("step") == snap.step and isinstance(r.get("eval_loss"), float)
            ]
            if logged:
                snap.val_loss, snap.val_source = logged[-1], "logged"
        model, tok = load_model_dir(snap.path)
        _stop_like_final(model, run_dir / snap.stage / "final")
        if snap.val_loss is None and score_missing and snap.stage == "train":
            snap.val_loss, snap.val_source = _score(run_dir, model), "computed"
        for prompt in prompts:
            sampling: dict[str, Any] = dict(max_new_tokens=max_new_tokens, seed=seed, greedy=greedy)
            if chat and getattr(tok, "chat_template", None):  # a pretraining checkpoint has none: it continues
                snap.samples.append(chat_reply(model, tok, prompt, **sampling).text)
            else:
                snap.samples.append(prompt + generate(model, tok, prompt, **sampling))
        del model
    return result


def _stop_like_final(model: Any, final: Path) -> None:
    """A Trainer checkpoint's generation config stops at EOS only; the stage's final model also stops at
    the chat template's end-of-turn token. Use the final's stop ids so checkpoints answer alike."""
    import json

    path = final / "generation_config.json"
    if model.generation_config is None or not path.is_file():
        return
    stop = json.loads(path.read_text()).get("eos_token_id")
    if stop is not None:
        model.generation_config.eos_token_id = stop


def _score(run_dir: Path, model: Any) -> float | None:
    blocks = run_dir / "data" / "blocks"
    if not rundir.is_complete(blocks):
        return None
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    aware = (recipe.get("train") or {}).get("document_aware", True)
    validation = open_blocks(blocks)["validation"].with_format("torch")
    return perplexity(model, validation, eos_id=model.config.eos_token_id, document_aware=aware)["loss"]
