"""The data stage: reading, validating and splitting documents, its stats, and the packed blocks."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from rich.console import Console
from transformers import AutoTokenizer

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.config.schema import DataConfig
from llmforge.data import documents
from llmforge.errors import ConfigError, DataError
from llmforge.plugin.manager import get_plugins
from llmforge.stages import data
from llmforge.stages.context import Context

EOS = "<|endoftext|>"
T = 32


def quiet() -> Console:
    return Console(quiet=True)


def recipe_for(corpus: Path, *, data_cfg: dict | None = None, **train: object) -> Recipe:
    """The conftest tiny recipe with one optimizer step, and data keys replaced by `data_cfg`."""
    mapping = tiny_recipe_dict(corpus, **{"max_steps": 1, "eval_every": None, "save_every": None, **train})
    if data_cfg is not None:
        mapping["data"] = {"val_fraction": 0.1, "seed": 7, **data_cfg}
    return Recipe.from_dict(mapping)


def run_data_stage(recipe: Recipe, out: Path) -> dict:
    """Only the data stage, the way Recipe.run calls it (fingerprint first)."""
    datasets.disable_progress_bars()
    ctx = Context(out, recipe, get_plugins(recipe.plugins), quiet())
    ctx.fingerprints["data"] = data.fingerprint(ctx)
    return data.run(ctx)


def read(cfg: DataConfig, tmp_path: Path) -> tuple[datasets.Dataset, documents.DocumentCount]:
    """The documents the data stage keeps from a source (as a Dataset), and what it counted."""
    datasets.disable_progress_bars()
    ctx = Context(tmp_path / "run", Recipe(), get_plugins(), quiet())
    count = documents.DocumentCount()
    docs = [
        d for batch in documents.document_batches(documents.read_documents(ctx.source(cfg)), cfg, count) for d in batch
    ]
    return datasets.Dataset.from_dict({"text": docs}), count


def splits(out: Path) -> dict[str, list[str]]:
    dd = datasets.load_from_disk(str(out / "data" / "documents"))
    return {name: list(ds["text"]) for name, ds in dd.items()}


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name] if directory.is_dir() else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_text):
    """One full tiny run (one training step) shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("data-run")
    corpus = root / "book.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    out = root / "run"
    recipe_for(corpus).run(out, console=quiet())
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    blocks = datasets.load_from_disk(str(out / "data" / "blocks"))
    stats = json.loads((out / "data" / "stats.json").read_text())
    return {"out": out, "corpus_text": corpus_text, "tok": tok, "blocks": blocks, "stats": stats}


def independent_stream(tok, docs: list[str]) -> np.ndarray:
    """Each document's token ids followed by EOS, concatenated: packing's input, computed here."""
    ids: list[int] = []
    for doc in docs:
        ids += tok.encode(doc, add_special_tokens=False) + [tok.eos_token_id]
    return np.asarray(ids, dtype=np.int64)


# --- the train/validation split -----------------------------------------------------------------


def test_split_is_by_document_and_deterministic_for_a_seed(corpus_file, corpus_text, tmp_path):
    recipe = recipe_for(corpus_file)
    run_data_stage(recipe, tmp_path / "a")
    run_data_stage(recipe_for(corpus_file), tmp_path / "b")
    a, b = splits(tmp_path / "a"), splits(tmp_path / "b")
    assert a == b
    # every paragraph lands in exactly one split, whole
    assert sorted(a["train"] + a["validation"]) == sorted(paragraphs(corpus_text))
    assert not set(a["train"]) & set(a["validation"])
    n = len(paragraphs(corpus_text))
    assert len(a["validation"]) == pytest.approx(0.1 * n, abs=1)


def test_another_seed_gives_another_split(corpus_file, tmp_path):
    run_data_stage(recipe_for(corpus_file), tmp_path / "a")
    other = recipe_for(corpus_file)
    other.data.seed = 8
    run_data_stage(other, tmp_path / "b")
    a, b = splits(tmp_path / "a"), splits(tmp_path / "b")
    assert sorted(a["validation"]) != sorted(b["validation"])
    assert sorted(a["train"] + a["validation"]) == sorted(b["train"] + b["validation"])


# --- stats.json -------------------------------------------------------------------------------------


def test_stats_json_counts_documents_words_characters_per_split(finished):
    out, stats = finished["out"], finished["stats"]
    docs = splits(out)
    for name in ("train", "validation"):
        assert stats["documents"][name] == {
            "documents": len(docs[name]),
            "words": sum(len(d.split()) for d in docs[name]),
            "characters": sum(len(d) for d in docs[name]),
        }
    assert stats["documents"]["empty_documents_dropped"] == 0
    words = stats["documents"]["train"]["words"] + stats["documents"]["validation"]["words"]
    assert words == len(finished["corpus_text"].split())


