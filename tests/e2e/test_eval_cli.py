"""`llmforge eval` as a user drives it: a comparison table, results files, offline errors, a third-party benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from conftest import CORPUS, REPO, tiny_recipe_dict
from llmforge import Recipe
from test_cli import ENV, llmforge

SAMPLES = REPO / "examples" / "data" / "benchmarks"
PLUGIN = REPO / "examples" / "llmforge-capitals"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run; context 128 leaves room for a benchmark prompt's answer."""
    root = tmp_path_factory.mktemp("eval-cli")
    corpus = root / "book.txt"
    corpus.write_text((CORPUS / "pride_and_prejudice.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    recipe = tiny_recipe_dict(corpus, max_steps=4, eval_every=None, save_every=None)
    recipe["model"]["context_length"] = 128
    Recipe.from_dict(recipe).run(root / "run", console=Console(quiet=True))
    return root / "run"


def test_two_models_in_one_table_with_the_difference(run_dir, tmp_path):
    text = tmp_path / "letters.txt"
    text.write_text((CORPUS / "persuasion.txt").read_text(encoding="utf-8")[:2000], encoding="utf-8")
    out = tmp_path / "out"
    done = llmforge(
        *["eval", str(run_dir / "model"), str(run_dir / "train" / "final")],
        *["--tasks", "mmlu,hellaswag", "--data-dir", str(SAMPLES), "--limit", "4", "--batch-size", "4"],
        *["--text", str(text), "--out", str(out)],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("llmforge eval") == 1  # one table
    for row in ("MMLU ", "MMLU humanities", "MMLU social sciences", "MMLU STEM", "MMLU other", "HellaSwag acc "):
        assert row in done.stdout, row
    # each perplexity says what it is measured on
    assert "HellaSwag acc_norm" in done.stdout and "perplexity on the pretraining validation blocks" in done.stdout
    assert "perplexity on letters.txt" in done.stdout and "difference" in done.stdout

    results = json.loads((out / "results.json").read_text())["models"]
    assert [r["model"] for r in results] == [str(run_dir / "model"), str(run_dir / "train" / "final")]
    base, trained = (r["table"] for r in results)
    assert trained["validation perplexity"] < base["validation perplexity"]  # 4 steps of training help
    difference = trained["validation perplexity"] - base["validation perplexity"]
    line = next(line for line in done.stdout.splitlines() if "pretraining validation blocks" in line)
    tokens = results[0]["n"]["validation perplexity"]
    assert f"{base['validation perplexity']:.2f}" in line and f"{difference:+.2f}" in line
    assert f"{tokens:,} tokens" in line and tokens == results[1]["n"]["validation perplexity"]
    assert results[0]["lm_eval"]["results"]["hellaswag"]["sample_len"] == 4
    # n: the questions each benchmark row rests on (--limit 4 per subject, 6 subjects; a category: its subjects)
    assert results[0]["n"]["MMLU"] == 24 and results[0]["n"]["HellaSwag acc"] == 4
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in done.stdout.splitlines() if "│" in line]
    assert ["MMLU", "24"] in [row[:2] for row in cells] and ["HellaSwag acc", "4"] in [row[:2] for row in cells]
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("| metric | n | model | train/final | difference |")  # the folder they share goes
    assert f"- models in {run_dir}" in markdown and "models in" in done.stdout  # into a note, not every column
    on_blocks = "perplexity on the pretraining validation blocks"
    assert f"| {on_blocks} | {tokens:,} tokens | {base['validation perplexity']:.2f} |" in markdown
    assert "| MMLU | 24 |" in markdown and "| HellaSwag acc | 4 |" in markdown
    assert (out / "tasks" / "hellaswag" / "hellaswag.yaml").is_file()


def test_offline_without_benchmark_data_is_one_line_with_exit_code_2(run_dir, tmp_path):
    env = {**ENV, "HF_HOME": str(tmp_path / "empty-hf-home")}  # no cached copy of cais/mmlu either
    done = subprocess.run(
        [sys.executable, "-m", "llmforge.cli", "eval", str(run_dir), "--tasks", "mmlu", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "offline" in done.stderr and "DATA_DIR/mmlu/" in done.stderr and "--data-dir" in done.stderr
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.fixture
def installed_plugin(tmp_path):
    """The example benchmark plugin, pip-installed from a copy (the repo stays clean), removed after."""
    source = tmp_path / "llmforge-capitals"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    yield
    subprocess.run([*pip, "uninstall", "-y", "llmforge-capitals"], check=True, capture_output=True, timeout=300)


def test_third_party_benchmark_plugin_runs_through_llmforge_eval(installed_plugin, run_dir, tmp_path):
    listing = llmforge("plugins")
    assert "capitals" in listing.stdout and "llmforge-capitals" in listing.stdout

    done = llmforge("eval", str(run_dir / "train" / "final"), "--tasks", "capitals", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Capitals acc" in done.stdout and "Capitals acc_norm" in done.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lm_eval"]["results"]["capitals"]["sample_len"] == 12
    assert 0.0 <= results["table"]["Capitals acc"] <= 1.0
    assert results["benchmarks"]["capitals"]["source"] == "plugin task folder"
