"""Deep Lake data source (`source: deeplake`): local datasets and hub URIs, read in batches.

Installed with `pip install 'llmforge[deeplake]'` (deeplake 4.x). The dataset is opened with
`deeplake.open_read_only` and read with `ds.batches(n)` (Deep Lake's `pytorch()` loader fetches one
row at a time and measured ~20x slower). Positions are row indices, so a streaming run resumes
with `SELECT * OFFSET row`, whose cost does not depend on the row.

    data: {source: deeplake, path: data/owt}                                       # a local dataset
    data: {source: deeplake, name: hub://activeloop/openwebtext-train, streaming: true}  # the hub
"""

from __future__ import annotations

import os
from typing import Any

from llmforge import DataConfig, DataError, hookimpl

INSTALL = "pip install 'llmforge[deeplake]'"
URI_SCHEMES = ("al://", "hub://", "s3://", "gcs://", "gs://", "azure://", "az://", "mem://")


@hookimpl
def register_data_sources(register) -> None:
    register("deeplake", load_deeplake)


def load_deeplake(config: DataConfig) -> DeepLakeSource:
    """Open the dataset named by data.name (a URI) or data.path (a local dataset directory)."""
    try:
        import deeplake
    except ImportError as exc:
        raise DataError(
            f"Data source 'deeplake' needs the Deep Lake package, which is not installed: {INSTALL} (deeplake 4.x)."
        ) from exc
    uri = _uri(config)
    try:
        ds = deeplake.open_read_only(uri, token=config.options.get("token") or os.environ.get("ACTIVELOOP_TOKEN"))
    except Exception as exc:  # deeplake's own exception classes, whatever the back-end raised
        raise DataError(_open_error(uri, exc)) from None
    return DeepLakeSource(ds, uri, config.text_column)


def _uri(config: DataConfig) -> str:
    for value in (config.name, config.path):
        if isinstance(value, str) and value.startswith(URI_SCHEMES):
            return value
    if isinstance(config.path, str) and any(f"/{s[:-2]}/" in config.path for s in URI_SCHEMES):
        raise DataError(
            f"data.path '{config.path}' looks like a Deep Lake hub URI read as a file path: put URIs in data.name "
            "(e.g. name: al://org/dataset)."
        )
    if isinstance(config.path, list) or not (config.path or config.name):
        raise DataError(
            "Source 'deeplake' needs data.path (a local Deep Lake dataset directory) or data.name (a URI such as "
            "al://org/name or hub://activeloop/openwebtext-train)."
        )
    path = os.path.expanduser(config.path or config.name)
    if not os.path.exists(path):
        raise DataError(f"Deep Lake dataset '{path}' does not exist (resolved from {os.getcwd()}).")
    return path


def _open_error(uri: str, exc: Exception) -> str:
    kind = type(exc).__name__
    first = (str(exc).strip().splitlines() or [kind])[0]
    if "Could not resolve host" in first or "HTTPRequestFailed" in kind or "Connection" in kind:
        host = first.split("Could not resolve host:")[-1].strip() if "Could not resolve host" in first else ""
        return (
            f"Cannot open Deep Lake dataset '{uri}': the hub is not reachable"
            f"{f' (could not resolve {host})' if host else ''}. Check the network (and ACTIVELOOP_TOKEN), or copy "
            "the dataset to a local path with deeplake.copy and set data.path."
        )
    if "NotExists" in kind or "does not exist" in first:
        return (
            f"'{uri}' is not a Deep Lake dataset (Deep Lake found none there). Point data.path at a dataset directory."
        )
    return f"Cannot open Deep Lake dataset '{uri}': {kind}: {first}"


class DeepLakeSource:
    """A Deep Lake dataset as a document stream (rows in order; the position is a row index)."""

    def __init__(self, ds: Any, uri: str, column: str | None) -> None:
        self.ds, self.uri, self.column = ds, uri, column
        columns = {c.name: str(c.dtype) for c in ds.schema.columns}
        if column is None:
            raise DataError("Source 'deeplake' reads one text column: set data.text_column.")
        if column not in columns:
            raise DataError(
                f"Deep Lake dataset '{uri}' has no column '{column}' (data.text_column). "
                f"Its columns: {', '.join(f'{n} ({t})' for n, t in columns.items())}."
            )
        if not columns[column].startswith("text"):
            raise DataError(
                f"Column '{column}' of Deep Lake dataset '{uri}' is {columns[column]}, not text. "
                "Set data.text_column to the column with the documents' text."
            )
        if len(ds) == 0:
            raise DataError(f"Deep Lake dataset '{uri}' is empty (0 rows).")

    def __len__(self) -> int:
        return len(self.ds)

    def stream_batches(self, start: Any, batch_size: int, first_row: int, max_rows: int | None):
        row = first_row if start is None else int(start)
        end = len(self.ds) if max_rows is None else min(len(self.ds), max_rows)
        if row >= end:
            return
        view = self.ds if row == 0 else self.ds.query(f"SELECT * OFFSET {row}")
        for batch in view.batches(batch_size):
            texts = list(batch[self.column])[: end - row]
            row += len(texts)
            yield texts, row
            if row >= end:
                return