def test_stats_json_block_stats(finished):
    stats = finished["stats"]["blocks"]
    assert stats["context_length"] == T
    assert stats["vocab_size"] == len(finished["tok"]) == 400
    for name in ("train", "validation"):
        s = stats[name]
        assert s["blocks"] == len(finished["blocks"][name]) > 0
        assert s["blocks"] * T + s["dropped_tokens"] == s["tokens"]
        assert 0 <= s["dropped_tokens"] < T
    total_tokens = stats["train"]["tokens"] + stats["validation"]["tokens"]
    total_words = sum(finished["stats"]["documents"][n]["words"] for n in ("train", "validation"))
    assert stats["tokens_per_word"] == round(total_tokens / total_words, 3)
    assert 1.0 < stats["tokens_per_word"] < 5.0
    assert 1.0 < stats["validation"]["unigram_perplexity"] < 400


# --- packed blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "validation"])
def test_blocks_are_documents_joined_by_eos_in_order(finished, split):
    tok = finished["tok"]
    docs = splits(finished["out"])[split]
    blocks = np.asarray(finished["blocks"][split]["input_ids"])
    assert blocks.ndim == 2 and blocks.shape[1] == T

    stream = independent_stream(tok, docs)
    n = blocks.shape[0]
    s = finished["stats"]["blocks"][split]
    assert s["tokens"] == len(stream)
    assert n == len(stream) // T
    assert s["dropped_tokens"] == len(stream) - n * T
    assert np.array_equal(blocks.ravel(), stream[: n * T])

    eos = tok.eos_token_id
    assert eos == tok.convert_tokens_to_ids(EOS)
    # one EOS after every document; the ones in the dropped remainder are not in any block
    assert (blocks == eos).sum() + (stream[n * T :] == eos).sum() == len(docs)
    assert not (blocks == tok.pad_token_id).any()

    # decoded, the blocks are the documents joined (and ended) by the EOS token
    decoded = tok.decode(blocks.ravel().tolist(), skip_special_tokens=False)
    joined = "".join(d + EOS for d in docs)
    assert joined.startswith(decoded)
    assert len(decoded) > len(joined) - 4 * T
    assert decoded.split(EOS)[0] == docs[0]


def test_worker_processes_give_the_same_blocks_and_stats(finished, tmp_path):
    """data.num_proc: 2 tokenizes in datasets.map workers; the blocks and every count equal one process's."""
    corpus = tmp_path / "book.txt"
    corpus.write_text(finished["corpus_text"], encoding="utf-8")
    out = tmp_path / "run"
    recipe = recipe_for(corpus)
    recipe.data.num_proc = 2
    recipe.run(out, until="model", console=quiet())  # the model stage packs the blocks (tokens per parameter)
    blocks = datasets.load_from_disk(str(out / "data" / "blocks"))
    for split in ("train", "validation"):
        assert np.array_equal(
            np.asarray(blocks[split]["input_ids"]), np.asarray(finished["blocks"][split]["input_ids"])
        )
    stats = json.loads((out / "data" / "stats.json").read_text())["blocks"]
    expected = finished["stats"]["blocks"]
    # the unigram perplexity is summed over other batch boundaries: equal to rounding
    assert stats["validation"].pop("unigram_perplexity") == pytest.approx(
        expected["validation"]["unigram_perplexity"], rel=1e-12
    )
    assert stats == {
        **expected,
        "validation": {k: v for k, v in expected["validation"].items() if k != "unigram_perplexity"},
    }


def test_unigram_perplexity_matches_an_independent_computation(finished):
    tok = finished["tok"]
    docs = splits(finished["out"])
    counts = np.bincount(independent_stream(tok, docs["train"]), minlength=len(tok)).astype(np.float64)
    probs = (counts + 1.0) / (counts.sum() + len(tok))
    val = np.asarray(finished["blocks"]["validation"]["input_ids"], dtype=np.int64)
    targets = val[:, 1:].ravel()  # a block's first token is never predicted
    expected = float(np.exp(-np.mean(np.log(probs[targets]))))
    assert finished["stats"]["blocks"]["validation"]["unigram_perplexity"] == pytest.approx(expected, rel=1e-9)
    # sanity of the measure itself: counting the first tokens too gives a different number
    with_first = float(np.exp(-np.mean(np.log(probs[val.ravel()]))))
    assert with_first != pytest.approx(expected, rel=1e-9)


