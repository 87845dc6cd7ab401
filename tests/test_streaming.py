"""Streaming pretraining: exact stream positions, held-out validation rows, rank sharding, kill and resume."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from kill_helpers import finish, reference_and_killed_at_checkpoint, start_run
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoTokenizer

from conftest import stream_recipe_dict, tiny_recipe_dict
from llmforge import Recipe
from llmforge.data.streaming import IterableStream, RowStream, StreamingBlocks
from llmforge.errors import ConfigError, DataError

T = 32


def quiet() -> Console:
    return Console(quiet=True)


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus_text):
    """A tokenizer trained by a tiny streaming run (shared by the unit tests below)."""
    root = tmp_path_factory.mktemp("stream-tok")
    recipe = stream_recipe_dict(root, paragraphs(corpus_text), max_steps=2, eval_every=None, save_every=None)
    Recipe.from_dict(recipe).run(root / "run", console=quiet())
    return AutoTokenizer.from_pretrained(str(root / "run" / "tokenizer"))


def take(ds: StreamingBlocks, n: int) -> list[list[int]]:
    it = iter(ds)
    return [next(it)["input_ids"].tolist() for _ in range(n)]


def make(source, tok, **kw) -> StreamingBlocks:
    return StreamingBlocks(source, tok, T, first_row=kw.pop("first_row", 5), doc_batch=kw.pop("doc_batch", 7), **kw)


# --- the stream position is exact ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rows", "iterable"])
def test_resuming_from_any_position_continues_the_same_blocks(tok, corpus_text, tmp_path, kind):
    docs = paragraphs(corpus_text)[:60]
    if kind == "rows":
        source = RowStream(datasets.Dataset.from_dict({"text": docs}), "text")
    else:
        path = write_jsonl(tmp_path / "s.jsonl", docs)
        ids = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
        source = IterableStream(ids, "text")
    reference = take(make(source, tok), 400)  # several epochs of 55 rows
    for cut in (1, 6, 37, 150, 299):
        first = make(source, tok)
        it = iter(first)
        seen = [next(it)["input_ids"].tolist() for _ in range(cut)]
        resumed = make(source, tok, state=json.loads(json.dumps(first.state)))  # through JSON, as saved
        assert seen + take(resumed, 400 - cut) == reference, f"cut at block {cut}"
    # the carried-over tokens are part of the state and fewer than one block
    assert len(first.state["carry"]) < T and first.state["epoch"] >= 1


def test_validation_rows_are_never_trained_and_each_document_once_per_epoch(tok):
    docs = [f"document number {i} " * 3 for i in range(40)]
    source = RowStream(datasets.Dataset.from_dict({"text": docs}), "text")
    eos = tok.eos_token_id
    streams = [make(source, tok, first_row=10, rank=r, world=2, doc_batch=4) for r in range(2)]
    texts = []
    for s in streams:
        ids: list[int] = []
        it = iter(s)
        while s.state["epoch"] == 0:
            ids += next(it)["input_ids"].tolist()
        texts.append([d for d in tok.decode(ids).split(tok.decode([eos])) if d])
    together = texts[0] + texts[1]
    complete = [d for d in together if d in docs]
    assert not set(docs[:10]) & set(together)  # validation rows never trained
    assert len(complete) == len(set(complete))  # no document trained twice in the epoch
    assert set(texts[0]) & set(docs) <= set(docs[10::2]) and set(texts[1]) & set(docs) <= set(docs[11::2])


def test_resume_cost_does_not_grow_with_the_position(tok):
    docs = [f"row {i} has a handful of words in it, enough for a block." for i in range(60_000)]
    source = RowStream(datasets.Dataset.from_dict({"text": docs}), "text")
    timings = {}
    for blocks in (5, 20_000):
        s = StreamingBlocks(source, tok, T, first_row=0)
        it = iter(s)
        for _ in range(blocks):
            next(it)
        state = s.state
        best = []
        for _ in range(3):
            resumed = StreamingBlocks(source, tok, T, first_row=0, state=state)
            next(iter(resumed))
            best.append(resumed.first_block_seconds)
        timings[blocks] = min(best)
    assert timings[20_000] < 0.5, timings
    assert timings[20_000] < 10 * timings[5] + 0.05, timings


# --- the recipe path ------------------------------------------------------------------------------


def test_streaming_recipe_holds_out_validation_rows_before_packing(tmp_path, corpus_text):
    docs = paragraphs(corpus_text)
    out = tmp_path / "run"
    Recipe.from_dict(stream_recipe_dict(tmp_path, docs, max_steps=3, save_every=None, eval_every=None)).run(
        out, console=quiet()
    )
    dd = datasets.load_from_disk(str(out / "data" / "documents"))
    assert list(dd["validation"]["text"]) == docs[:30]
    assert not set(dd["train"]["text"]) & set(docs[:30])
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    val = datasets.load_from_disk(str(out / "data" / "blocks"))["validation"]
    stream = []
    for d in docs[:30]:
        stream += tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]
    n = len(stream) // T
    assert [x for row in val["input_ids"] for x in row] == stream[: n * T]  # packed like the training data
    final = json.loads((out / "train" / "final" / ".llmforge.json").read_text())
    assert final["info"]["steps"] == 3


def test_streaming_without_max_steps_is_a_config_error(tmp_path, corpus_text):
    recipe = stream_recipe_dict(tmp_path, paragraphs(corpus_text), max_steps=None, epochs=1)
    with pytest.raises(ConfigError, match="train.max_steps"):
        Recipe.from_dict(recipe).run(tmp_path / "run", console=quiet())


def test_stream_with_nothing_after_the_validation_rows_says_so(tmp_path):
    recipe = stream_recipe_dict(tmp_path, [f"only {i}" for i in range(10)], max_steps=2)
    with pytest.raises(DataError, match="val_documents"):
        Recipe.from_dict(recipe).run(tmp_path / "run", console=quiet())


def test_text_column_of_the_wrong_type_in_a_stream(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(50)))
    recipe = stream_recipe_dict(tmp_path, ["x"], max_steps=2)
    recipe["data"]["data_files"] = str(path)
    with pytest.raises(DataError, match="not text"):
        Recipe.from_dict(recipe).run(tmp_path / "run", console=quiet())


# --- kill a streaming run and rerun it ----------------------------------------------------------


def test_sigkill_mid_stream_then_rerun_is_exact(tmp_path, corpus_text):
    # 30 validation rows, then 6 training rows: the 12 steps cross the end of the stream (epoch 2)
    recipe = stream_recipe_dict(tmp_path, paragraphs(corpus_text)[:36], max_steps=12, save_every=3, eval_every=6)
    path, reference, out = reference_and_killed_at_checkpoint(recipe, tmp_path)
    state = json.loads((out / "train" / "checkpoints" / "checkpoint-6" / "stream_state.json").read_text())
    assert state["states"][0]["blocks"] == 6 * 4

    stdout = finish(start_run(path, out, tmp_path))
    assert "resuming from checkpoint-" in stdout and "stream position: epoch" in stdout

    a = load_file(reference / "train" / "final" / "model.safetensors")
    b = load_file(out / "train" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in losses] == list(range(1, 13))
    assert losses == [(r["step"], r["loss"]) for r in ref if "loss" in r]
    final = json.loads((reference / "train" / "checkpoints" / "checkpoint-12" / "stream_state.json").read_text())
    assert final["states"][0]["epoch"] >= 1  # the run did cross the end of the stream


# --- bounded memory for large file corpora ---------------------------------------------------------


@pytest.mark.parametrize("source", ["text", "jsonl"])
def test_on_disk_path_of_file_sources_gives_the_same_run(tmp_path, corpus_text, source):
    """Above data.options.stream_bytes the text/jsonl sources write documents one by one to disk:
    the documents, the split and the packed blocks are those of the in-memory path."""
    docs = paragraphs(corpus_text)
    if source == "text":
        corpus = tmp_path / "book.txt"
        corpus.write_text(corpus_text, encoding="utf-8")
        data = {"source": "text", "path": str(corpus), "documents": "paragraph"}
    else:
        corpus = write_jsonl(tmp_path / "book.jsonl", docs)
        data = {"source": "jsonl", "path": str(corpus)}
    outs = {}
    for name, options in (("memory", {}), ("disk", {"stream_bytes": 0})):
        recipe = tiny_recipe_dict(corpus, max_steps=1, eval_every=None, save_every=None)
        recipe["data"] = {**data, "val_fraction": 0.1, "seed": 7, "options": options}
        out = tmp_path / name
        Recipe.from_dict(recipe).run(out, only="data", console=quiet())
        Recipe.from_dict(recipe).run(out, only="tokenizer", console=quiet())
        Recipe.from_dict(recipe).run(out, only="blocks", console=quiet())
        outs[name] = out
    for part in ("documents", "blocks"):
        a = datasets.load_from_disk(str(outs["memory"] / "data" / part))
        b = datasets.load_from_disk(str(outs["disk"] / "data" / part))
        for split in ("train", "validation"):
            assert a[split].to_dict() == b[split].to_dict(), (part, split)
    assert not (outs["disk"] / "data" / "source-cache").exists()  # the copy is removed once documents/ exists


def test_large_text_input_is_written_to_the_cache_dir_not_held_in_memory(tmp_path, corpus_text):
    from llmforge.config.schema import DataConfig
    from llmforge_sources import load_text

    corpus = tmp_path / "book.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    cfg = DataConfig(source="text", path=str(corpus), documents="paragraph", options={"stream_bytes": 0})
    ds = load_text(cfg, cache_dir=str(tmp_path / "cache"))
    assert ds.cache_files and all(str(tmp_path / "cache") in f["filename"] for f in ds.cache_files)
    assert [t.strip() for t in ds["text"] if t.strip()] == paragraphs(corpus_text)
    small = load_text(DataConfig(source="text", path=str(corpus), documents="paragraph"))
    assert not small.cache_files and small["text"] == ds["text"]
