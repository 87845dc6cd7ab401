"""Documents: read a data source's rows, check the text column, split by document into train and validation.

The split is two passes in source order with bounded memory (llmforge.data.arrowio): count the
non-empty documents and their lengths, choose the validation documents (`held_out`: whole documents
holding about `val_fraction` of the characters, or, when the documents are too few and large for that,
the last `val_fraction` of every document), then write each document to its split as it is read.
With `data.streaming: true` only the head of the stream is read: the first `data.val_documents`
rows are the validation documents, the next rows a sample the tokenizer is trained on; training reads
the stream itself (llmforge.data.streaming).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import inspect
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from llmforge import rundir
from llmforge.config.schema import DataConfig
from llmforge.data import arrowio
from llmforge.data.streaming import DOC_BATCH, as_stream, clean_documents
from llmforge.errors import ConfigError, DataError
from llmforge.plugin.types import DataSource

SOURCE_CACHE = "source-cache"  # a source's Arrow copy of a large corpus (arrowio.write_texts), in data/
TOKENIZER_SAMPLE = 10_000  # streaming: documents after the validation rows the tokenizer is trained on


@dataclasses.dataclass
class Source:
    """A data-source plugin bound to its config: what the data stage reads, and where it may cache."""

    config: DataConfig
    plugin: DataSource
    owner: str  # the plugin that registered it, for error messages
    cache_dir: Path

    @property
    def where(self) -> str:
        return where_of(self.config)

    def load(self) -> Any:
        """Call the plugin's load; one that accepts `cache_dir` gets a directory inside the run dir."""
        load = self.plugin.load
        try:
            takes_cache = "cache_dir" in inspect.signature(load).parameters
        except (TypeError, ValueError):
            takes_cache = False
        if takes_cache:
            return load(self.config, cache_dir=str(self.cache_dir))
        return load(self.config)

    def inputs(self) -> Any:
        """What a rerun compares to know the input changed: the local files the source reads, by size and
        time (the source's own list, else the files under data.path / data.data_files), or the hub name."""
        return input_fingerprint(self.plugin, self.config)


def input_fingerprint(plugin: DataSource, cfg: Any) -> Any:
    """Sizes and times of the local files a source reads, or its names when it reads no local file."""
    try:
        files = plugin.inputs(cfg) if plugin.inputs is not None else local_files(cfg)
    except DataError:
        files = None  # the source itself will report the problem when it loads
    if not files:
        return {"path": cfg.path, "name": getattr(cfg, "name", None), "data_files": getattr(cfg, "data_files", None)}
    return rundir.file_stats([Path(f) for f in files])


def local_files(cfg: Any) -> list[Path]:
    """Every existing file named by `path` and `data_files` (a file, a folder read recursively, a glob)."""
    names: list[str] = []
    for value in (cfg.path, getattr(cfg, "data_files", None)):
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list):
            names += [v for v in value if isinstance(v, str)]
        elif isinstance(value, dict):
            for v in value.values():
                names += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)]
    found: list[Path] = []
    for name in names:
        path = Path(name).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif any(ch in name for ch in "*?["):
            found += [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    return found


def where_of(cfg: Any) -> str:
    """How an error names the data: its path, hub name or source."""
    return f"'{cfg.path}'" if isinstance(cfg.path, str) else str(cfg.path or cfg.name or cfg.source)


# --- the split ----------------------------------------------------------------------------------


def split_documents(source: Source, out: Path, fingerprint: str) -> dict[str, Any]:
    """Read the source, split it by document and write `out` (data/documents) atomically; its counts."""
    cfg = source.config
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}.")
    ds = read_documents(source)
    count = DocumentCount()
    for _ in document_batches(ds, cfg, count):  # first pass: how many documents there are, how long
        pass
    split = held_out(count.length_array(), cfg.val_fraction, cfg.seed)
    stats: dict[str, Any] = {"empty_documents_dropped": count.empty, "held_out": split.how}
    with rundir.atomic_dir(out, fingerprint, stats) as tmp:
        stats.update(_write_splits(ds, cfg, split, tmp))
        chars = stats["train"]["characters"] + stats["validation"]["characters"]
        stats["validation_share"] = round(stats["validation"]["characters"] / max(chars, 1), 4)
    shutil.rmtree(source.cache_dir, ignore_errors=True)  # documents/ holds the copy now
    return stats