# --- empty documents and caps ---------------------------------------------------------------------


def test_empty_documents_are_dropped_and_counted(tmp_path):
    corpus = tmp_path / "c.txt"
    kept = [f"Paragraph number {i} has a few words." for i in range(10)]
    corpus.write_text("\n\n\n\n".join(kept[:5]) + "\n\n   \n\n" + "\n\n".join(kept[5:]) + "\n\n", encoding="utf-8")
    # "\n\n\n\n" between the first five gives four empty paragraphs, "   " one more, the trailing "\n\n" one
    stats = run_data_stage(
        recipe_for(corpus, data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph"}), tmp_path / "r"
    )
    assert stats["empty_documents_dropped"] == 6
    docs = splits(tmp_path / "r")
    assert sorted(docs["train"] + docs["validation"]) == sorted(kept)
    written = json.loads((tmp_path / "r" / "data" / "stats.json").read_text())
    assert written["documents"]["empty_documents_dropped"] == 6


def test_all_empty_file_is_a_data_error_naming_the_path(tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n\n   \n\n\t\n\n", encoding="utf-8")
    recipe = recipe_for(corpus, data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph"})
    with pytest.raises(DataError, match="no non-empty document") as info:
        recipe.run(tmp_path / "run", console=quiet())
    assert str(corpus) in str(info.value)
    assert not (tmp_path / "run" / "data" / "documents").exists()


def test_max_documents_caps_the_documents_in_file_order(tmp_path):
    corpus = tmp_path / "c.txt"
    paras = [f"Document {i} says something." for i in range(30)]
    corpus.write_text("\n\n".join(paras[:3]) + "\n\n\n\n" + "\n\n".join(paras[3:]), encoding="utf-8")
    cfg = DataConfig(source="text", path=str(corpus), documents="paragraph", max_documents=10)
    docs, _ = read(cfg, tmp_path)
    assert list(docs["text"]) == paras[:10]  # the empty paragraph is not one of the ten

    recipe = recipe_for(
        corpus, data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph", "max_documents": 10}
    )
    stats = run_data_stage(recipe, tmp_path / "r")
    assert stats["train"]["documents"] + stats["validation"]["documents"] == 10
    got = splits(tmp_path / "r")
    assert sorted(got["train"] + got["validation"]) == sorted(paras[:10])


# --- val_fraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_outside_zero_one_is_a_config_error(corpus_file, tmp_path, fraction):
    recipe = recipe_for(corpus_file)
    recipe.data.val_fraction = float(fraction)
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        recipe.run(tmp_path / "run", console=quiet())
    assert not (tmp_path / "run" / "data" / "documents").exists()


@pytest.mark.parametrize(("n_docs", "fraction"), [(1, 0.5), (1, 0.05), (4, 0.9)])
def test_too_few_documents_for_a_whole_one_hold_out_every_documents_tail(tmp_path, n_docs, fraction):
    # Before, these emptied the training split (a ConfigError): one document cannot be split by document.
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Only document {i} is here, with a few more words." for i in range(n_docs)))
    recipe = recipe_for(
        corpus,
        data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph", "val_fraction": fraction},
    )
    stats = run_data_stage(recipe, tmp_path / "r")
    assert stats["held_out"] == "tails"
    assert stats["train"]["documents"] == stats["validation"]["documents"] == n_docs
    assert fraction / 1.5 <= stats["validation_share"] <= fraction * 1.5


def test_val_fraction_too_small_for_validation_says_to_raise_it(tmp_path):
    # 0.001 of these short documents is a single validation document: less than one block of
    # validation data. The run must stop with an llmforge error that says to raise val_fraction.
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Line {i} of a corpus of short lines." for i in range(1000)), encoding="utf-8")
    recipe = recipe_for(
        corpus,
        data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph", "val_fraction": 0.001, "seed": 1},
    )
    with pytest.raises((ConfigError, DataError), match=r"(?i)raise data\.val_fraction"):
        recipe.run(tmp_path / "run", console=quiet())
    assert not (tmp_path / "run" / "train" / "final").exists()
    # the blocks being built when it stopped are not left behind, nor their scratch files
    assert not (tmp_path / "run" / "data" / "blocks").exists()
    assert leftovers(tmp_path / "run" / "data") == []
    assert (tmp_path / "run" / "data" / "documents" / ".llmforge.json").is_file()


# --- other sources ---------------------------------------------------------------------------------


def test_jsonl_source_with_text_column(tmp_path):
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [{"id": i, "body": f"Body of document {i}.", "title": f"T{i}"} for i in range(8)]
        + [{"id": 8, "body": "", "title": "empty"}, {"id": 9, "body": None, "title": "null"}],
    )
    docs, count = read(DataConfig(source="jsonl", path=str(path), text_column="body"), tmp_path)
    assert docs.column_names == ["text"]
    assert list(docs["text"]) == [f"Body of document {i}." for i in range(8)]
    assert count.empty == 2


def test_jsonl_missing_text_column_lists_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "x", "title": "y"}])
    with pytest.raises(DataError, match=r"'content'.*data\.text_column.*body, title") as info:
        read(DataConfig(source="jsonl", path=str(path), text_column="content"), tmp_path)
    assert str(path) in str(info.value)


