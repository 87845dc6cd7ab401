"""A wall-clock budget (`max_time`): the schedule runs on its clock, training stops within a step of it,
and a resumed run gets only the time left (llmforge.training.budget)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import transformers
from rich.console import Console

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.errors import ConfigError
from llmforge.training.budget import Clock, budget_schedule, parse_duration


def test_durations_read_like_people_write_them():
    assert [parse_duration(v, "k") for v in ("90", "90s", "3m", "1.5h", "2d", 45, None)] == [
        90, 90, 180, 5400, 172800, 45, None,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="train.max_time '3 minutes' is not a duration"):
        parse_duration("3 minutes", "train.max_time")
    with pytest.raises(ConfigError, match="must be positive"):
        parse_duration(0, "train.max_time")


def test_the_schedule_follows_the_clock():
    clock = Clock(budget=100.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = budget_schedule(opt, clock, "cosine", warmup=0.1, steps=10**9)
    factor = sched.lr_lambdas[0]
    for spent, expected in [(5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0)]:
        clock.spent_before = spent
        assert factor(1) == pytest.approx(expected, abs=1e-6), spent
    clock.spent_before = 0.0
    assert factor(10**9 // 2) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.4 / 0.9)).item()))


def test_warmup_stable_decay_holds_the_peak_then_falls_linearly_to_zero_over_the_last_fifth():
    clock = Clock(budget=100.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = budget_schedule(opt, clock, "wsd", warmup=0.1, steps=10**9).lr_lambdas[0]
    # after warmup (10 s) the rest is 90 s; decay starts 80% through it (82 s) and ends at the budget
    for spent, expected in [(5, 0.5), (10, 1.0), (50, 1.0), (82, 1.0), (91, 0.5), (100, 0.0)]:
        clock.spent_before = spent
        assert factor(1) == pytest.approx(expected, abs=1e-6), spent


def test_warmup_stable_decay_by_steps_is_transformers_schedule_with_the_same_shape(tmp_path):
    from llmforge.config.schema import TrainConfig
    from llmforge.training.arguments import training_arguments

    args = training_arguments(TrainConfig(lr=1e-3, schedule="wsd", warmup=10), tmp_path, steps=110, precision="fp32")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    kwargs = args.lr_scheduler_kwargs
    sched = transformers.get_scheduler(
        args.lr_scheduler_type, opt, args.warmup_steps, args.max_steps, scheduler_specific_kwargs=kwargs
    )
    rates = []
    for _ in range(110):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[10] == rates[89] == pytest.approx(1e-3)  # stable from warmup's end to the decay's start
    assert rates[100] == pytest.approx(0.5e-3, rel=0.06) and rates[109] < 0.06e-3  # linear over the last 20 steps


def _recipe(corpus_file, **train) -> Recipe:
    return Recipe.from_dict(tiny_recipe_dict(corpus_file, max_steps=None, eval_every=None, **train))


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_stops_within_a_step_of_its_budget_and_saves_there(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file, max_time="4s", save_every=5, log_every=1)
    console = Console(record=True, width=200)
    recipe.run(run, console=console)
    info = json.loads((run / "train" / "final" / ".llmforge.json").read_text())["info"]
    steps = [r for r in _rows(run) if "loss" in r]
    step_seconds = info["train_seconds"] / max(info["steps"], 1)
    assert info["steps"] == steps[-1]["step"] > 5
    assert 4.0 <= info["seconds_spent"] <= 4.0 + 3 * step_seconds + 0.5  # stopped at the first step past 4 s
    assert steps[-1]["learning_rate"] < 0.05 * 3e-3  # the schedule reached its end with the budget
    text = console.export_text()
    assert "4s of training of 128 tokens" in text
    assert re.search(r"step 3, 0:0\d of 0:04: loss", text)  # the budget's clock, not a placeholder step count
    assert "/1000000000" not in text


def test_a_resumed_run_gets_only_the_time_left(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file, max_time="4s", save_every=2, log_every=1, keep_last=1000)
    recipe.run(run, console=Console(quiet=True))
    ckpts = sorted((run / "train" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    keep = ckpts[0]
    spent = json.loads((keep / ".llmforge.json").read_text())["info"]["seconds_spent"]
    assert 0 < spent < 4
    for path in ckpts[1:]:
        shutil.rmtree(path)  # as if killed after the first checkpoint
    shutil.rmtree(run / "train" / "final")
    recipe.run(run, console=Console(quiet=True))
    info = json.loads((run / "train" / "final" / ".llmforge.json").read_text())["info"]
    assert 4.0 <= info["seconds_spent"] < 6.0  # the total, across both processes
    assert info["train_seconds"] < 4.0 - spent + 2.0  # this process had only what was left


def test_fine_tuning_takes_a_budget_too(tmp_path, corpus_file):
    from chat_helpers import INSTRUCT

    mapping = tiny_recipe_dict(corpus_file, max_steps=2, eval_every=None, save_every=None)
    mapping["model"]["context_length"] = 128
    mapping["finetune"] = {"path": str(INSTRUCT / "alpaca.jsonl"), "max_examples": 40, "batch_size": 8,
                           "max_time": "3s", "eval_every": None}  # fmt: skip
    Recipe.from_dict(mapping).run(tmp_path / "run", console=Console(quiet=True))
    info = json.loads((tmp_path / "run" / "finetune" / "final" / ".llmforge.json").read_text())["info"]
    assert 3.0 <= info["seconds_spent"] < 6.0 and info["steps"] > 5  # epochs repeated until the time was up
