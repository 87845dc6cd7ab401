"""The command line as a user drives it, in a subprocess: run, generate, plugins, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, tiny_recipe_dict

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}


def llmforge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmforge.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600
    )


def write_recipe(tmp_path: Path, corpus: Path, **changes) -> Path:
    recipe = tiny_recipe_dict(corpus)
    for stage, values in changes.items():
        recipe[stage].update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_then_generate_then_rerun(tmp_path, corpus_file):
    recipe = write_recipe(tmp_path, corpus_file)
    out = tmp_path / "run"
    done = llmforge("run", str(recipe), "--out", str(out), "--set", "train.max_steps=4")
    assert done.returncode == 0, done.stderr
    assert "llmforge run" in done.stdout and "perplexity" in done.stdout and "unigram" in done.stdout
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["max_steps"] == 4

    gen = llmforge("generate", str(out / "train" / "final"), "It is a truth", "--max-new-tokens", "6", "--seed", "1")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("It is a truth") and len(gen.stdout.strip()) > len("It is a truth")

    again = llmforge("run", str(recipe), "--out", str(out), "--set", "train.max_steps=4")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("up to date") == 5


def test_plugins_lists_the_builtin_sources():
    done = llmforge("plugins")
    assert done.returncode == 0, done.stderr
    for word in ("sources", "llmforge", "text", "jsonl", "parquet", "csv", "hub"):
        assert word in done.stdout


def test_bad_recipe_key_is_one_line_with_exit_code_2(tmp_path, corpus_file):
    recipe = write_recipe(tmp_path, corpus_file, train={"lrr": 0.1})
    done = llmforge("run", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "train.lrr" in done.stderr and "did you mean 'lr'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "run").exists()


def test_bad_data_is_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n\nsecond paragraph".encode("latin-1"))
    recipe = write_recipe(tmp_path, bad)
    done = llmforge("run", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "latin1.txt" in done.stderr and "byte 3" in done.stderr and "encoding" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "data" / "documents").exists()


def test_example_recipe_is_valid():
    from llmforge import Recipe

    recipe = Recipe.from_yaml(REPO / "examples" / "pretrain_tiny.yaml")
    assert Path(recipe.data.path).is_dir()
    assert recipe.model.arch == "gpt2"
