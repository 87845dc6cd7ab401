"""The docs: generated references equal the code, the site builds with --strict, every example
recipe loads (with and without --smoke), and --smoke itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from llmforge import Recipe, docgen
from llmforge.config.schema import field_docs
from llmforge.errors import ConfigError

EXAMPLE_RECIPES = sorted([*(REPO / "examples").glob("*.yaml"), *(REPO / "examples").glob("*/recipe.yaml")])


@pytest.mark.parametrize("page", sorted(docgen.PAGES))
def test_committed_reference_equals_generated(page):
    committed = REPO / "docs" / page
    assert committed.exists(), f"docs/{page} is missing: run python -m llmforge.docgen"
    assert committed.read_text() == docgen.PAGES[page](), f"docs/{page} is stale: run python -m llmforge.docgen"


def test_recipe_reference_has_every_key():
    from llmforge.recipe import STAGE_CONFIGS

    text = docgen.recipe_reference()
    for stage, cls in STAGE_CONFIGS.items():
        for name, *_ in field_docs(cls):
            assert f"`{stage}.{name}`" in text
    assert "`finetune.lora.r`" in text and "`smoke`" in text


def test_cli_reference_has_every_command_and_option():
    from llmforge.cli import build_parser

    text = docgen.cli_reference()
    for command in ("run", "plot", "compare", "data-report", "generate", "eval", "plugins"):
        assert f"## {command}\n" in text
    for option in ("--smoke", "--budget-hours", "--prompt", "--max-new-tokens"):
        assert f"`{option}" in text
    assert build_parser().prog == "llmforge"


@pytest.mark.skipif(shutil.which("mkdocs") is None and not Path(sys.executable).with_name("mkdocs").exists(),
                    reason="mkdocs is not installed (pip install -e '.[dev]')")  # fmt: skip
def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("index", "quickstart", "concepts", "plugins", "troubleshooting", "reference/recipe", "reference/cli"):
        assert (tmp_path / "site" / page / "index.html").exists() or (tmp_path / "site" / f"{page}.html").exists(), page


def test_nav_keeps_the_guides_others_write():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", ""))["nav"]
    flat = []

    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            walk(value) if isinstance(value, list) else flat.append(value)

    walk(nav)
    for page in ("evaluation.md", "finetuning.md", "models.md", "performance.md", "reliability.md", "corpora.md"):
        assert page in flat
    for page in ("index.md", "quickstart.md", "concepts.md", "plugins.md", "troubleshooting.md", "reference/recipe.md"):
        assert page in flat
    # a page that is in docs/ but not in the nav is listed under Guides by docs/hooks.py (never unreachable)


@pytest.mark.parametrize("path", EXAMPLE_RECIPES, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_example_recipes_load(path):
    recipe = Recipe.from_yaml(path)
    if "smoke" in yaml.safe_load(path.read_text()):
        smoke = Recipe.from_yaml(path, smoke=True)
        assert smoke.to_dict() != recipe.to_dict()
        if smoke.train is not None:
            assert smoke.train.max_steps is not None and smoke.train.max_steps <= 50


def test_every_example_folder_has_a_readme():
    for folder in (REPO / "examples").iterdir():
        if folder.is_dir() and folder.name != "data" and any(folder.glob("*.yaml")):
            assert (folder / "README.md").exists(), folder


def test_smoke_block_merges_and_set_wins(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "data": {"source": "text", "path": "x.txt"},
                "model": {"n_layer": 12, "n_embd": 768, "n_head": 12},
                "train": {"max_steps": 1000, "lr": 1e-3},
                "smoke": {"model": {"n_layer": 2, "n_embd": 48}, "train": {"max_steps": 5}},
            }
        )
    )
    plain = Recipe.from_yaml(path)
    assert (plain.model.n_layer, plain.train.max_steps) == (12, 1000)
    smoke = Recipe.from_yaml(path, smoke=True, overrides=["train.max_steps=7"])
    assert (smoke.model.n_layer, smoke.model.n_embd, smoke.model.n_head) == (2, 48, 12)  # merged, not replaced
    assert smoke.train.max_steps == 7 and smoke.train.lr == 1e-3  # --set after smoke; the rest kept
    assert "smoke" not in smoke.to_dict()


def test_smoke_without_a_block_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: s\ndata: {source: text, path: x.txt}\n")
    with pytest.raises(ConfigError, match="no 'smoke:' block"):
        Recipe.from_yaml(path, smoke=True)


def test_fineweb_smoke_runs_offline(tmp_path):
    """The FineWeb recipe's --smoke: the hub source's streaming path on the local stand-in, end to end."""
    from llmforge.cli import main

    out = tmp_path / "run"
    assert main(["run", str(REPO / "examples/fineweb/recipe.yaml"), "--out", str(out), "--smoke"]) == 0
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["data"]["streaming"] is True and resolved["data"]["source"] == "hub"
    assert resolved["tokenizer"]["vocab_size"] == 2048
    assert (out / "train" / "final" / "config.json").exists() and (out / "loss.png").exists()
