"""What a first hour prints is llmforge's own: no library warning that llmforge has already dealt with, no
lm-eval progress bars inside rich output, no git errors outside a checkout; a warning that matters still
shows, in llmforge's words."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CORPUS, REPO, tiny_gpt2, tiny_recipe_dict

SAMPLES = REPO / "examples" / "data" / "benchmarks"
NOISE = (
    "loss_type=None",  # transformers: a GPT-2 class name that names no loss
    "There were missing keys in the checkpoint",  # transformers: the tied lm_head on every resume
    "not a git repository",  # lm-eval's git call, outside a checkout
    "Running loglikelihood requests",  # lm-eval's tqdm bars
    "Tokenizing inputs",
)
TQDM_LINE = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\d+/\d+ \[\d\d:\d\d<|it/s\]")


def cli(*args: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "llmforge.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_train_resume_and_benchmarks_print_only_llmforge_lines(tmp_path):
    """A training, its resume, the evaluate stage and `llmforge eval` of two models, run from a folder
    outside any git checkout: nothing but llmforge's own lines."""
    work = tmp_path / "work"
    work.mkdir()
    corpus = work / "book.txt"
    corpus.write_text((CORPUS / "pride_and_prejudice.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    recipe = tiny_recipe_dict(corpus, max_steps=6, eval_every=None, save_every=2, log_every=2)
    recipe["model"]["context_length"] = 128  # room for a benchmark prompt's answer
    recipe["evaluate"] = {"benchmarks": ["mmlu"], "data_dir": str(SAMPLES), "limit": 2, "batch_size": 4}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "COLUMNS": "200",
        "GIT_CEILING_DIRECTORIES": str(tmp_path),  # git looks in work/ and no folder above it
    }
    if shutil.which("git"):  # without git there is no git error to print
        assert subprocess.run(["git", "rev-parse"], cwd=work, env=env, capture_output=True).returncode != 0

    printed = cli("run", "recipe.yaml", "--out", "run", cwd=work, env=env)
    # as if interrupted after step 4: the rerun resumes from checkpoint-4 through Trainer's own loading
    for path in (work / "run" / "train" / "checkpoints" / "checkpoint-6", work / "run" / "train" / "final"):
        shutil.rmtree(path)
    resumed = cli("run", "recipe.yaml", "--out", "run", cwd=work, env=env)
    assert "resuming from checkpoint-4" in resumed, resumed
    compared = cli(
        *["eval", "run/model", "run/train/final", "--tasks", "mmlu", "--data-dir", str(SAMPLES)],
        *["--limit", "2", "--batch-size", "4", "--out", "bench"],
        cwd=work,
        env=env,
    )
    assert "evaluation of train/final" in printed and "llmforge eval" in compared
    everything = printed + resumed + compared
    assert [message for message in NOISE if message in everything] == []
    bars = [line for line in everything.splitlines() if TQDM_LINE.search(line)]
    assert not bars, bars


def tied_checkpoint(model, tmp_path: Path, drop: str) -> dict:
    """The model's weights as Trainer saves them (shared tensors once), without `drop`."""
    path = tmp_path / "model.safetensors"
    model.save_pretrained(tmp_path)
    state = load_file(path)
    assert "lm_head.weight" not in state  # the tied head is saved once, as the embedding
    return {k: v for k, v in state.items() if k != drop}


def trainer_for(model, tmp_path: Path):
    from transformers import TrainingArguments

    from llmforge.training.trainer import LlmforgeTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, disable_tqdm=True)
    return LlmforgeTrainer(model=model, args=args, stage="train")


def test_a_tied_head_missing_from_a_checkpoint_is_not_reported(tmp_path, capsys, caplog):
    model = tiny_gpt2()
    state = tied_checkpoint(model, tmp_path, drop="")
    trainer = trainer_for(model, tmp_path)
    trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
    assert "missing" not in capsys.readouterr().out + caplog.text
    assert model.lm_head.weight is model.transformer.wte.weight


def test_a_weight_really_missing_from_a_checkpoint_is_said_in_llmforges_words(tmp_path, capsys):
    model = tiny_gpt2()
    state = tied_checkpoint(model, tmp_path, drop="transformer.h.0.ln_1.weight")
    trainer = trainer_for(model, tmp_path)
    trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
    said = capsys.readouterr().out
    assert "train: the checkpoint holds no weights for transformer.h.0.ln_1.weight" in said
    assert "lm_head" not in said  # tied to the embedding, which was loaded

    untied = tiny_gpt2()
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    state = {k: v.clone() for k, v in untied.state_dict().items() if k != "lm_head.weight"}
    trainer = trainer_for(untied, tmp_path)
    trainer._issue_warnings_after_load(untied.load_state_dict(state, strict=False))
    assert "the checkpoint holds no weights for lm_head.weight" in capsys.readouterr().out


def test_every_trained_model_names_its_loss(tmp_path):
    """GPT-2's class name (GPT2LMHeadModel) names no loss in transformers' table; the Trainer gets it named,
    the same causal-LM loss transformers falls back to."""
    model = tiny_gpt2()
    assert model.loss_type is None
    trainer_for(model, tmp_path)
    assert model.loss_type == "ForCausalLM"
    batch = torch.randint(0, 50, (2, 8))
    loss = model(input_ids=batch, labels=batch).loss
    logits = model(input_ids=batch).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), batch[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_no_state_leaks_out_of_lm_eval():
    """The quieting is undone after lm-eval: tqdm and git behave as before for everyone else."""
    import lm_eval.api.task
    import lm_eval.evaluator

    from llmforge.eval.harness import _quiet_lm_eval

    before = (lm_eval.api.task.tqdm, lm_eval.evaluator.get_git_commit_hash)
    with _quiet_lm_eval():
        assert lm_eval.evaluator.get_git_commit_hash is not before[1]
    assert (lm_eval.api.task.tqdm, lm_eval.evaluator.get_git_commit_hash) == before