@dataclasses.dataclass
class DocumentCount:
    """What a pass of `document_batches` saw: documents kept and empty ones dropped."""

    kept: int = 0
    empty: int = 0
    lengths: list[np.ndarray] = dataclasses.field(default_factory=list)  # characters of each kept document

    def length_array(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int32)


def document_batches(ds: datasets.Dataset, cfg: DataConfig, count: DocumentCount | None = None) -> Iterator[list]:
    """Batches of the non-empty documents of `read_documents`' dataset in source order, at most
    `data.max_documents` of them, read with bounded memory (llmforge.data.arrowio)."""
    count = count or DocumentCount()
    for texts in arrowio.column_batches(ds, "text"):
        docs = [t for t in texts if t and t.strip()]
        count.empty += len(texts) - len(docs)
        if cfg.max_documents is not None:
            docs = docs[: cfg.max_documents - count.kept]
        count.kept += len(docs)
        count.lengths.append(np.fromiter(map(len, docs), dtype=np.int32, count=len(docs)))
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


SHARE_TOLERANCE = 1.5  # the validation share of the characters stays within this factor of val_fraction


@dataclasses.dataclass
class HeldOut:
    """The validation part of a corpus: whole documents (their sorted positions), or every document's tail."""

    documents: np.ndarray
    tail: float = 0.0  # > 0: the last `tail` of each document's characters is validation text
    how: str = "documents"  # "documents" or "tails", saved in the stats


def held_out(lengths: np.ndarray, fraction: float, seed: int) -> HeldOut:
    """Validation text holding `fraction` of the characters (within SHARE_TOLERANCE).

    Whole documents when they can: first a seeded draw of ceil(fraction x n) documents, as before; if
    their length misses the share (a few long documents drawn, or none short enough), documents in a
    seeded order taken while they fit. When no choice of whole documents fits (one file, or six novels
    with 5% asked: one novel would be 20%), the last `fraction` of every document is held out instead,
    cut at a line break: held-out text of the same documents, never trained on."""
    n, total = len(lengths), int(lengths.sum())
    low, high = fraction * total / SHARE_TOLERANCE, fraction * total * SHARE_TOLERANCE

    def fits(chosen: np.ndarray) -> bool:
        return 0 < len(chosen) < n and low <= int(lengths[chosen].sum()) <= high

    drawn = held_out_documents(n, min(math.ceil(fraction * n), n), seed)
    if fits(drawn):
        return HeldOut(drawn)
    chosen, size = [], 0
    for i in np.random.default_rng(seed).permutation(n):
        if size + lengths[i] <= high:
            chosen.append(i)
            size += int(lengths[i])
            if size >= fraction * total:
                break
    picked = np.sort(np.array(chosen, dtype=np.int64))
    if fits(picked):
        return HeldOut(picked)
    return HeldOut(np.zeros(0, dtype=np.int64), tail=fraction, how="tails")


