"""Built-in data sources: plain text, JSON Lines, JSON, Parquet, CSV and the Hugging Face hub.

Registered through the `llmforge` entry-point group like any third-party plugin. Each source returns
a `datasets.Dataset` (or `IterableDataset` when streaming) with one row per document; the core picks
the `text_column`, drops empty documents and splits train/validation. With `text_column: null` a
source keeps every column of each row (the fine-tuning formats read instruction/input/output,
conversations, messages, ...).

Small corpora are read into memory. Above `STREAM_BYTES` of input, the text and jsonl sources write
their documents to an on-disk Arrow file one document at a time (`llmforge.write_texts`, in
the `cache_dir` the core passes: `data/source-cache/` of the run), so memory does not grow with the
corpus; the rows, and so every later result, are the same either way.

A file that one of these sources fails to read, and whose suffix belongs to another of them (a .csv
given to `source: jsonl`), gets the source to set added to the error.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from llmforge import (
    DataConfig,
    DataError,
    DataSource,
    first_line,
    hookimpl,
    hub_offline,
    open_token_store,
    token_store_inputs,
    write_texts,
)

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
JSON_SUFFIXES = {".json"}
PARQUET_SUFFIXES = {".parquet"}
CSV_SUFFIXES = {".csv", ".tsv"}
FILE_SOURCES = {  # source -> (the suffixes it reads, what a file of them is called in an error)
    "text": (TEXT_SUFFIXES, "plain text"),
    "jsonl": (JSONL_SUFFIXES, "JSON Lines"),
    "json": (JSON_SUFFIXES, "JSON"),
    "parquet": (PARQUET_SUFFIXES, "Parquet"),
    "csv": (CSV_SUFFIXES, "CSV"),
}
STREAM_BYTES = 256 * 2**20  # inputs larger than this are read document by document to disk
READ_BYTES = 16 * 2**20  # a text file is read this much at a time


@hookimpl
def register_data_sources(register) -> None:
    register("text", _file_source(load_text, TEXT_SUFFIXES))
    register("jsonl", _file_source(load_jsonl, JSONL_SUFFIXES))
    register("json", _file_source(load_json, JSON_SUFFIXES))
    register("parquet", _file_source(load_parquet, PARQUET_SUFFIXES))
    register("csv", _file_source(load_csv, CSV_SUFFIXES))
    register("hub", DataSource(load_hub, inputs=hub_inputs))
    register(
        "token_store",
        DataSource(
            load_token_store,
            inputs=token_store_inputs,
            packed=open_token_store,
            description="blocks tokenized and packed once by `llmforge prepare`, shared by many runs",
        ),
    )


def _file_source(load: Any, suffixes: set[str]) -> DataSource:
    """A source of local files: its inputs are the files `path` names, its suffixes the ones it reads."""
    return DataSource(load, inputs=lambda config: expand_paths(config, suffixes), suffixes=tuple(sorted(suffixes)))


def hub_inputs(config: DataConfig) -> list[Path]:
    """A hub builder over local files (data_files): editing them reruns the stage; a hub name is its own key."""
    files = config.data_files
    if files is None:
        return []
    names = [files] if isinstance(files, str) else files
    if isinstance(names, dict):
        names = [f for v in names.values() for f in ([v] if isinstance(v, str) else v)]
    return [Path(f) for f in names if Path(f).is_file()]


def load_token_store(config: DataConfig) -> datasets.Dataset:
    raise DataError(
        f"'{config.path}' is a token store: it holds packed blocks, not documents, so it serves pretraining "
        "(data.source: token_store), not fine-tuning. Point finetune.path at the instruction rows."
    )


def expand_paths(config: DataConfig, suffixes: set[str]) -> list[Path]:
    """Files named by `path`: files, directories (searched recursively by suffix) and globs."""
    if not config.path:
        raise DataError(f"data.path is required for source '{config.source}': name a file, directory or glob.")
    patterns = config.path if isinstance(config.path, list) else [config.path]
    files: list[Path] = []
    for pattern in patterns:
        p = Path(os.path.expanduser(pattern))
        if any(ch in pattern for ch in "*?["):
            hits = [Path(h) for h in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))]
            hits = [h for h in hits if h.is_file()]
            if not hits:
                raise DataError(f"data.path glob '{pattern}' matches no file. Check the pattern and directory.")
            files += hits
        elif p.is_dir():
            hits = sorted(h for h in p.rglob("*") if h.is_file() and h.suffix.lower() in suffixes)
            if not hits:
                raise DataError(
                    f"Directory '{p}' holds no {'/'.join(sorted(suffixes))} file. "
                    "Point data.path at the files or use a glob such as 'dir/**/*.ext'."
                )
            files += hits
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise DataError(f"data.path '{p}' is neither a file nor a directory.")
        else:
            relative = "" if p.is_absolute() else f" (a relative path, taken from the current directory {Path.cwd()})"
            raise DataError(f"data.path '{p}' does not exist{relative}.")
    return files


@contextlib.contextmanager
def suffix_hint(path: Path, config: DataConfig, source: str) -> Iterator[None]:
    """A DataError raised while `source` reads `path` gains the source to set when the file's suffix is
    another built-in source's: "'rows.csv' looks like CSV: set data.source: csv." Only reads that fail
    are told: the text source reads a .csv file named directly, and that is no mistake."""
    try:
        yield
    except DataError as exc:
        suffix = path.suffix.lower()
        other = next((name for name, (suffixes, _) in FILE_SOURCES.items() if suffix in suffixes), source)
        if other == source:
            raise
        kind = "TSV" if suffix == ".tsv" else FILE_SOURCES[other][1]
        # data.* as in every source error; the fine-tune loader adds that its block's keys have the same names
        raise DataError(f"{exc} '{path.name}' looks like {kind}: set data.source: {other}.") from exc


def read_text_file(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read '{path}': {exc.strerror or exc}. Check the path and its permissions.") from exc
    try:
        text = raw.decode(encoding)
        return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark is not content
    except UnicodeDecodeError as exc:
        raise DataError(
            f"'{path}' is not valid {encoding}: byte {exc.start} ({raw[exc.start : exc.start + 1]!r}). "
            f"Convert it (iconv -f LATIN1 -t UTF-8) or set data.encoding to the file's encoding."
        ) from exc
    except LookupError as exc:
        raise DataError(f"data.encoding '{encoding}' is not a known text encoding.") from exc


def load_text(config: DataConfig, cache_dir: str | None = None) -> datasets.Dataset:
    column = config.text_column or "text"  # a text file has one column whatever is asked
    paths = expand_paths(config, TEXT_SUFFIXES)
    if _large(paths, config):
        return _on_disk(_text_documents, paths, config, column, cache_dir)
    return datasets.Dataset.from_dict({column: [doc for _, doc in _text_documents(paths, config, column)]})


def _text_documents(paths: list[Path], config: DataConfig, column: str) -> Any:
    separator = {"file": None, "paragraph": "\n\n"}.get(config.documents, "\n")
    for path in paths:
        with suffix_hint(path, config, "text"):
            for piece in text_pieces(path, config.encoding, separator):
                yield path, piece.strip() if config.documents == "paragraph" else piece


def text_pieces(path: Path, encoding: str, separator: str | None) -> Any:
    """A text file's whole text (`separator` None) or its pieces split on `separator`, with \\r\\n read
    as \\n and a leading byte-order mark dropped. Read `READ_BYTES` at a time, so a file of any size
    streams; the pieces are those of splitting the whole text."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError as exc:
        raise DataError(f"data.encoding '{encoding}' is not a known text encoding.") from exc
    carry, offset, first = "", 0, True
    try:
        with open(path, "rb") as fh:
            while True:
                raw = fh.read(READ_BYTES)
                pending = decoder.getstate()[0]
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as exc:
                    data = pending + raw
                    raise DataError(
                        f"'{path}' is not valid {encoding}: byte {offset - len(pending) + exc.start} "
                        f"({data[exc.start : exc.start + 1]!r}). Convert it (iconv -f LATIN1 -t UTF-8) or set "
                        "data.encoding to the file's encoding."
                    ) from exc
                offset += len(raw)
                if first and text:
                    text, first = text.removeprefix("\ufeff"), False  # a byte-order mark is not content
                carry += text
                if separator is not None:  # a piece is complete once the next separator is read
                    pieces = carry.replace("\r\n", "\n").split(separator)
                    carry = pieces.pop()
                    yield from pieces
                if not raw:
                    break
    except OSError as exc:
        raise DataError(f"Cannot read '{path}': {exc.strerror or exc}. Check the path and its permissions.") from exc
    yield carry.replace("\r\n", "\n")


