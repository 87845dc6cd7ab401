"""The sharded token store: built once in parallel, checked against its manifest, trained from by many runs."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from rich.console import Console

import llmforge
from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.cli import main
from llmforge.data.tokenstore import prepare
from llmforge.errors import ConfigError


def quiet() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, corpus_text):
    root = tmp_path_factory.mktemp("stores")
    corpus = root / "book.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus, max_steps=2, eval_every=None, save_every=None))
    one = prepare(recipe, root / "store1", root / "work", num_proc=1, console=quiet())
    two = prepare(recipe, root / "store2", root / "work", num_proc=2, console=quiet())
    recipe.run(root / "run", console=quiet())  # the run's own blocks, to compare with
    return {"root": root, "corpus": corpus, "one": one, "two": two}


def blocks_of(store: Path, split: str) -> np.ndarray:
    files = sorted(store.glob(f"{split}-*.arrow"))
    return np.concatenate([np.asarray(datasets.Dataset.from_file(str(f))["input_ids"]) for f in files])


def test_one_process_store_equals_the_runs_own_blocks(stores):
    root = stores["root"]
    own = datasets.load_from_disk(str(root / "run" / "data" / "blocks"))
    for split in ("train", "validation"):
        assert np.array_equal(blocks_of(root / "store1", split), np.asarray(own[split]["input_ids"]))
    stats = json.loads((root / "run" / "data" / "stats.json").read_text())["blocks"]
    assert stores["one"]["validation"]["unigram_perplexity"] == pytest.approx(stats["validation"]["unigram_perplexity"])


def test_two_processes_write_two_train_shards_with_the_same_tokens(stores):
    root, one, two = stores["root"], stores["one"], stores["two"]
    assert sorted(p.name for p in (root / "store2").glob("*.arrow")) == [
        "train-00000.arrow",
        "train-00001.arrow",
        "validation-00000.arrow",
    ]
    assert two["train"]["tokens"] == one["train"]["tokens"]  # every document, each once
    assert two["train"]["blocks"] * 32 + two["train"]["dropped_tokens"] == two["train"]["tokens"]
    assert np.array_equal(blocks_of(root / "store2", "validation"), blocks_of(root / "store1", "validation"))
    manifest = json.loads((root / "store2" / "store.json").read_text())
    for shard in manifest["shards"]:
        assert (root / "store2" / shard["file"]).stat().st_size == shard["bytes"]
    assert not list((root / "store2").glob(".*tmp*"))


def store_recipe(stores, store: str, **model) -> dict:
    recipe = tiny_recipe_dict(stores["corpus"], max_steps=2, eval_every=None, save_every=None)
    recipe["data"] = {"source": "token_store", "path": str(stores["root"] / store)}
    recipe["tokenizer"] = {"train": False, "path": str(stores["root"] / store / "tokenizer")}
    recipe["model"].update(model)
    return recipe


def test_a_recipe_trains_from_the_store(stores, tmp_path):
    out = tmp_path / "run"
    Recipe.from_dict(store_recipe(stores, "store2")).run(out, console=quiet())
    final = json.loads((out / "train" / "final" / ".llmforge.json").read_text())
    assert final["info"]["steps"] == 2
    # nothing re-tokenized: the blocks artefact is a manifest naming the store's own shard files
    assert [p.name for p in (out / "data" / "blocks").iterdir()] == [".llmforge.json"]
    blocks = json.loads((out / "data" / "blocks" / ".llmforge.json").read_text())["info"]
    assert all(Path(f).parent == stores["root"] / "store2" for files in blocks["files"].values() for f in files)
    # `llmforge eval RUN` reads the same blocks artefact: perplexity on the store's validation blocks
    results = llmforge.evaluate(out, tasks=[])
    assert results["perplexity"]["validation"]["tokens"] == blocks["validation"]["blocks"] * (32 - 1)


def test_truncated_shard_is_one_error_and_exit_code_2(stores, tmp_path, capsys):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(stores["root"] / "store2", store)
    shard = store / "train-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    recipe = store_recipe(stores, "store2")
    recipe["data"]["path"] = str(store)
    recipe["tokenizer"]["path"] = str(store / "tokenizer")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-00001.arrow" in err and "truncated" in err, err


def test_context_length_and_tokenizer_must_match_the_store(stores, tmp_path):
    with pytest.raises(ConfigError, match="model.context_length: 32"):
        Recipe.from_dict(store_recipe(stores, "store1", context_length=64)).run(tmp_path / "a", console=quiet())
    recipe = store_recipe(stores, "store1")
    recipe["tokenizer"] = {"vocab_size": 400}
    with pytest.raises(ConfigError, match="train: false, path: .*store1/tokenizer"):
        Recipe.from_dict(recipe).run(tmp_path / "b", console=quiet())
