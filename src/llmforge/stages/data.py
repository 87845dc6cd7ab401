"""Data stage: read documents through a data-source plugin, validate them, split by document.

`blocks(ctx)` then tokenizes the documents with the recipe's tokenizer and packs them into
`context_length` blocks (documents joined by EOS, no padding), cached as Arrow in `data/blocks/`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmforge import rundir
from llmforge.config import DataConfig
from llmforge.context import Context
from llmforge.errors import ConfigError, DataError

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
    if cfg.path:
        inputs = _input_stats(cfg)
    elif cfg.data_files:  # a hub builder over local files: editing them reruns the stage
        files = [cfg.data_files] if isinstance(cfg.data_files, str) else cfg.data_files
        if isinstance(files, dict):
            files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
        inputs = rundir.file_stats([Path(f) for f in files if Path(f).is_file()])
    return rundir.fingerprint("data", vars(cfg), inputs)


def run(ctx: Context) -> dict[str, Any]:
    cfg: DataConfig = ctx.recipe.data
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}.")
    docs = read_documents(cfg, ctx)
    n_val = math.ceil(cfg.val_fraction * len(docs))  # datasets rounds the held-out share up
    if n_val >= len(docs):
        raise ConfigError(
            f"data.val_fraction {cfg.val_fraction} of {len(docs)} documents leaves no training document. "
            "Lower data.val_fraction, add data, or split files into paragraphs (data.documents: paragraph)."
        )
    split = docs.train_test_split(test_size=n_val, seed=cfg.seed, shuffle=True)
    splits = datasets.DatasetDict(train=split["train"], validation=split["test"])
    stats = {name: _text_stats(ds) for name, ds in splits.items()}
    stats["empty_documents_dropped"] = ctx.cache.pop("empty_documents", 0)
    with rundir.atomic_dir(ctx.path("data", "documents"), ctx.fingerprints["data"], stats) as tmp:
        splits.save_to_disk(str(tmp))
    rundir.write_json(ctx.path("data", "stats.json"), {"documents": stats})
    ctx.console.print(
        f"  {stats['train']['documents']:,} training and {stats['validation']['documents']:,} validation "
        f"documents, {stats['train']['words'] + stats['validation']['words']:,} words"
        + (f" ({stats['empty_documents_dropped']} empty dropped)" if stats["empty_documents_dropped"] else "")
    )
    return stats


def read_documents(cfg: DataConfig, ctx: Context) -> datasets.Dataset:
    """The source's documents as a one-column ('text') Dataset without empty documents."""
    if cfg.text_column is None:
        raise ConfigError("data.text_column is null, but pretraining reads one text column: name it (e.g. text).")
    load = ctx.plugins.data_source(cfg.source)
    ds = load(cfg)
    if isinstance(ds, datasets.IterableDataset):
        ds = _materialise(ds, cfg)
    if not isinstance(ds, datasets.Dataset):
        raise DataError(
            f"Data source '{cfg.source}' ({ctx.plugins.registries['data_source'].owner(cfg.source)}) returned "
            f"a {type(ds).__name__}; a data source must return a datasets.Dataset or IterableDataset."
        )
    where = cfg.path or cfg.name or cfg.source
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
    ds = ds.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    before = len(ds)
    ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
    ctx.cache["empty_documents"] = before - len(ds)
    if len(ds) == 0:
        raise DataError(
            f"{where} holds no non-empty document ({before} empty). Check data.path, data.text_column "
            "and data.documents."
        )
    if cfg.max_documents is not None:
        ds = ds.select(range(min(cfg.max_documents, len(ds))))
    return ds


def _materialise(stream: datasets.IterableDataset, cfg: DataConfig) -> datasets.Dataset:
    if cfg.max_documents is not None:
        stream = stream.take(cfg.max_documents)
    rows = [{cfg.text_column: row.get(cfg.text_column)} for row in stream] if cfg.max_documents else None
    if rows is not None:
        return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({cfg.text_column: []})

    def gen(stream: datasets.IterableDataset = stream, col: str = cfg.text_column):
        for row in stream:
            yield {col: row.get(col)}

    return datasets.Dataset.from_generator(gen)


