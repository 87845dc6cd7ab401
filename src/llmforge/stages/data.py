"""Data stage: read documents through a data-source plugin, validate them, split by document.

`blocks(ctx)` then tokenizes the documents with the recipe's tokenizer and packs them into
`context_length` blocks (documents joined by EOS, no padding), cached as Arrow in `data/blocks/`.

With `data.streaming: true` the stage reads only the head of the stream: the first
`data.val_documents` rows are the validation documents, the next rows (`tokenizer.max_documents`,
default 10,000) a sample the tokenizer is trained on. Training then reads the stream itself from
row `val_documents` on (llmforge.streaming), so nothing of the corpus is copied to disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmforge import arrowio, rundir, tokenstore
from llmforge.config import DataConfig
from llmforge.context import Context
from llmforge.errors import ConfigError, DataError
from llmforge.packer import Packer, block_writer, encode_joined

ARTEFACT = "data/documents"


def enabled(recipe: Any) -> bool:
    return recipe.data is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    if "train" not in out:
        return ""
    return f"{out['train']['documents']:,} train / {out['validation']['documents']:,} val documents"


def fingerprint(ctx: Context) -> str:
    cfg: DataConfig = ctx.recipe.data
    inputs: Any = None
    if cfg.source == "token_store":
        inputs = tokenstore.fingerprint(cfg.path)
    elif cfg.path:
        inputs = _input_stats(cfg)
    elif cfg.data_files:  # a hub builder over local files: editing them reruns the stage
        files = [cfg.data_files] if isinstance(cfg.data_files, str) else cfg.data_files
        if isinstance(files, dict):
            files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
        inputs = rundir.file_stats([Path(f) for f in files if Path(f).is_file()])
    return rundir.fingerprint("data", vars(cfg), inputs)


def run(ctx: Context) -> dict[str, Any]:
    cfg: DataConfig = ctx.recipe.data
    shutil.rmtree(ctx.path("data", SOURCE_CACHE), ignore_errors=True)  # never reuse a killed run's copy
    if cfg.source == "token_store":
        return tokenstore.check_recipe(ctx)
    if cfg.streaming:
        return _run_streaming(ctx, cfg)
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}.")
    source = read_documents(cfg, ctx)
    count = DocumentCount()
    for _ in document_batches(source, cfg, count):  # first pass: how many documents there are
        pass
    n_val = math.ceil(cfg.val_fraction * count.kept)  # the held-out share is rounded up
    if n_val >= count.kept:
        raise ConfigError(
            f"data.val_fraction {cfg.val_fraction} of {count.kept} documents leaves no training document. "
            "Lower data.val_fraction, add data, or split files into paragraphs (data.documents: paragraph)."
        )
    held_out = held_out_documents(count.kept, n_val, cfg.seed)
    stats: dict[str, Any] = {"empty_documents_dropped": count.empty}
    with rundir.atomic_dir(ctx.path("data", "documents"), ctx.fingerprints["data"], stats) as tmp:
        stats.update(_write_splits(source, cfg, held_out, tmp))
    shutil.rmtree(ctx.path("data", SOURCE_CACHE), ignore_errors=True)  # documents/ holds the copy now
    rundir.write_json(ctx.path("data", "stats.json"), {"documents": stats})
    ctx.console.print(
        f"  {stats['train']['documents']:,} training and {stats['validation']['documents']:,} validation "
        f"documents, {stats['train']['words'] + stats['validation']['words']:,} words"
        + (f" ({stats['empty_documents_dropped']} empty dropped)" if stats["empty_documents_dropped"] else "")
    )
    return stats


@dataclasses.dataclass
class DocumentCount:
    """What a pass of `document_batches` saw: documents kept and empty ones dropped."""

    kept: int = 0
    empty: int = 0


def document_batches(ds: datasets.Dataset, cfg: DataConfig, count: DocumentCount | None = None) -> Any:
    """Batches of the non-empty documents of `read_documents`' dataset in source order, at most
    `data.max_documents` of them, read with bounded memory (llmforge.arrowio)."""
    count = count or DocumentCount()
    for texts in arrowio.column_batches(ds, "text"):
        docs = [t for t in texts if t and t.strip()]
        count.empty += len(texts) - len(docs)
        if cfg.max_documents is not None:
            docs = docs[: cfg.max_documents - count.kept]
        count.kept += len(docs)
        yield docs
        if cfg.max_documents is not None and count.kept >= cfg.max_documents:
            break
    if count.kept == 0:
        raise DataError(
            f"{where_of(cfg)} holds no non-empty document ({count.empty} empty). Check data.path, data.text_column "
            "and data.documents."
        )


def held_out_documents(n: int, n_val: int, seed: int) -> np.ndarray:
    """The sorted positions (among the n kept documents) of the n_val validation documents: a seeded draw."""
    return np.sort(np.random.default_rng(seed).choice(n, size=n_val, replace=False))


def _write_splits(source: datasets.Dataset, cfg: DataConfig, held_out: np.ndarray, out: Path) -> dict[str, Any]:
    """Second pass: each document to train or validation in source order, written as it is read."""
    files = {"train": out / ".train.arrow", "validation": out / ".validation.arrow"}
    stats = {name: {"documents": 0, "words": 0, "characters": 0} for name in files}
    position = 0
    with contextlib.ExitStack() as stack:
        write = {name: stack.enter_context(arrowio.column_writer(f, "text", pa.string())) for name, f in files.items()}
        for docs in document_batches(source, cfg):
            lo, hi = np.searchsorted(held_out, [position, position + len(docs)])
            is_val = np.zeros(len(docs), dtype=bool)
            is_val[held_out[lo:hi] - position] = True
            position += len(docs)
            for name, chosen in (("train", ~is_val), ("validation", is_val)):
                part = [d for d, c in zip(docs, chosen, strict=True) if c]
                write[name](pa.array(part, type=pa.string()))
                for key, value in _text_stats(part).items():
                    stats[name][key] += value
    arrowio.save_dataset_dict(out, files)
    return stats


def read_documents(cfg: DataConfig, ctx: Context) -> datasets.Dataset:
    """The source's rows as a one-column ('text') Dataset, the column checked; empty documents are still
    in it (`document_batches` drops them)."""
    if cfg.text_column is None:
        raise ConfigError("data.text_column is null, but pretraining reads one text column: name it (e.g. text).")
    ds = _load_source(cfg, ctx)
    if hasattr(ds, "stream_batches"):  # a plugin's own stream (e.g. Deep Lake): read it batch by batch
        ds = _materialise_stream(ds, cfg, ctx)
    if isinstance(ds, datasets.IterableDataset):
        ds = _materialise(ds, cfg, ctx)
    if not isinstance(ds, datasets.Dataset):
        raise DataError(
            f"Data source '{cfg.source}' ({ctx.plugins.registries['data_source'].owner(cfg.source)}) returned "
            f"a {type(ds).__name__}; a data source must return a datasets.Dataset or IterableDataset."
        )
    _check_text_column(ds, cfg)
    ds = ds.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    return ds


SOURCE_CACHE = "source-cache"  # a source's Arrow copy of a large corpus (arrowio.write_texts), in data/
TOKENIZER_SAMPLE = 10_000  # streaming: documents after the validation rows the tokenizer is trained on


def _load_source(cfg: DataConfig, ctx: Context) -> Any:
    """Call the data-source plugin; one that accepts `cache_dir` gets a directory inside the run dir."""
    import inspect

    load = ctx.plugins.data_source(cfg.source)
    try:
        takes_cache = "cache_dir" in inspect.signature(load).parameters
    except (TypeError, ValueError):
        takes_cache = False
    if takes_cache:
        return load(cfg, cache_dir=str(ctx.path("data", SOURCE_CACHE)))
    return load(cfg)


def open_stream(cfg: DataConfig, ctx: Context) -> Any:
    """The source as a DocumentStream (llmforge.streaming), its text column checked where it can be."""
    from llmforge.streaming import as_stream

    if cfg.text_column is None:
        raise ConfigError("data.text_column is null, but pretraining reads one text column: name it (e.g. text).")
    ds = _load_source(cfg, ctx)
    if isinstance(ds, datasets.Dataset):
        _check_text_column(ds, cfg)
    elif not hasattr(ds, "stream_batches") and not isinstance(ds, datasets.IterableDataset):
        raise DataError(
            f"Data source '{cfg.source}' returned a {type(ds).__name__}; a data source must return a "
            "datasets.Dataset or IterableDataset (or an object with stream_batches)."
        )
    return as_stream(ds, cfg.text_column)


def where_of(cfg: DataConfig) -> str:
    return str(cfg.path or cfg.name or cfg.source)


def _run_streaming(ctx: Context, cfg: DataConfig) -> dict[str, Any]:
    """Read the head of the stream: validation rows, then the tokenizer's sample. Bounded memory."""
    from llmforge.streaming import DOC_BATCH, clean_documents

    V = cfg.val_documents
    if V < 1:
        raise ConfigError(f"data.val_documents must be at least 1 with data.streaming, got {V}.")
    tok_cfg = ctx.recipe.tokenizer
    sample = (tok_cfg.max_documents if tok_cfg is not None and tok_cfg.max_documents else None) or TOKENIZER_SAMPLE
    limit = V + sample if cfg.max_documents is None else min(V + sample, cfg.max_documents)
    where = where_of(cfg)
    stream = open_stream(cfg, ctx)
    val: list[str] = []
    train: list[str] = []
    rows = 0
    for texts, _ in stream.stream_batches(None, DOC_BATCH, 0, limit):
        head, tail = texts[: max(0, V - rows)], texts[max(0, V - rows) :]
        val += clean_documents(head, where, cfg.text_column)
        train += clean_documents(tail, where, cfg.text_column)
        rows += len(texts)
    if not val:
        raise DataError(
            f"The first {V} rows of {where} (data.val_documents) hold no non-empty document"
            f"{' (the stream is empty)' if rows == 0 else ''}. Check data.path/name and data.text_column."
        )
    if not train:
        raise DataError(
            f"{where} holds no document after its first {V} rows, which are the validation set: nothing is left "
            "to train on. Lower data.val_documents or add data."
        )
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": train}), validation=datasets.Dataset.from_dict({"text": val})
    )
    stats: dict[str, Any] = {"train": _text_stats(train), "validation": _text_stats(val)}
    stats["empty_documents_dropped"] = rows - len(train) - len(val)
    stats["streaming"] = {"validation_rows": min(V, rows), "tokenizer_sample_rows": max(0, rows - V)}
    with rundir.atomic_dir(ctx.path("data", "documents"), ctx.fingerprints["data"], stats) as tmp:
        splits.save_to_disk(str(tmp))
    rundir.write_json(ctx.path("data", "stats.json"), {"documents": stats})
    ctx.console.print(
        f"  streaming from {where}: {len(val):,} validation documents (rows 0-{min(V, rows) - 1}) held out; "
        f"{len(train):,} documents after them sampled for the tokenizer; training reads the stream from row {V}"
    )
    return stats


