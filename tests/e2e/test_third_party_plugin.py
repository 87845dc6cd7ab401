"""A third-party plugin in its own package (examples/llmforge-gutenberg), pip-installed and used by name."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, tiny_recipe_dict
from test_cli import llmforge

PLUGIN = REPO / "examples" / "llmforge-gutenberg"


@pytest.fixture
def installed_plugin():
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", str(PLUGIN)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    yield
    subprocess.run([*pip, "uninstall", "-y", "llmforge-gutenberg"], check=True, capture_output=True, timeout=300)


def test_installed_plugin_is_listed_and_used_by_a_recipe(installed_plugin, tmp_path, corpus_text):
    book = tmp_path / "books" / "pg1342.txt"
    book.parent.mkdir()
    book.write_text(
        "The Project Gutenberg eBook of Pride and Prejudice\n\nLicence text that must not be trained.\n\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***\n\n"
        + corpus_text
        + "\n\n*** END OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***\n\nMore licence text.\n"
    )
    listing = llmforge("plugins")
    assert "gutenberg" in listing.stdout and "llmforge-gutenberg" in listing.stdout

    recipe = tiny_recipe_dict(book.parent)
    recipe["data"] = {
        "source": "gutenberg",
        "path": str(book.parent),
        "options": {"min_chars": 20},
        "val_fraction": 0.1,
    }
    recipe["train"]["max_steps"] = 2
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = llmforge("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr

    import datasets

    docs = datasets.load_from_disk(str(tmp_path / "run" / "data" / "documents"))
    texts = list(docs["train"]["text"]) + list(docs["validation"]["text"])
    assert not any("licence" in t.lower() or "PROJECT GUTENBERG" in t for t in texts)
    assert any("Bennet" in t for t in texts)
    assert min(len(t) for t in texts) >= 20

    # The third-party source gets the same rerun-on-change guarantee as the built-in ones: editing its
    # input file reruns the data stage (and everything after it); an untouched rerun reruns nothing.
    again = llmforge("run", str(path), "--out", str(tmp_path / "run"))
    assert again.returncode == 0, again.stderr
    assert re.search(r"│ data\s+│ up to date", again.stdout)
    marker = "\n\n*** END OF THE PROJECT GUTENBERG EBOOK"  # the plugin keeps only the text before it
    book.write_text(
        book.read_text().replace(marker, "\n\nA new paragraph about Mr Darcy, long enough to be a document." + marker)
    )
    edited = llmforge("run", str(path), "--out", str(tmp_path / "run"), "--only", "data")
    assert edited.returncode == 0, edited.stderr
    assert re.search(r"│ data\s+│ ran", edited.stdout)
    docs = datasets.load_from_disk(str(tmp_path / "run" / "data" / "documents"))
    assert any("Mr Darcy, long enough" in t for t in list(docs["train"]["text"]) + list(docs["validation"]["text"]))