def _text_stats(ds: datasets.Dataset) -> dict[str, int]:
    words = chars = 0
    for batch in ds.iter(batch_size=2048):
        for t in batch["text"]:
            words += len(t.split())
            chars += len(t)
    return {"documents": len(ds), "words": words, "characters": chars}


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
            splits = {}
            for name, ds in docs.items():
                task = progress.add_task(f"tokenizing {name}", total=len(ds))
                packer = Packer(T)
                path = scratch / f"{name}.arrow"
                schema = pa.schema([("input_ids", pa.list_(pa.int32(), T))])
                nll, targets = 0.0, 0
                with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                    for ids, n_docs in token_batches(ds, tok, num_proc, scratch / f"{name}-map.arrow"):
                        blocks = packer.add(ids, tok.eos_token_id)
                        if name == "train":
                            train_counts += np.bincount(np.concatenate(ids), minlength=len(tok))
                            train_counts[tok.eos_token_id] += len(ids)
                        elif len(blocks):
                            nll, targets = _unigram_nll(train_counts, blocks, nll, targets)
                        if len(blocks):
                            flat = pa.array(blocks.ravel(), type=pa.int32())
                            column = pa.FixedSizeListArray.from_arrays(flat, T)
                            writer.write_batch(pa.record_batch([column], schema=schema))
                        progress.update(task, advance=n_docs)
                if packer.blocks == 0:
                    raise DataError(
                        f"The {name} split has {packer.tokens} tokens, fewer than one block of "
                        f"model.context_length={T}. Add data, raise data.val_fraction, or lower model.context_length."
                    )
                splits[name] = datasets.Dataset.from_file(str(path))
                stats[name] = {"tokens": packer.tokens, "blocks": packer.blocks, "dropped_tokens": len(packer.carry)}
                if name == "validation":
                    stats[name]["unigram_perplexity"] = float(np.exp(nll / max(targets, 1)))
            words = sum(s["words"] for s in doc_stats.values() if isinstance(s, dict))
            tokens = sum(stats[name]["tokens"] for name in docs)
            stats["tokens_per_word"] = round(tokens / max(words, 1), 3)
            datasets.DatasetDict(splits).save_to_disk(str(tmp))
            del splits
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rundir.write_json(ctx.path("data", "stats.json"), {"documents": doc_stats, "blocks": stats})


class Packer:
    """Concatenate documents (each followed by EOS) and cut full blocks; the remainder carries over."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.carry = np.zeros(0, dtype=np.int32)
        self.tokens = 0
        self.blocks = 0

    def add(self, docs: list[np.ndarray], eos: int) -> np.ndarray:
        parts = [self.carry]
        for ids in docs:
            parts += [ids, np.array([eos], dtype=np.int32)]
        flat = np.concatenate(parts).astype(np.int32, copy=False)
        self.tokens += len(flat) - len(self.carry)
        n = len(flat) // self.T
        self.carry = flat[n * self.T :].copy()
        self.blocks += n
        return flat[: n * self.T].reshape(n, self.T)


def token_batches(ds: datasets.Dataset, tok: Any, num_proc: int, cache: Path) -> Any:
    """Yield (token id arrays without EOS, documents in batch): in process, or with `num_proc` workers."""
    backend = tok.backend_tokenizer
    if num_proc <= 1:
        for batch in ds.iter(batch_size=1000):
            encodings = backend.encode_batch(batch["text"], add_special_tokens=False)
            yield [np.asarray(e.ids, dtype=np.int32) for e in encodings], len(encodings)
        return

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"input_ids": [e.ids for e in backend.encode_batch(batch["text"], add_special_tokens=False)]}

    mapped = ds.map(
        encode, batched=True, batch_size=1000, num_proc=num_proc, remove_columns=["text"], cache_file_name=str(cache)
    )
    for batch in mapped.with_format("numpy").iter(batch_size=1000):
        ids = [np.asarray(x, dtype=np.int32) for x in batch["input_ids"]]
        yield ids, len(ids)


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
