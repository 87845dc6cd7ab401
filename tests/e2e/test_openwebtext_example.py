"""examples/openwebtext_deeplake: the seed's 124M recipe, checked as written and run with --smoke on a local
Deep Lake dataset the test builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from llmforge import Recipe

EXAMPLE = REPO / "examples" / "openwebtext_deeplake"


def test_recipe_is_the_seeds_run():
    recipe = Recipe.from_yaml(EXAMPLE / "recipe.yaml")
    assert recipe.data.source == "deeplake" and recipe.data.name == "hub://activeloop/openwebtext-train"
    assert recipe.data.streaming
    m, t = recipe.model, recipe.train
    assert (m.n_layer, m.n_embd, m.n_head, m.context_length) == (12, 768, 12, 512)
    assert (t.schedule, t.warmup, t.lr, t.weight_decay, t.precision) == ("cosine", 100, 5e-4, 0.1, "bf16")
    assert (t.eval_every, t.save_every, t.report_to) == (500, 500, ["wandb"])


def test_smoke_run_on_a_local_deeplake_dataset(tmp_path):
    pytest.importorskip("deeplake")
    data = tmp_path / "owt"
    built = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_smoke_data.py"), str(data)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    out = tmp_path / "run"
    done = subprocess.run(
        ["llmforge", "run", str(EXAMPLE / "recipe.yaml"), "--smoke", "--set", f"data.path={data}", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    final = json.loads((out / "train" / "final" / ".llmforge.json").read_text())
    assert final["info"]["steps"] == 4
    assert (out / "train" / "checkpoints" / "checkpoint-4" / "stream_state.json").is_file()
