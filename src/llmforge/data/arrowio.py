"""Arrow datasets read and written with memory that does not grow with their size.

`datasets` reads its Arrow files through a memory map, and every page a read touches stays in the
process's resident set until the map is closed: one pass over a 2 GB corpus leaves 2 GB resident.
`column_batches` reopens a file-backed dataset every `REOPEN_BYTES` it reads, which closes the old
map. Files are written as plain Arrow IPC streams in large record batches (`column_writer`, whose
docstring says why), and `save_dataset_dict` lays them out as `DatasetDict.save_to_disk` would
(`datasets.load_from_disk` reads them), without the copy through a memory map that it makes.

Imports only pyarrow at module level: token-store workers import this in fresh processes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmforge.errors import DataError

REOPEN_BYTES = 64 * 2**20  # data read through one memory map before it is closed
BATCH_BYTES = 8 * 2**20  # size of the record batches written
SAVED_FILE = "data-00000-of-00001.arrow"  # the name save_to_disk gives a split's only shard


def column_batches(
    ds: Any, column: str, batch_size: int = 1000, start: int = 0, stop: int | None = None
) -> Iterator[list]:
    """The values of `column` in rows [start, stop) of a `datasets.Dataset`, `batch_size` rows at a time.

    A dataset whose pickle holds only file paths (memory-mapped, the case of every large one) is
    opened anew, and again after each `REOPEN_BYTES` read, so resident memory stays bounded; an
    in-memory dataset is read as it is.
    """
    stop = len(ds) if stop is None else min(stop, len(ds))
    pickled = pickle.dumps(ds) if ds.cache_files and len(ds) else b""
    reopen = 0 < len(pickled) < 2**20
    if reopen:
        ds = pickle.loads(pickled)  # our own map: the caller's object never holds the pages read
        reopen_rows = max(batch_size, REOPEN_BYTES // max(1, ds.data.nbytes // len(ds)))
    since = 0
    for a in range(start, stop, batch_size):
        b = min(stop, a + batch_size)
        yield ds[a:b][column]
        since += b - a
        if reopen and since >= reopen_rows:
            ds, since = pickle.loads(pickled), 0


@contextlib.contextmanager
def column_writer(path: str | Path, name: str, type: pa.DataType) -> Iterator[Callable[[pa.Array], None]]:
    """Write a one-column Arrow IPC stream (the file format of datasets): `write(array)` as often as needed.

    Arrays are gathered into record batches of about `BATCH_BYTES`: opening a file through a memory map
    reads every batch's header, and the kernel maps 64 KB around each one it touches, so a file of
    small batches (datasets writes 1,000 rows each) costs resident memory in proportion to its size
    just to open.
    """
    schema = pa.schema([(name, type)])
    pending: list[pa.Array] = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

        def flush() -> None:
            if pending:
                writer.write_batch(pa.record_batch([pa.concat_arrays(pending)], schema=schema))
                pending.clear()

        def write(array: pa.Array) -> None:
            chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
            for chunk in chunks:
                if len(chunk):
                    if sum(a.nbytes for a in pending) + chunk.nbytes > BATCH_BYTES:
                        flush()
                    pending.append(chunk)

        yield write
        flush()


def write_texts(path: str | Path, column: str, texts: Iterable[Any]) -> Any:
    """`texts` (str or None) written to a one-column Arrow file at `path` and opened as a Dataset.

    Memory stays bounded whatever the number of texts; the file appears under its name only once
    complete, so a killed run never leaves a half-written copy that a later run would read.
    """
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        rows = iter(texts)
        with column_writer(tmp, column, pa.string()) as write:
            while chunk := list(itertools.islice(rows, 1000)):
                try:
                    write(pa.array(chunk, type=pa.string()))
                except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                    raise DataError(
                        f"Column '{column}' holds a value that is not text ({exc}). Set data.text_column to the "
                        "column with the documents' text."
                    ) from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(path))


def save_dataset_dict(path: str | Path, files: dict[str, Path]) -> None:
    """Move one Arrow stream file per split into `path` in the layout of `DatasetDict.save_to_disk`.

    The metadata (dataset_dict.json, each split's state.json and dataset_info.json) is written by
    `datasets` itself for empty splits with the files' features; only the file list is filled in.
    """
    import datasets

    path = Path(path)
    empty = {}
    for split, file in files.items():
        features = datasets.Dataset.from_file(str(file)).features  # reads the schema, not the data
        empty[split] = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    datasets.DatasetDict(empty).save_to_disk(str(path))
    for split, file in files.items():
        os.replace(file, path / split / SAVED_FILE)
        state_file = path / split / "state.json"
        state = json.loads(state_file.read_text())
        state["_data_files"] = [{"filename": SAVED_FILE}]
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True))