def _large(paths: list[Path], config: DataConfig | None = None) -> bool:
    """More input than `data.options.stream_bytes` (default STREAM_BYTES): read it document by document."""
    limit = (config.options.get("stream_bytes", STREAM_BYTES) if config is not None else None) or STREAM_BYTES
    if config is not None and config.options.get("stream_bytes") == 0:
        limit = -1  # 0: always on disk
    return sum(p.stat().st_size for p in paths) > limit


def _on_disk(documents: Any, paths: list[Path], config: DataConfig, column: str, cache_dir: str | None) -> Any:
    """The documents written one by one to an Arrow file in `cache_dir` (memory stays bounded), reused
    while the files, and the options that shape the documents, are unchanged."""
    stats = [(str(p), p.stat()) for p in paths]
    key = json.dumps(
        [[p, st.st_size, st.st_mtime_ns] for p, st in stats]
        + [config.source, config.documents, config.encoding, column]
    )
    root = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "llmforge"
    file = root / f"{config.source}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.arrow"
    if file.is_file():
        return datasets.Dataset.from_file(str(file))
    return write_texts(file, column, (doc for _, doc in documents(paths, config, column)))


def load_jsonl(config: DataConfig, cache_dir: str | None = None) -> datasets.Dataset:
    paths = expand_paths(config, JSONL_SUFFIXES)
    if config.text_column is not None and _large(paths, config):
        return _on_disk(_jsonl_values, paths, config, config.text_column, cache_dir)
    return _dataset([value for _, value in _jsonl_values(paths, config, config.text_column)], config)