def _materialise_stream(stream: Any, cfg: DataConfig, ctx: Context) -> datasets.Dataset:
    """A plugin's DocumentStream as an on-disk Dataset (bounded memory), capped at max_documents."""
    from llmforge.streaming import DOC_BATCH

    texts = (t for batch, _ in stream.stream_batches(None, DOC_BATCH, 0, cfg.max_documents) for t in batch)
    return arrowio.write_texts(ctx.path("data", SOURCE_CACHE, "stream.arrow"), cfg.text_column, texts)


def _materialise(stream: datasets.IterableDataset, cfg: DataConfig, ctx: Context) -> datasets.Dataset:
    """A streamed hub dataset as an on-disk Dataset (bounded memory), capped at max_documents."""
    if cfg.max_documents is not None:
        stream = stream.take(cfg.max_documents)
    texts = (row.get(cfg.text_column) for row in stream)
    return arrowio.write_texts(ctx.path("data", SOURCE_CACHE, "stream.arrow"), cfg.text_column, texts)


def _check_text_column(ds: datasets.Dataset, cfg: DataConfig) -> None:
    where = where_of(cfg)
    if cfg.text_column not in ds.column_names:
        raise DataError(
            f"{where} has no column '{cfg.text_column}' (data.text_column). Its columns: {', '.join(ds.column_names)}."
        )
    feature = ds.features[cfg.text_column]
    if getattr(feature, "dtype", None) not in ("string", "large_string", "null"):
        raise DataError(
            f"Column '{cfg.text_column}' of {where} holds {feature}, not text. "
            "Set data.text_column to the column with the documents' text."
        )