def hub_cfg(path: Path, tmp_path: Path, **kw: object) -> DataConfig:
    return DataConfig(
        source="hub", name="json", data_files=str(path), options={"cache_dir": str(tmp_path / "hf-cache")}, **kw
    )


def test_hub_source_reads_a_local_builder(tmp_path):
    rows = [{"text": f"Hub document {i}.", "n": i} for i in range(6)] + [{"text": "  ", "n": 6}]
    path = write_jsonl(tmp_path / "hub.jsonl", rows)
    docs, count = read(hub_cfg(path, tmp_path), tmp_path)
    assert list(docs["text"]) == [f"Hub document {i}." for i in range(6)]
    assert count.empty == 1


def test_hub_source_missing_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "hub.jsonl", [{"body": "a", "n": 1}])
    with pytest.raises(DataError, match=r"no column 'text' \(data\.text_column\)\. Its columns: body, n"):
        read(hub_cfg(path, tmp_path), tmp_path)


def test_hub_source_streaming_with_max_documents(tmp_path):
    path = write_jsonl(tmp_path / "hub.jsonl", [{"text": f"Streamed {i}."} for i in range(50)])
    docs, _ = read(hub_cfg(path, tmp_path, streaming=True, max_documents=5), tmp_path)
    assert isinstance(docs, datasets.Dataset)
    assert list(docs["text"]) == [f"Streamed {i}." for i in range(5)]
    eager, _ = read(hub_cfg(path, tmp_path, max_documents=5), tmp_path)
    assert list(eager["text"]) == list(docs["text"])


def test_hub_source_through_a_recipe(tmp_path):
    path = write_jsonl(tmp_path / "hub.jsonl", [{"text": f"Recipe document number {i}."} for i in range(20)])
    recipe = recipe_for(
        tmp_path,
        data_cfg={
            "source": "hub",
            "name": "json",
            "data_files": str(path),
            "val_fraction": 0.2,
            "options": {"cache_dir": str(tmp_path / "hf-cache")},
        },
    )
    stats = run_data_stage(recipe, tmp_path / "r")
    assert (stats["train"]["documents"], stats["validation"]["documents"]) == (16, 4)


# --- reruns and failures ---------------------------------------------------------------------------


def manifest(directory: Path) -> dict:
    return json.loads((directory / ".llmforge.json").read_text())