def _jsonl_values(paths: list[Path], config: DataConfig, column: str | None) -> Any:
    for path in paths:
        with suffix_hint(path, config, "jsonl"):
            yield from _jsonl_file(path, config)


def _jsonl_file(path: Path, config: DataConfig) -> Any:
    if _large([path]):  # line by line: a large file is never held whole
        lines: Any = _read_lines(path, config.encoding)
    else:
        lines = read_text_file(path, config.encoding).split("\n")
    # split on "\n" only: str.splitlines() also splits inside JSON strings at U+2028, U+0085, ...
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"'{path}' line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}). "
                "Each line of a JSON Lines file must be one JSON object."
            ) from exc
        if not isinstance(row, dict):
            raise DataError(f"'{path}' line {lineno} is a JSON {type(row).__name__}, not an object.")
        yield path, _text_of(row, config, f"'{path}' line {lineno}")


def _read_lines(path: Path, encoding: str) -> Any:
    try:
        with open(path, encoding=encoding, newline="\n") as fh:
            for i, line in enumerate(fh):
                line = line[:-1] if line.endswith("\n") else line
                yield line[1:] if i == 0 and line.startswith("\ufeff") else line
    except UnicodeDecodeError as exc:
        raise DataError(
            f"'{path}' is not valid {encoding}: byte {exc.start}. Convert it to UTF-8 or set data.encoding."
        ) from exc


def load_json(config: DataConfig) -> datasets.Dataset:
    texts: list[Any] = []
    field = config.options.get("field")
    for path in expand_paths(config, JSON_SUFFIXES):
        with suffix_hint(path, config, "json"):
            texts += _json_file(path, config, field)
    return _dataset(texts, config)


def _json_file(path: Path, config: DataConfig, field: str | None) -> list[Any]:
    try:
        data = json.loads(read_text_file(path, config.encoding))
    except json.JSONDecodeError as exc:
        raise DataError(f"'{path}' is not valid JSON: {exc.msg} at line {exc.lineno}.") from exc
    if field is not None:
        if not isinstance(data, dict) or field not in data:
            raise DataError(f"'{path}' has no top-level field '{field}' (data.options.field).")
        data = data[field]
    if not isinstance(data, list):
        raise DataError(
            f"'{path}' must hold a JSON array of objects; for an object that wraps the array, "
            "set data.options.field to the key of the array."
        )
    return [_text_of(row, config, f"Row {i} of '{path}'") for i, row in enumerate(data, start=1)]