def _text_stats(texts: list[str]) -> dict[str, int]:
    return {"documents": len(texts), "words": sum(len(t.split()) for t in texts), "characters": sum(map(len, texts))}


def _input_stats(cfg: DataConfig) -> Any:
    """Sizes and times of local input files, so editing the corpus reruns the stage."""
    try:
        from llmforge_sources import expand_paths  # the built-in plugin's path rules
    except ImportError:  # pragma: no cover - the built-in plugins are part of the package
        return cfg.path
    try:
        return rundir.file_stats(
            expand_paths(cfg, {".txt", ".text", ".md", ".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv"})
        )
    except DataError:
        return cfg.path  # the source itself will report the problem


# --- blocks: tokenized and packed training data -------------------------------------------------


def blocks_fingerprint(ctx: Context) -> str:
    return rundir.fingerprint(
        "blocks", ctx.fingerprints["data"], ctx.fingerprints["tokenizer"], ctx.recipe.model.context_length
    )


def blocks(ctx: Context) -> datasets.DatasetDict:
    """Packed `context_length` blocks for train and validation, built once and cached."""
    if "blocks" in ctx.cache:
        return ctx.cache["blocks"]
    if ctx.recipe.data.source == "token_store":  # packed once by `llmforge prepare`, shared by many runs
        dd, info = tokenstore.open_store(ctx.recipe.data.path, ctx.recipe.model.context_length)
        ctx.cache["blocks"], ctx.cache["block_stats"] = dd, info
        return dd
    out = ctx.path("data", "blocks")
    fp = blocks_fingerprint(ctx)
    if not rundir.is_complete(out, fp):
        ctx.console.print(f"  tokenizing and packing into blocks of {ctx.recipe.model.context_length} tokens")
        _build_blocks(ctx, out, fp)
    dd = datasets.load_from_disk(str(out))
    ctx.cache["blocks"] = dd
    ctx.cache["block_stats"] = rundir.read_manifest(out)["info"]
    return dd