def test_editing_the_input_file_reruns_the_data_stage(corpus_file, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_for(corpus_file)
    recipe.run(out, console=quiet())
    first = manifest(out / "data" / "documents")
    n_docs = first["info"]["train"]["documents"] + first["info"]["validation"]["documents"]

    recipe.run(out, console=quiet())  # unchanged input: skipped, not rewritten
    assert manifest(out / "data" / "documents") == first

    with corpus_file.open("a", encoding="utf-8") as fh:
        fh.write("\n\nA brand new closing paragraph, added after the first run.")
    recipe.run(out, console=quiet())
    second = manifest(out / "data" / "documents")
    assert second["fingerprint"] != first["fingerprint"]
    assert second["info"]["train"]["documents"] + second["info"]["validation"]["documents"] == n_docs + 1
    texts = splits(out)
    assert "A brand new closing paragraph, added after the first run." in texts["train"] + texts["validation"]
    stats = json.loads((out / "data" / "stats.json").read_text())
    assert stats["documents"]["train"] == second["info"]["train"]


def test_only_data_runs_just_the_data_stage(corpus_file, tmp_path):
    # `--only data` reruns one stage whose earlier stages (none) are done; the later stages are not needed
    out = tmp_path / "run"
    recipe_for(corpus_file).run(out, only="data", console=quiet())
    assert (out / "data" / "documents" / ".llmforge.json").is_file()
    assert not (out / "tokenizer").exists()


def test_failing_source_leaves_no_documents_dir(tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n\n\n", encoding="utf-8")
    out = tmp_path / "run"
    with pytest.raises(DataError):
        recipe_for(corpus, data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph"}).run(
            out, console=quiet()
        )
    assert not (out / "data" / "documents").exists()
    assert leftovers(out / "data") == [] and leftovers(out) == []


def test_failure_while_saving_leaves_no_partial_dir(corpus_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = datasets.DatasetDict.save_to_disk

    def half_save(self, path, *args, **kwargs):
        Path(path, "half-written.arrow").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", half_save)
    with pytest.raises(RuntimeError, match="disk full"):
        recipe_for(corpus_file).run(out, console=quiet())
    assert not out.exists()  # the run dir it created held nothing a rerun could use: removed, lock and all

    # the next run starts clean and completes the stage
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", original)
    run_data_stage(recipe_for(corpus_file), out)
    assert (out / "data" / "documents" / ".llmforge.json").is_file()
    assert not (out / "data" / "documents" / "half-written.arrow").exists()


def test_held_out_documents_are_a_seeded_draw_without_repeats():
    a = documents.held_out_documents(10_000, 50, seed=7)
    assert len(a) == 50 and len(set(a.tolist())) == 50
    assert (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < 10_000
    assert (a == documents.held_out_documents(10_000, 50, seed=7)).all()
    assert not (a == documents.held_out_documents(10_000, 50, seed=8)).all()


def test_training_documents_keep_the_source_order(tmp_path):
    corpus = tmp_path / "c.txt"
    paras = [f"Paragraph {i} of the ordered corpus." for i in range(200)]
    corpus.write_text("\n\n".join(paras), encoding="utf-8")
    run_data_stage(
        recipe_for(corpus, data_cfg={"source": "text", "path": str(corpus), "documents": "paragraph"}), tmp_path / "r"
    )
    docs = splits(tmp_path / "r")
    assert len(docs["validation"]) == 20
    assert docs["train"] == [p for p in paras if p not in docs["validation"]]
    assert docs["validation"] == [p for p in paras if p in docs["validation"]]


@pytest.mark.parametrize("n_docs", [1, 6, 10_000])
def test_the_validation_share_is_what_was_asked_for_few_or_many_documents(tmp_path, corpus_text, n_docs):
    """Six novels with val_fraction 0.05 used to hold out one novel (20% of the text); one file, none."""
    text = corpus_text * 3 if n_docs < 10 else corpus_text
    if n_docs < 10:
        files = tmp_path / "books"
        files.mkdir()
        size = len(text) // n_docs
        for i in range(n_docs):  # novels of unequal length, as real ones are
            (files / f"book{i}.txt").write_text(text[i * size : (i + 1) * size - i * size // 10])
        cfg = {"source": "text", "path": str(files), "documents": "file", "val_fraction": 0.05}
    else:
        path = tmp_path / "docs.jsonl"
        words = text.split()
        path.write_text("".join(json.dumps({"text": " ".join(words[i % 5000 : i % 5000 + 3 + i % 40])}) + "\n"
                                for i in range(n_docs)))  # fmt: skip
        cfg = {"source": "jsonl", "path": str(path), "val_fraction": 0.05}
    stats = run_data_stage(recipe_for(tmp_path / "unused.txt", data_cfg=cfg), tmp_path / "run")
    share = stats["validation_share"]
    assert 0.05 / 1.5 <= share <= 0.05 * 1.5, stats
    assert stats["held_out"] == ("tails" if n_docs < 10 else "documents")
    if n_docs < 10:  # every document's tail is validation text, never trained on
        ds = datasets.load_from_disk(str(tmp_path / "run" / "data" / "documents"))
        train, val = ds["train"]["text"], ds["validation"]["text"]
        assert len(train) == len(val) == n_docs
        books = [(files / f"book{i}.txt").read_text() for i in range(n_docs)]
        assert sorted(h + t for h, t in zip(train, val, strict=True)) == sorted(books)  # head, then tail


def test_cut_tail_keeps_lines_whole():
    head, tail = documents.cut_tail("one line\ntwo line\nthree line\nfour line\n" * 5, 0.1)
    assert head.endswith("\n") and head + tail == "one line\ntwo line\nthree line\nfour line\n" * 5
    assert 0.05 < len(tail) / (len(head) + len(tail)) < 0.2


def test_a_seeded_draw_that_misses_the_share_is_replaced_by_documents_that_fit():
    lengths = np.array([10] * 95 + [1000] * 5, dtype=np.int32)  # a draw of five may catch a giant
    for seed in range(20):
        split = documents.held_out(lengths, 0.05, seed)
        share = lengths[split.documents].sum() / lengths.sum()
        assert split.how == "documents" and 0.05 / 1.5 <= share <= 0.05 * 1.5