def cut_tail(text: str, fraction: float) -> tuple[str, str]:
    """(head, tail) of a document with about `fraction` of its characters in the tail, cut after a line
    break (else a space) near that point so that no line is split when one can be kept whole."""
    at = len(text) - max(1, round(fraction * len(text)))
    window = max(1, len(text) // 20)  # look this far back for a line break, then a space
    for mark in ("\n", " "):
        found = text.rfind(mark, max(0, at - window), at)
        if found > 0:
            return text[: found + 1], text[found + 1 :]
    return text[:at], text[at:]


def _write_splits(source: datasets.Dataset, cfg: DataConfig, split: HeldOut, out: Path) -> dict[str, Any]:
    """Second pass: each document (or its head and tail) to its split in source order, written as read."""
    files = {"train": out / ".train.arrow", "validation": out / ".validation.arrow"}
    stats = {name: {"documents": 0, "words": 0, "characters": 0} for name in files}
    position = 0
    held = split.documents
    with contextlib.ExitStack() as stack:
        write = {name: stack.enter_context(arrowio.column_writer(f, "text", pa.string())) for name, f in files.items()}
        for docs in document_batches(source, cfg):
            if split.tail:
                pieces = [cut_tail(d, split.tail) for d in docs]
                parts = {
                    "train": [h for h, _ in pieces if h.strip()],
                    "validation": [t for _, t in pieces if t.strip()],
                }
            else:
                lo, hi = np.searchsorted(held, [position, position + len(docs)])
                is_val = np.zeros(len(docs), dtype=bool)
                is_val[held[lo:hi] - position] = True
                parts = {
                    name: [d for d, c in zip(docs, chosen, strict=True) if c]
                    for name, chosen in (("train", ~is_val), ("validation", is_val))
                }
            position += len(docs)
            for name, part in parts.items():
                write[name](pa.array(part, type=pa.string()))
                for key, value in text_stats(part).items():
                    stats[name][key] += value
    arrowio.save_dataset_dict(out, files)
    return stats


def read_documents(source: Source) -> datasets.Dataset:
    """The source's rows as a one-column ('text') Dataset, the column checked; empty documents are still
    in it (`document_batches` drops them)."""
    cfg = source.config
    _need_text_column(cfg)
    ds = source.load()
    if hasattr(ds, "stream_batches"):  # a plugin's own stream (e.g. Deep Lake): read it batch by batch
        texts = (t for batch, _ in ds.stream_batches(None, DOC_BATCH, 0, cfg.max_documents) for t in batch)
        ds = arrowio.write_texts(source.cache_dir / "stream.arrow", cfg.text_column, texts)
    if isinstance(ds, datasets.IterableDataset):  # a streamed hub dataset: an on-disk copy, bounded memory
        stream = ds.take(cfg.max_documents) if cfg.max_documents is not None else ds
        texts = (row.get(cfg.text_column) for row in stream)
        ds = arrowio.write_texts(source.cache_dir / "stream.arrow", cfg.text_column, texts)
    if not isinstance(ds, datasets.Dataset):
        raise DataError(
            f"Data source '{cfg.source}' ({source.owner}) returned a {type(ds).__name__}; a data source must return "
            "a datasets.Dataset or IterableDataset."
        )
    check_text_column(ds, cfg)
    ds = ds.select_columns([cfg.text_column])
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    return ds


def open_stream(source: Source) -> Any:
    """The source as a DocumentStream (llmforge.data.streaming), its text column checked where it can be."""
    cfg = source.config
    _need_text_column(cfg)
    ds = source.load()
    if isinstance(ds, datasets.Dataset):
        check_text_column(ds, cfg)
    elif not hasattr(ds, "stream_batches") and not isinstance(ds, datasets.IterableDataset):
        raise DataError(
            f"Data source '{cfg.source}' returned a {type(ds).__name__}; a data source must return a "
            "datasets.Dataset or IterableDataset (or an object with stream_batches)."
        )
    return as_stream(ds, cfg.text_column)


def stream_head(source: Source, out: Path, fingerprint: str, tokenizer_sample: int | None) -> dict[str, Any]:
    """Streaming: read the validation rows and the tokenizer's sample from the head of the stream into
    `out` (data/documents). Bounded memory."""
    cfg = source.config
    V = cfg.val_documents
    if V < 1:
        raise ConfigError(f"data.val_documents must be at least 1 with data.streaming, got {V}.")
    sample = tokenizer_sample or TOKENIZER_SAMPLE
    limit = V + sample if cfg.max_documents is None else min(V + sample, cfg.max_documents)
    where = source.where
    val: list[str] = []
    train: list[str] = []
    rows = 0
    for texts, _ in open_stream(source).stream_batches(None, DOC_BATCH, 0, limit):
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
    stats: dict[str, Any] = {"train": text_stats(train), "validation": text_stats(val)}
    stats["empty_documents_dropped"] = rows - len(train) - len(val)
    stats["streaming"] = {"validation_rows": min(V, rows), "tokenizer_sample_rows": max(0, rows - V)}
    with rundir.atomic_dir(out, fingerprint, stats) as tmp:
        splits.save_to_disk(str(tmp))
    return stats


def _need_text_column(cfg: DataConfig) -> None:
    if cfg.text_column is None:
        raise ConfigError("data.text_column is null, but pretraining reads one text column: name it (e.g. text).")


def check_text_column(ds: datasets.Dataset, cfg: DataConfig) -> None:
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


def text_stats(texts: list[str]) -> dict[str, int]:
    return {"documents": len(texts), "words": sum(len(t.split()) for t in texts), "characters": sum(map(len, texts))}
