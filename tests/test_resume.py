"""Kill a real training process with SIGKILL, rerun the same command: same weights, same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from kill_helpers import finish, reference_and_killed_at_checkpoint, start_run
from safetensors.torch import load_file

from conftest import tiny_recipe_dict


def _train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_sigkill_mid_training_then_rerun_is_exact(tmp_path, corpus_file):
    recipe = tiny_recipe_dict(corpus_file, max_steps=12, save_every=3, eval_every=6, keep_last=2)
    path, reference, out = reference_and_killed_at_checkpoint(recipe, tmp_path)

    stdout = finish(start_run(path, out, tmp_path))
    assert "resuming from checkpoint-" in stdout

    a = load_file(reference / "train" / "final" / "model.safetensors")
    b = load_file(out / "train" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"

    ref_rows, rows = _train_rows(reference), _train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 13))  # no repeated or skipped step
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert [r["grad_norm"] for r in rows] == [r["grad_norm"] for r in ref_rows]


def test_incomplete_checkpoint_is_never_trusted(tiny_recipe, tmp_path):
    """A checkpoint cut short by a kill (no manifest) is removed and training resumes from the one before."""
    out = tmp_path / "run"
    tiny_recipe.run(out)
    ckpts = out / "train" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    # simulate a kill during the save of checkpoint-9: files written, manifest never
    (ckpts / "checkpoint-9").mkdir()
    (ckpts / "checkpoint-9" / "model.safetensors").write_bytes(b"truncated")
    tiny_recipe.train.max_steps = 9
    tiny_recipe.run(out)
    final = json.loads((out / "train" / "final" / ".llmforge.json").read_text())
    assert final["info"]["steps"] == 9
    assert (ckpts / "checkpoint-9" / ".llmforge.json").is_file()  # rewritten, complete this time
    assert load_file(ckpts / "checkpoint-9" / "model.safetensors")  # a real file, not the truncated one
