"""SIGKILL at chosen points (inside an artefact's write, a checkpoint save, an evaluation), rerun the
same command: the run finishes with the same weights and metrics as one that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from kill_helpers import finish, kill_when, start_run
from safetensors.torch import load_file

from conftest import REPO, tiny_recipe_dict

# Imported by the run through the recipe's `plugins:` list. With LLMFORGE_KILL_AT set, it pauses at
# that point (writing a marker first) so the test can kill the process exactly there.
KILL_PLUGIN = """
import os, time
from pathlib import Path

import transformers
from llmforge import rundir

AT = os.environ.get("LLMFORGE_KILL_AT", "")
MARKER = Path(os.environ.get("LLMFORGE_KILL_MARKER", "/nonexistent"))


def pause():
    MARKER.write_text("here")
    time.sleep(120)


_write_manifest = rundir.write_manifest


def write_manifest(directory, fp, info=None):
    # every artefact is complete on disk but not yet trusted (no manifest) at this point
    if AT and AT in str(directory) and not MARKER.exists():
        pause()
    return _write_manifest(directory, fp, info)


rundir.write_manifest = write_manifest

_evaluate = transformers.Trainer.evaluation_loop


def evaluation_loop(self, *args, **kwargs):
    if AT == "evaluation" and self.state.global_step >= 4 and not MARKER.exists():
        pause()
    return _evaluate(self, *args, **kwargs)


transformers.Trainer.evaluation_loop = evaluation_loop
"""

POINTS = {
    "documents-write": ".documents.tmp-",
    "tokenizer-write": ".tokenizer.tmp-",
    "blocks-write": ".blocks.tmp-",
    "model-write": ".model.tmp-",
    "checkpoint-save": "checkpoint-4",
    "evaluation": "evaluation",
    "final-model-write": ".final.tmp-",
}
FAST = {"checkpoint-save", "blocks-write"}  # the rest run with -m slow


def _recipe(tmp_path: Path, corpus: Path) -> Path:
    (tmp_path / "kill_points.py").write_text(KILL_PLUGIN)
    mapping = tiny_recipe_dict(corpus, max_steps=8, save_every=2, eval_every=4)
    mapping["plugins"] = ["kill_points"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_text):
    tmp = tmp_path_factory.mktemp("reference")
    corpus = tmp / "corpus.txt"
    corpus.write_text(corpus_text)
    recipe = _recipe(tmp, corpus)
    finish(start_run(recipe, tmp / "run", tmp))
    return tmp, corpus


def _train_rows(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("point", [pytest.param(p, marks=() if p in FAST else pytest.mark.slow) for p in POINTS])
def test_kill_then_rerun_matches_an_uninterrupted_run(point, reference, tmp_path):
    ref_dir, corpus = reference
    recipe = _recipe(tmp_path, corpus)
    out, marker = tmp_path / "run", tmp_path / "marker"
    proc = start_run(recipe, out, tmp_path, LLMFORGE_KILL_AT=POINTS[point], LLMFORGE_KILL_MARKER=str(marker))
    kill_when(proc, marker, point)

    finish(start_run(recipe, out, tmp_path))  # the same command, no kill point
    a = load_file(ref_dir / "run" / "train" / "final" / "model.safetensors")
    b = load_file(out / "train" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after a kill at {point}"
    assert _train_rows(out) == _train_rows(ref_dir / "run")
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def _finetune_recipe(tmp_path: Path, corpus: Path) -> Path:
    (tmp_path / "kill_points.py").write_text(KILL_PLUGIN)
    mapping = tiny_recipe_dict(corpus, max_steps=4, save_every=2, eval_every=None)
    mapping["finetune"] = {
        "source": "jsonl",
        "path": str(REPO / "examples" / "data" / "instruct" / "alpaca.jsonl"),
        "format": "alpaca",
        "chat_template": "chatml",
        "loss_mask": "assistant_only",
        "max_length": 32,
        "length_policy": "truncate",
        "max_steps": 8,
        "batch_size": 4,
        "lr": 1e-3,
        "save_every": 2,
        "eval_every": 4,
        "log_every": 1,
        "seed": 5,
    }
    mapping["plugins"] = ["kill_points"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "point", ["finetune/checkpoints/checkpoint-4", "/finetune/"], ids=["checkpoint-4-save", "first-write"]
)
def test_kill_inside_the_finetune_stage_then_rerun_is_exact(point, tmp_path, corpus_text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text)
    ref = tmp_path / "ref"
    ref.mkdir()
    finish(start_run(_finetune_recipe(ref, corpus), ref / "run", ref))

    recipe = _finetune_recipe(tmp_path, corpus)
    out, marker = tmp_path / "run", tmp_path / "marker"
    # pretraining runs uninterrupted; the kill lands in the fine-tune stage's first (or a chosen) write
    proc = start_run(recipe, out, tmp_path, LLMFORGE_KILL_AT=point, LLMFORGE_KILL_MARKER=str(marker))
    kill_when(proc, marker, point)
    finish(start_run(recipe, out, tmp_path))
    a = load_file(ref / "run" / "finetune" / "final" / "model.safetensors")
    b = load_file(out / "finetune" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r.get("stage") == "finetune" and "loss" in r]
    assert steps == list(range(1, 9))
