"""The Deep Lake data source: local datasets, hub URIs offline, bad input, streaming and resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.cli import main
from llmforge.config.schema import DataConfig
from llmforge.errors import DataError

deeplake = pytest.importorskip("deeplake")
from llmforge.data.streaming import StreamingBlocks  # noqa: E402
from llmforge_deeplake import load_deeplake  # noqa: E402


def quiet() -> Console:
    return Console(quiet=True)


def make_dataset(path: Path, docs: list[str], numbers: bool = True) -> Path:
    ds = deeplake.create(str(path))
    ds.add_column("text", deeplake.types.Text())
    if numbers:
        ds.add_column("n", deeplake.types.Int32())
    if docs:
        row = {"text": docs}
        if numbers:
            row["n"] = list(range(len(docs)))
        ds.append(row)
    ds.commit()
    return path


@pytest.fixture(scope="module")
def docs(corpus_text) -> list[str]:
    return [p.strip() for p in corpus_text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def lake(tmp_path_factory, docs) -> Path:
    return make_dataset(tmp_path_factory.mktemp("lake") / "austen", docs)


def test_reads_every_row_in_order_in_batches(lake, docs):
    source = load_deeplake(DataConfig(source="deeplake", path=str(lake)))
    got = [t for texts, _ in source.stream_batches(None, 50, 0, None) for t in texts]
    assert got == docs
    # a position is a row index: starting there gives the same rows as reading up to it
    tail = [t for texts, _ in source.stream_batches(137, 50, 0, None) for t in texts]
    assert tail == docs[137:]
    assert [t for b, _ in source.stream_batches(None, 7, 10, 30) for t in b] == docs[10:30]


def test_recipe_without_streaming_reads_the_documents(lake, docs, tmp_path):
    recipe = tiny_recipe_dict(lake, max_steps=1, eval_every=None, save_every=None)
    recipe["data"] = {"source": "deeplake", "path": str(lake), "val_fraction": 0.1, "seed": 7}
    Recipe.from_dict(recipe).run(tmp_path / "run", console=quiet())
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())["documents"]
    assert stats["train"]["documents"] + stats["validation"]["documents"] == len(docs)
    assert not (tmp_path / "run" / "data" / "source-cache").exists()


def test_streaming_resume_from_a_deeplake_position_is_exact(lake, tmp_path):
    recipe = tiny_recipe_dict(lake, max_steps=2, eval_every=None, save_every=None)
    recipe["data"] = {"source": "deeplake", "path": str(lake), "streaming": True, "val_documents": 20}
    Recipe.from_dict(recipe).run(tmp_path / "run", console=quiet())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "tokenizer"))
    source = load_deeplake(DataConfig(source="deeplake", path=str(lake)))

    def blocks(state=None, n=300):
        it = iter(StreamingBlocks(source, tok, 32, first_row=20, state=state, doc_batch=16))
        return [next(it)["input_ids"].tolist() for _ in range(n)]

    reference = blocks()
    s = StreamingBlocks(source, tok, 32, first_row=20, doc_batch=16)
    it = iter(s)
    head = [next(it)["input_ids"].tolist() for _ in range(123)]
    assert s.state["source"] is not None  # a real row offset, not the start
    assert head + blocks(s.state, 177) == reference


# --- bad input: one clear error each -------------------------------------------------------------


def test_without_deeplake_installed_says_what_to_install(monkeypatch, lake):
    monkeypatch.setitem(sys.modules, "deeplake", None)  # import deeplake raises ImportError
    with pytest.raises(DataError, match=r"pip install 'llmforge\[deeplake\]'"):
        load_deeplake(DataConfig(source="deeplake", path=str(lake)))


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="is not a Deep Lake dataset"):
        load_deeplake(DataConfig(source="deeplake", path=str(tmp_path / "plain")))


def test_missing_text_column_lists_the_columns(lake):
    with pytest.raises(DataError, match=r"no column 'body'.*Its columns: text \(text.*\), n \(int32\)"):
        load_deeplake(DataConfig(source="deeplake", path=str(lake), text_column="body"))


def test_column_of_the_wrong_type(lake):
    with pytest.raises(DataError, match=r"Column 'n' .* is int32, not text"):
        load_deeplake(DataConfig(source="deeplake", path=str(lake), text_column="n"))


def test_empty_dataset(tmp_path):
    path = make_dataset(tmp_path / "empty", [])
    with pytest.raises(DataError, match=r"is empty \(0 rows\)"):
        load_deeplake(DataConfig(source="deeplake", path=str(path)))


@pytest.mark.parametrize("uri", ["hub://activeloop/openwebtext-train", "al://someorg/somedata"])
def test_hub_uri_offline_is_one_line_and_exit_code_2(tmp_path, capsys, uri):
    recipe = tiny_recipe_dict(tmp_path)
    recipe["data"] = {"source": "deeplake", "name": uri, "streaming": True}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert uri in err and "not reachable" in err and "Traceback" not in err