def _text_of(row: Any, config: DataConfig, where: str) -> Any:
    """The text field of one JSON row (only that field is kept, so extra fields cannot break the schema),
    or the whole row when `text_column` is null."""
    col = config.text_column
    if not isinstance(row, dict):
        raise DataError(f"{where} is a {type(row).__name__}, not an object.")
    if col is None:
        return row
    if col not in row:
        raise DataError(
            f"{where} has no field '{col}' (data.text_column). Its fields: {', '.join(sorted(row)) or 'none'}."
        )
    _check_text(row[col], config, where)
    return row[col]


def _check_text(t: Any, config: DataConfig, where: str) -> None:
    if t is not None and not isinstance(t, str):
        raise DataError(
            f"{where}: '{config.text_column}' is a {type(t).__name__} ({str(t)[:40]!r}), "
            "not text. Pick the column that holds the documents' text (data.text_column)."
        )


def _dataset(values: list[Any], config: DataConfig) -> datasets.Dataset:
    """One text column, or with `text_column` null every field of every row (a missing field is null)."""
    if config.text_column is not None:
        return datasets.Dataset.from_dict({config.text_column: values})
    fields = dict.fromkeys(key for row in values for key in row)  # the first row's keys are not all keys
    columns = {key: [row.get(key) for row in values] for key in fields}
    try:
        return datasets.Dataset.from_dict(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        for key, column in columns.items():  # name the field that mixes types
            try:
                pa.array(column)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                raise DataError(
                    f"Field '{key}' of {config.path} holds values of different types in different rows ({exc}). "
                    "Make the field one type in every row."
                ) from exc
        raise DataError(f"The rows of {config.path} cannot form one table: {exc}") from exc


def load_parquet(config: DataConfig) -> datasets.Dataset:
    import pyarrow.parquet as pq

    texts: list[Any] = []
    for path in expand_paths(config, PARQUET_SUFFIXES):
        with suffix_hint(path, config, "parquet"):
            texts += _parquet_file(pq, path, config)
    return _dataset(texts, config)


def _parquet_file(pq: Any, path: Path, config: DataConfig) -> list[Any]:
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise DataError(f"'{path}' is not a readable Parquet file: {exc}.") from exc
    if config.text_column is None:
        return pq.read_table(path).to_pylist()
    if config.text_column not in schema.names:
        raise DataError(
            f"'{path}' has no column '{config.text_column}' (data.text_column). Its columns: {', '.join(schema.names)}."
        )
    column = pq.read_table(path, columns=[config.text_column]).column(0).to_pylist()
    for i, t in enumerate(column, start=1):
        _check_text(t, config, f"Row {i} of '{path}'")
    return column


def load_csv(config: DataConfig) -> datasets.Dataset:
    import pandas as pd

    texts: list[Any] = []
    for path in expand_paths(config, CSV_SUFFIXES):
        with suffix_hint(path, config, "csv"):
            texts += _csv_file(pd, path, config)
    return _dataset(texts, config)


def _csv_file(pd: Any, path: Path, config: DataConfig) -> list[Any]:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(path, sep=sep, encoding=config.encoding, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"'{path}' is not valid {config.encoding} (byte {exc.start}). Convert it to UTF-8 or set data.encoding."
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"'{path}' is empty: it has no header row and no data.") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"'{path}' is not valid CSV: {exc}") from exc
    if config.text_column is None:
        return frame.to_dict("records")
    if config.text_column not in frame.columns:
        raise DataError(
            f"'{path}' has no column '{config.text_column}' (data.text_column). "
            f"Its columns: {', '.join(map(str, frame.columns))}."
        )
    return frame[config.text_column].tolist()


def load_hub(config: DataConfig) -> datasets.Dataset | datasets.IterableDataset:
    """`datasets.load_dataset(name, config, split=..., streaming=...)`: the hub, or a local builder."""
    if not config.name:
        raise DataError("data.name is required for source 'hub' (e.g. HuggingFaceFW/fineweb, or 'json').")
    try:
        return datasets.load_dataset(
            config.name,
            config.config,
            split=config.split,
            streaming=config.streaming,
            data_files=config.data_files,
            **config.options,
        )
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        hint = (
            " The hub is switched off here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1): use a local copy or a file source."
            if hub_offline()
            else " Check the name, config and split, and your network."
        )
        raise DataError(
            f"Cannot load hub dataset '{config.name}' (config {config.config}): {first_line(exc)}.{hint}"
        ) from exc