def block_stats(ctx: Context) -> dict[str, Any]:
    blocks(ctx)
    return ctx.cache["block_stats"]


def _build_blocks(ctx: Context, out: Path, fp: str) -> None:
    """Tokenize each split batch by batch and stream full blocks to Arrow: memory stays bounded."""
    from llmforge.stages.tokenizer import load_tokenizer

    T = ctx.recipe.model.context_length
    tok = load_tokenizer(ctx)
    docs = datasets.load_from_disk(str(ctx.path("data", "documents")))
    doc_stats = rundir.read_manifest(ctx.path("data", "documents"))["info"]
    num_proc = ctx.recipe.data.num_proc or _default_num_proc(docs)
    stats: dict[str, Any] = {"context_length": T, "vocab_size": len(tok)}
    scratch = out.parent / f".blocks-scratch.tmp-{os.getpid()}"  # map's cache files, never in documents/
    scratch.mkdir(parents=True, exist_ok=True)
    train_counts = np.zeros(len(tok), dtype=np.int64)
    try:
        with rundir.atomic_dir(out, fp, stats) as tmp, _progress(ctx) as progress:
            files = {}
            for name, ds in docs.items():
                task = progress.add_task(f"tokenizing {name}", total=len(ds))
                packer = Packer(T)
                path = tmp / f".{name}.arrow"
                nll, targets = 0.0, 0
                with block_writer(path, T) as write:
                    for joined, n_docs in token_batches(ds, tok, num_proc, scratch / f"{name}-map.arrow"):
                        blocks = packer.add(joined)
                        if name == "train":
                            train_counts += np.bincount(joined, minlength=len(tok))
                        elif len(blocks):
                            nll, targets = _unigram_nll(train_counts, blocks, nll, targets)
                        write(blocks)
                        progress.update(task, advance=n_docs)
                if packer.blocks == 0:
                    raise DataError(
                        f"The {name} split has {packer.tokens} tokens, fewer than one block of "
                        f"model.context_length={T}. Add data, raise data.val_fraction, or lower model.context_length."
                    )
                files[name] = path
                stats[name] = {"tokens": packer.tokens, "blocks": packer.blocks, "dropped_tokens": len(packer.carry)}
                if name == "validation":
                    stats[name]["unigram_perplexity"] = float(np.exp(nll / max(targets, 1)))
            words = sum(s["words"] for s in doc_stats.values() if isinstance(s, dict) and "words" in s)
            tokens = sum(stats[name]["tokens"] for name in docs)
            stats["tokens_per_word"] = round(tokens / max(words, 1), 3)
            arrowio.save_dataset_dict(tmp, files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rundir.write_json(ctx.path("data", "stats.json"), {"documents": doc_stats, "blocks": stats})


def token_batches(ds: datasets.Dataset, tok: Any, num_proc: int, cache: Path) -> Any:
    """Yield (EOS-joined token ids of a batch of documents, documents in it): in process, or with `num_proc` workers."""
    backend, eos = tok.backend_tokenizer, tok.eos_token_id
    if num_proc <= 1:
        for texts in arrowio.column_batches(ds, "text"):
            yield encode_joined(backend, texts, eos), len(texts)
        return

    def encode(batch: dict[str, list[str]]) -> dict[str, list[Any]]:  # one row per batch of documents
        return {"joined": [encode_joined(backend, batch["text"], eos)], "documents": [len(batch["text"])]}

    mapped = ds.map(
        encode, batched=True, batch_size=1000, num_proc=num_proc, remove_columns=["text"], cache_file_name=str(cache)
    )
    documents = list(mapped["documents"])  # one small int per row
    for joined, n_docs in zip(arrowio.column_batches(mapped.with_format("numpy"), "joined", 1), documents, strict=True):
        yield joined[0], int(n_docs)


def _progress(ctx: Context) -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("documents"),
        TimeRemainingColumn(),
        console=ctx.console,
        transient=False,
    )


def _unigram_nll(counts: np.ndarray, blocks: np.ndarray, nll: float, targets: int) -> tuple[float, int]:
    """Add the negative log-likelihood of an add-one unigram model on the positions a model predicts."""
    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    predicted = blocks[:, 1:].ravel()
    return nll - float(logp[predicted].sum()), targets + len(predicted)


def _default_num_proc(docs: datasets.DatasetDict) -> int:
    """Worker processes pay off only on large corpora; the Rust tokenizer already uses threads."""
    size = sum(ds.data.nbytes for ds in docs.values())
    return 1 if size < 64 * 2**20 else min(os.cpu_count() or 1, 8)
