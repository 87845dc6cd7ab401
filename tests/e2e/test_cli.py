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


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    done = llmforge("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"llmforge {version('llmforge')}\n"


def test_a_data_file_instead_of_a_recipe_says_a_recipe_is_needed_and_shows_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["It is a truth.", "Universally acknowledged."]}), tmp_path / "mydata.parquet")
    done = llmforge("run", "mydata.parquet", "--out", "runs/first", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "codec" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "'mydata.parquet' is a data file, not a recipe: a recipe is a YAML file like" in message
    example = message.split("`")[1]  # the recipe it shows is one that loads and reads the file
    (tmp_path / "recipe.yaml").write_text(example)
    from llmforge import Recipe

    recipe = Recipe.from_yaml(tmp_path / "recipe.yaml")
    assert recipe.data.source == "parquet" and recipe.data.path == str(tmp_path / "mydata.parquet")
    assert not (tmp_path / "runs").exists()


def test_only_lists_the_stage_names():
    from llmforge.stages import STAGES

    done = llmforge("run", "--help")
    assert done.returncode == 0, done.stderr
    only = " ".join(done.stdout.split("\n  --only STAGE", 1)[1].split("\n  --set", 1)[0].split())
    assert all(name in only for name in STAGES), only


def test_every_generate_option_and_the_run_argument_of_plot_and_compare_have_help():
    import argparse

    from llmforge.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    generate = [a for a in sub.choices["generate"]._actions if not isinstance(a, argparse._HelpAction)]
    assert len(generate) >= 11
    for action in generate:
        assert action.help, f"generate {action.option_strings or action.dest} has no help"
    for command in ("plot", "compare"):
        (run,) = [a for a in sub.choices[command]._actions if a.metavar == "RUN"]
        assert run.help, f"{command} RUN has no help"
    temperature = next(a for a in generate if "--temperature" in a.option_strings)
    assert "0" in temperature.help and "greedy" in temperature.help
    model = next(a for a in generate if not a.option_strings)
    assert "run dir" in model.help and "finetune/final" in model.help


def test_a_misspelt_plugin_name_stops_at_load_with_the_closest_name(tmp_path, corpus_file):
    recipe = tiny_recipe_dict(corpus_file)
    recipe["finetune"] = {"path": str(corpus_file), "chat_template": "chatm", "format": "alpacca"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = llmforge("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "finetune.format: no format named 'alpacca' (did you mean 'alpaca'?)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # nothing ran, no run dir was left behind


def test_a_relative_path_says_it_was_taken_from_the_recipes_folder(tmp_path, corpus_file):
    (tmp_path / "recipes").mkdir()
    recipe = tiny_recipe_dict(corpus_file)
    recipe["data"]["path"] = "corpus/book.txt"  # relative to the current directory, not to the recipe
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = llmforge("run", str(path), "--out", str(tmp_path / "run"), cwd=corpus_file.parent.parent)
    assert done.returncode == 2
    assert (
        f"data.path 'corpus/book.txt' does not exist: a relative path in a recipe file is taken from the recipe's "
        f"folder ({tmp_path / 'recipes'}), which gives {tmp_path / 'recipes' / 'corpus' / 'book.txt'}. It does exist "
        f"relative to the current directory ({corpus_file})" in done.stderr.replace("\n", " ")
    )
    assert not (tmp_path / "run").exists()


def test_restart_and_resume_flags_reach_the_training_stage(tmp_path, corpus_file):
    recipe = write_recipe(tmp_path, corpus_file)
    out = tmp_path / "run"
    assert llmforge("run", str(recipe), "--out", str(out), "--set", "train.max_steps=3").returncode == 0
    done = llmforge("run", str(recipe), "--out", str(out), "--set", "train.max_steps=3", "--restart", "train")
    assert done.returncode == 0, done.stderr
    assert "--restart train: training afresh; the earlier run is kept in" in done.stdout
    done = llmforge("run", str(recipe), "--out", str(out), "--set", "train.max_steps=3", "--set", "train.lr=1e-4")
    assert "train's settings changed since the finished run (lr 0.003 -> 0.0001): training afresh" in done.stdout
    assert "trained afresh, 3 steps" in done.stdout
    done = llmforge("run", str(recipe), "--out", str(out), "--set", "train.max_steps=5", "--set", "train.lr=1e-3",
                    "--resume")  # fmt: skip
    assert "(--resume) with changed settings: lr 0.0001 -> 0.001, max_steps 3 -> 5" in done.stdout
    assert "resumed at 3, +2 steps" in done.stdout


def test_ctrl_c_says_how_to_resume_on_a_line_of_its_own(tmp_path, corpus_file):
    import signal
    import time

    recipe = write_recipe(tmp_path, corpus_file, train={"max_steps": 5000, "save_every": 2})
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge.cli", "run", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    deadline = time.time() + 300
    while not list((out / "train" / "checkpoints").glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "\ninterrupted. Rerun the same command to go on from the last complete checkpoint." in "\n" + stderr
