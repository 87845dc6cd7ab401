"""Bounded-memory Arrow reads and writes: same values as datasets' own reads, a closed map, the save layout."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from llmforge.data import arrowio
from llmforge.data.packer import block_writer


def file_backed(tmp_path: Path, rows: int, width: int = 1000) -> datasets.Dataset:
    """A memory-mapped dataset of `rows` distinct texts of about `width` characters."""
    path = tmp_path / "texts.arrow"
    with arrowio.column_writer(path, "text", pa.string()) as write:
        for a in range(0, rows, 1000):
            write(pa.array([f"{i} " + "x" * width for i in range(a, min(rows, a + 1000))], type=pa.string()))
    return datasets.Dataset.from_file(str(path))


def resident_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.parametrize(("start", "stop", "batch"), [(0, None, 1000), (123, 4567, 500), (4990, 9000, 64)])
def test_column_batches_are_the_rows_in_order(tmp_path, monkeypatch, start, stop, batch):
    monkeypatch.setattr(arrowio, "REOPEN_BYTES", 100_000)  # reopen every ~100 rows
    ds = file_backed(tmp_path, 5000)
    got = [t for texts in arrowio.column_batches(ds, "text", batch, start, stop) for t in texts]
    assert got == ds[start : stop if stop is not None else len(ds)]["text"]
    assert all(len(texts) <= batch for texts in arrowio.column_batches(ds, "text", batch, start, stop))


def test_in_memory_dataset_is_read_as_it_is(monkeypatch):
    monkeypatch.setattr(arrowio, "REOPEN_BYTES", 1)
    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(2500)]})
    assert [t for b in arrowio.column_batches(ds, "text") for t in b] == [str(i) for i in range(2500)]


def peak_resident_growth_kb(ds: datasets.Dataset) -> tuple[int, int]:
    """(peak growth of mapped file pages while reading every row, growth left once the read is done)"""
    before, peak = resident_file_kb(), 0
    for _ in arrowio.column_batches(ds, "text"):
        peak = max(peak, resident_file_kb() - before)
    return peak, resident_file_kb() - before


def test_reading_closes_the_map_so_resident_memory_stays_bounded(tmp_path, monkeypatch):
    ds = file_backed(tmp_path, 60_000)  # ~60 MB of text, in record batches of 8 MB
    monkeypatch.setattr(arrowio, "REOPEN_BYTES", 2**40)  # never reopen: every page read stays resident
    whole, _ = peak_resident_growth_kb(ds)
    monkeypatch.setattr(arrowio, "REOPEN_BYTES", 2 * 2**20)
    bounded, left = peak_resident_growth_kb(ds)
    assert whole > 50_000  # the whole file
    assert bounded < 16_000  # the reopen window and the record batch being read
    assert left < 2_000  # the caller's dataset holds none of the pages read


def test_saved_splits_load_with_load_from_disk(tmp_path):
    texts = tmp_path / "t.arrow"
    with arrowio.column_writer(texts, "text", pa.string()) as write:
        write(pa.array(["a", "b"], type=pa.string()))
        write(pa.array([], type=pa.string()))  # skipped
        write(pa.array(["c"], type=pa.string()))
    blocks = tmp_path / "b.arrow"
    with block_writer(blocks, 4) as write:
        write(np.arange(8, dtype=np.int32).reshape(2, 4))
    arrowio.save_dataset_dict(tmp_path / "saved", {"train": texts, "validation": blocks})
    dd = datasets.load_from_disk(str(tmp_path / "saved"))
    assert dd["train"]["text"] == ["a", "b", "c"]
    assert dd["validation"]["input_ids"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert not texts.exists() and not blocks.exists()  # moved, not copied
