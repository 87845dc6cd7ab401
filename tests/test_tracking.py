"""Tracking: report_to goes to the Trainer's own integrations; TensorBoard works offline; a missing or
misspelt back-end fails before any stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_recipe_dict
from llmforge import FinetuneConfig, Recipe, TrainConfig
from llmforge.config.tracking import check_report_to
from llmforge.errors import ConfigError
from llmforge.training.arguments import training_arguments


def test_tensorboard_events_hold_every_logged_loss(tmp_path, corpus_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    Recipe.from_dict(tiny_recipe_dict(corpus_file, report_to=["tensorboard"])).run(out)
    event_dirs = {p.parent for p in (out / "train").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1, event_dirs
    events = EventAccumulator(str(event_dirs.pop())).Reload()
    scalars = events.Scalars("train/loss")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert [s.step for s in scalars] == sorted(losses) == [1, 2, 3, 4, 5, 6]
    for s in scalars:
        assert s.value == pytest.approx(losses[s.step], rel=1e-5)
    assert [s.step for s in events.Scalars("eval/loss")] == [3, 6]
    assert "train/learning_rate" in events.Tags()["scalars"]


def test_report_to_reaches_the_trainer_in_both_training_stages(tmp_path):
    for cfg in (TrainConfig(report_to=["tensorboard"], lr=1e-3), FinetuneConfig(report_to=["tensorboard"])):
        assert training_arguments(cfg, tmp_path, 10, "fp32").report_to == ["tensorboard"]
    for cfg in (TrainConfig(lr=1e-3), FinetuneConfig(report_to=["none"])):
        assert training_arguments(cfg, tmp_path, 10, "fp32").report_to in ([], "none", ["none"])


def test_uninstalled_backend_fails_before_any_stage(tmp_path, corpus_file, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus_file, report_to=["tensorboard", "wandb"]))
    with pytest.raises(ConfigError, match=r"train.report_to names 'wandb'.*llmforge\[wandb\]"):
        recipe.run(tmp_path / "run")
    assert not (tmp_path / "run" / "data").exists()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["tensorbord"], r"'tensorbord'.*did you mean 'tensorboard'"),
        (["mlfow"], r"'mlfow'.*did you mean 'mlflow'"),
    ],
)
def test_misspelt_backend(names, message):
    with pytest.raises(ConfigError, match=message):
        check_report_to(names, "finetune")


def test_mlflow_extra_points_at_skinny(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"llmforge\[mlflow\].*mlflow-skinny"):
        check_report_to(["mlflow"], "train")


def test_pyproject_declares_the_extras():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("wandb") for d in extras["wandb"])
    assert any(d.startswith("mlflow-skinny") for d in extras["mlflow"])
    assert any(d.startswith("tensorboard") for d in extras["dev"])
    assert any(d.startswith("matplotlib") for d in project["dependencies"])
