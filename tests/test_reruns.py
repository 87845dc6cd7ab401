"""A rerun with changed settings never returns the old model: it trains afresh, resumes or trains on,
and says which (llmforge.training.reruns)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from chat_helpers import INSTRUCT
from conftest import stream_recipe_dict, tiny_recipe_dict
from llmforge import Recipe
from llmforge.errors import ConfigError, RunDirError
from llmforge.training.reruns import changes, describe_changes, settings


def _recipe(corpus_file, **train) -> Recipe:
    return Recipe.from_dict(tiny_recipe_dict(corpus_file, **train))


def _run(recipe: Recipe, out, **kwargs) -> str:
    console = Console(record=True, width=200)
    recipe.run(out, console=console, **kwargs)
    return console.export_text()


def _weights(path):
    return load_file(path / "model.safetensors")


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _rows(run, stage="train"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["stage"] == stage]


def _status(text: str, stage: str) -> str:
    line = next(line for line in text.splitlines() if line.startswith(f"│ {stage} "))
    return line.split("│")[2].strip()


def test_settings_diff_reads_like_the_recipe():
    from llmforge.config.schema import FinetuneConfig, LoraConfig

    before = settings(FinetuneConfig(lr=2e-3, grad_accum=32, lora=LoraConfig(r=8)))
    after = settings(FinetuneConfig(lr=1e-4, grad_accum=16, lora=LoraConfig(r=8), keep_last=5, log_every=1))
    assert describe_changes(changes(before, after)) == "grad_accum 32 -> 16, lr 0.002 -> 0.0001"
    assert "keep_last" not in before and "lora.r" in before


def test_changed_lr_on_a_finished_run_trains_afresh_and_keeps_the_old_run(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file)
    _run(recipe, run)
    first = _weights(run / "train" / "final")
    recipe.train.lr = 1e-3
    text = _run(recipe, run)
    assert "train's settings changed since the finished run (lr 0.003 -> 0.001): training afresh" in text
    assert "the finished run is kept in" in text and "previous/train-1" in text
    assert _status(text, "train") == "trained afresh, 6 steps"
    assert not _same(first, _weights(run / "train" / "final"))
    assert _same(first, _weights(run / "previous" / "train-1" / "final"))  # nothing lost
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]  # the new run's rows only
    assert _rows(run / "previous" / "train-1")  # the old rows went with the old run
    # the same recipe again: up to date
    assert _status(_run(recipe, run), "train") == "up to date"


def test_changed_lr_on_an_unfinished_run_resumes_with_the_new_rate(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file, schedule="constant")
    _run(recipe, run)
    shutil.rmtree(run / "train" / "final")  # as if killed after step 3's checkpoint
    shutil.rmtree(run / "train" / "checkpoints" / "checkpoint-6")
    recipe.train.lr = 1e-3
    text = _run(recipe, run)
    assert (
        "resuming train from checkpoint-3 (step 3 of 6) with changed settings: lr 0.003 -> 0.001; "
        "`--restart train` trains afresh instead" in text
    )
    assert _status(text, "train") == "resumed at 3, +3 steps"
    rates = {r["step"]: r["learning_rate"] for r in _rows(run) if "learning_rate" in r}
    assert rates[3] == pytest.approx(3e-3) and rates[4] == pytest.approx(1e-3)  # the new rate took effect


def test_changed_optimizer_settings_on_resume_take_effect(tmp_path, corpus_file):
    run = tmp_path / "run"
    for optimizer in ("adamw", "muon"):
        run = tmp_path / optimizer
        train = {"max_steps": 3, "save_every": 3, "eval_every": None, "weight_decay": 0.0, "adam_beta2": 0.95}
        recipe = _recipe(corpus_file, optimizer=optimizer, **train)
        _run(recipe, run)
        recipe.train.max_steps, recipe.train.weight_decay, recipe.train.adam_beta2 = 4, 0.5, 0.99
        text = _run(recipe, run, resume=True)
        assert "with changed settings: adam_beta2 0.95 -> 0.99, max_steps 3 -> 4, weight_decay 0 -> 0.5" in text
        saved = torch.load(run / "train" / "checkpoints" / "checkpoint-4" / "optimizer.pt", weights_only=False)
        if optimizer == "adamw":
            decayed, plain = saved["param_groups"]
            hidden = decayed
        else:
            (hidden,) = saved["muon"]["param_groups"]
            decayed, plain = saved["adamw"]["param_groups"]
        assert hidden["weight_decay"] == decayed["weight_decay"] == 0.5  # Muon's matrices and AdamW's embeddings
        assert plain["weight_decay"] == 0.0  # biases and norms stay undecayed
        assert decayed["betas"] == (0.9, 0.99)


def test_a_later_end_trains_on_from_the_finished_run(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file)
    _run(recipe, run)
    recipe.train.max_steps = 9
    text = _run(recipe, run)
    assert "training train on from checkpoint-6 (step 6) to step 9: max_steps 6 -> 9" in text
    assert _status(text, "train") == "resumed at 6, +3 steps"
    info = json.loads((run / "train" / "final" / ".llmforge.json").read_text())["info"]
    assert info["steps"] == 9
    assert not (run / "previous").exists()


def test_settings_that_do_not_touch_the_weights_leave_the_stage_up_to_date(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file)
    _run(recipe, run)
    recipe.train.keep_last, recipe.train.log_every = 5, 2
    assert _status(_run(recipe, run), "train") == "up to date"


def test_a_different_model_trains_afresh_instead_of_a_dead_end(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file)
    _run(recipe, run)
    recipe.model.n_embd = 64
    text = _run(recipe, run)
    assert "the model, tokenizer, data or optimizer changed since train's checkpoint-6: training afresh" in text
    assert _weights(run / "train" / "final")["model.embed_tokens.weight"].shape[1] == 64
    with pytest.raises(RunDirError, match="--resume: .* different model, tokenizer, data or optimizer"):
        recipe.model.n_embd = 32
        recipe.run(run, console=Console(quiet=True), resume=True)


def test_restart_trains_afresh_and_discard_keeps_nothing(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = _recipe(corpus_file)
    _run(recipe, run)
    text = _run(recipe, run, restart="train")
    assert "--restart train: training afresh; the earlier run is kept in" in text
    assert _status(text, "train") == "trained afresh, 6 steps"
    assert _status(text, "tokenizer") == "up to date"
    text = _run(recipe, run, restart=["train"], discard=True)
    assert "the earlier run was deleted (--discard)" in text
    assert sorted(p.name for p in (run / "previous").iterdir()) == ["train-1"]
    with pytest.raises(ConfigError, match=r"--restart 'trian' is not a stage \(did you mean 'train'\?\)"):
        recipe.run(run, restart="trian")


def test_finetune_reruns_on_changed_lr_and_on_changed_data(tmp_path, corpus_file):
    instruct_file = INSTRUCT / "alpaca.jsonl"
    run = tmp_path / "run"
    mapping = tiny_recipe_dict(corpus_file)
    mapping["model"]["context_length"] = 128
    mapping["finetune"] = {
        "path": str(instruct_file), "max_examples": 48, "max_steps": 4, "batch_size": 8, "lr": 3e-3,
        "eval_every": 2, "save_every": 2, "log_every": 1, "seed": 5,
    }  # fmt: skip
    recipe = Recipe.from_dict(mapping)
    _run(recipe, run)
    first = _weights(run / "finetune" / "final")
    recipe.finetune.lr = recipe.finetune.lr / 3
    text = _run(recipe, run, only="finetune")
    assert "finetune's settings changed since the finished run (lr" in text
    assert _status(text, "finetune").startswith("trained afresh")
    assert not _same(first, _weights(run / "finetune" / "final"))
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in instruct_file.read_text().splitlines()]
    other.write_text("".join(json.dumps({**r, "output": r["output"] + " Indeed."}) + "\n" for r in rows))
    recipe.finetune.path = str(other)
    text = _run(recipe, run, only="finetune")
    assert "the model, tokenizer, data or optimizer changed since finetune's checkpoint-" in text
    assert sorted(p.name for p in (run / "previous").iterdir()) == ["finetune-1", "finetune-2"]


def test_streaming_training_trains_on_and_retrains(tmp_path):
    run = tmp_path / "run"
    docs = [f"document number {i} says a few words about the number {i}." for i in range(300)]
    recipe = Recipe.from_dict(stream_recipe_dict(tmp_path, docs, max_steps=4, save_every=2, eval_every=2))
    _run(recipe, run)
    recipe.train.max_steps = 6
    text = _run(recipe, run)
    assert "training train on from checkpoint-4 (step 4) to step 6: max_steps 4 -> 6" in text
    assert _status(text, "train") == "resumed at 4, +2 steps"
    recipe.train.lr = recipe.train.lr / 2
    text = _run(recipe, run)
    assert _status(text, "train") == "trained afresh, 6 steps"
