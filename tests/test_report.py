"""`llmforge data-report`: the numbers equal what training then sees, and the budget arithmetic."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.cli import main
from llmforge.tools.report import data_report
from llmforge.training import sizing


def test_report_counts_what_training_uses(tmp_path, corpus_file):
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus_file))
    out = tmp_path / "run"
    console = Console(record=True, width=200)
    r = data_report(recipe, out=out, console=console, budget_flops=1e12)
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert r["train_tokens"] == stats["blocks"]["train"]["tokens"]
    assert r["tokens"] == stats["blocks"]["train"]["tokens"] + stats["blocks"]["validation"]["tokens"]
    assert r["words"] == stats["documents"]["train"]["words"] + stats["documents"]["validation"]["words"]
    assert r["train_blocks"] == stats["blocks"]["train"]["blocks"]
    assert r["steps_per_epoch"] == math.ceil(r["train_blocks"] / 4)  # batch_size 4, grad_accum 1
    assert r["planned_steps"] == 6 and r["tokens_per_step"] == 4 * 32
    assert (out / "data" / "lengths.png").exists()

    # the training run reuses the prepared stages and builds a model of exactly the counted size
    run = recipe.run(out)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run.path / "model"))
    assert r["parameters"] == sum(p.numel() for p in model.parameters())
    assert r["tokens_per_parameter"] == pytest.approx(r["train_tokens"] / r["parameters"])
    manifest = json.loads((out / "model" / ".llmforge.json").read_text())
    assert manifest["info"]["train_tokens"] == r["train_tokens"]

    b = r["budget"]
    assert b["parameters"] == pytest.approx(math.sqrt(1e12 / (6 * sizing.TOKENS_PER_PARAMETER)))  # a small budget
    assert b["tokens"] == pytest.approx(sizing.TOKENS_PER_PARAMETER * b["parameters"])
    text = console.export_text()
    for word in (
        "documents",
        "tokens per word",
        "steps per epoch",
        "tokens per parameter",
        "Chinchilla",
        "compute-optimal",
    ):
        assert word in text


def test_budget_hours_says_where_the_throughput_came_from(tmp_path, corpus_file, capsys):
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(corpus_file)))
    argv = ["data-report", str(recipe), "--budget-hours", "2", "--flops-per-second", "1e12"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "assumed (--flops-per-second)" in out and "7.2e+15 FLOPs" in out
    assert main(["data-report", str(recipe), "--budget-hours", "0.01"]) == 0  # measured on this machine
    assert "measured now" in capsys.readouterr().out


def test_a_recipe_with_max_time_is_planned_for_its_budget(tmp_path, corpus_file):
    spec = tiny_recipe_dict(corpus_file)
    spec["train"] = {**spec["train"], "max_steps": None, "max_time": "2m"}
    r = data_report(Recipe.from_dict(spec), out=tmp_path / "run", console=Console(quiet=True), flops_per_second=1e9)
    assert r["budget"]["hours"] == pytest.approx(2 / 60) and r["budget"]["flops"] == pytest.approx(120 * 1e9)
    assert r["planned_steps"] == int(120 * 1e9 / (6 * r["parameters"] * r["tokens_per_step"]))
    assert r["planned_tokens"] == r["planned_steps"] * r["tokens_per_step"]
