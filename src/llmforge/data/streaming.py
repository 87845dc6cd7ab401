"""Streaming pretraining: documents read batch by batch, packed on the fly, resumed without replay.

A source is read as a `DocumentStream`: batches of documents, each with the source's own position
after it (a row index for map-style and Deep Lake datasets, `IterableDataset.state_dict()` — shard
and offset — for a streamed hub dataset). `StreamingBlocks` tokenizes each batch and packs it with
the same `Packer` as the cached path. Its state is small and exact:

    {"epoch", "source": position before the current batch, "rows": rows read before it,
     "carry": the packer's carried-over tokens before it (< context_length), "skip": blocks of the
     batch already trained, "blocks": blocks trained in total}

A checkpoint stores that state for every rank (`stream_state.json`); a resumed run seeks the source
to `source`, re-reads one batch of documents and drops `skip` blocks: the cost does not depend on
the steps done. Rows `[0, data.val_documents)` are the validation set (the data stage prepares them
like any other blocks) and are never trained on; with several processes, rank r trains on the rows
whose index (counted from the first training row) is r modulo the world size.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llmforge.data.arrowio import column_batches
from llmforge.data.packer import Packer, encode_joined
from llmforge.errors import DataError, RunDirError, TrainingError

DOC_BATCH = 256  # documents tokenized at once; a resume re-reads at most one such batch
STATE_FILE = "stream_state.json"


class DocumentStream(Protocol):
    """What a streaming source provides (a plugin may return an object with this method)."""

    def stream_batches(
        self, start: Any, batch_size: int, first_row: int, max_rows: int | None
    ) -> Iterator[tuple[list[Any], Any]]:
        """(documents, position after them) from `start` (None: row `first_row`), stopping before `max_rows`."""


class RowStream:
    """A map-style `datasets.Dataset` (memory-mapped Arrow): the position is a row index, seeking is free;
    read with bounded memory (llmforge.data.arrowio.column_batches)."""

    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds, column

    def stream_batches(self, start: Any, batch_size: int, first_row: int, max_rows: int | None):
        row = first_row if start is None else int(start)
        for texts in column_batches(self.ds, self.column, batch_size, row, max_rows):
            row += len(texts)
            yield texts, row


class IterableStream:
    """A `datasets.IterableDataset` (hub streaming): the position is its state_dict (shard and offset)."""

    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds, column

    def stream_batches(self, start: Any, batch_size: int, first_row: int, max_rows: int | None):
        ds = self.ds.take(max_rows) if max_rows is not None else self.ds
        ds = ds.skip(first_row) if first_row else ds
        if start is not None:
            ds.load_state_dict(start)
        rows = iter(ds)
        while True:
            batch = list(itertools.islice(rows, batch_size))
            if not batch:
                return
            if self.column not in batch[0]:
                raise DataError(
                    f"The stream has no column '{self.column}' (data.text_column). Its columns: {', '.join(batch[0])}."
                )
            yield [row.get(self.column) for row in batch], ds.state_dict()


def as_stream(obj: Any, column: str) -> Any:
    """Wrap what a data source returned as a DocumentStream."""
    import datasets

    if hasattr(obj, "stream_batches"):
        return obj
    if isinstance(obj, datasets.IterableDataset):
        return IterableStream(obj, column)
    if isinstance(obj, datasets.Dataset):
        return RowStream(obj, column)
    raise DataError(f"A data source returned a {type(obj).__name__}, which cannot be streamed.")


def clean_documents(texts: list[Any], where: str, column: str) -> list[str]:
    """Non-empty documents of a batch; a value that is not text is an error naming the column."""
    out = []
    for t in texts:
        if t is None:
            continue
        if not isinstance(t, str):
            raise DataError(
                f"Column '{column}' of {where} holds {type(t).__name__} values ({str(t)[:40]!r}), not text. "
                "Set data.text_column to the column with the documents' text."
            )
        if t.strip():
            out.append(t)
    return out


def initial_state(first_row: int) -> dict[str, Any]:
    return {"epoch": 0, "source": None, "rows": first_row, "carry": [], "skip": 0, "blocks": 0}


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Endless packed blocks from a DocumentStream for one rank; `state` always points at the next block."""

    def __init__(
        self,
        stream: Any,
        tokenizer: Any,
        context_length: int,
        first_row: int,
        max_rows: int | None = None,
        rank: int = 0,
        world: int = 1,
        state: dict[str, Any] | None = None,
        where: str = "the stream",
        column: str = "text",
        doc_batch: int = DOC_BATCH,
    ) -> None:
        self.stream, self.T, self.first_row, self.max_rows = stream, context_length, first_row, max_rows
        self.rank, self.world, self.where, self.column, self.doc_batch = rank, world, where, column, doc_batch
        self.backend = tokenizer.backend_tokenizer
        self.eos = tokenizer.eos_token_id
        self.state = dict(state) if state is not None else initial_state(first_row)
        self.first_block_seconds: float | None = None  # time from iter() to the first block (the resume cost)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        started = time.perf_counter()
        st = dict(self.state)
        while True:
            epoch_blocks, from_start = 0, st["source"] is None and st["skip"] == 0
            for texts, after in self.stream.stream_batches(st["source"], self.doc_batch, self.first_row, self.max_rows):
                mine = [t for j, t in enumerate(texts) if (st["rows"] + j - self.first_row) % self.world == self.rank]
                docs = clean_documents(mine, self.where, self.column)
                packer = Packer(self.T)
                packer.carry = np.asarray(st["carry"], dtype=np.int32)
                blocks = packer.add(encode_joined(self.backend, docs, self.eos))
                for k in range(st["skip"], len(blocks)):
                    # set before the yield: once this block is consumed, a resume starts at the next one
                    self.state = {**st, "skip": k + 1, "blocks": st["blocks"] + k + 1 - st["skip"]}
                    if self.first_block_seconds is None:
                        self.first_block_seconds = time.perf_counter() - started
                    yield {"input_ids": torch.from_numpy(blocks[k].astype(np.int64))}
                epoch_blocks += max(0, len(blocks) - st["skip"])
                st = {
                    "epoch": st["epoch"],
                    "source": after,
                    "rows": st["rows"] + len(texts),
                    "carry": packer.carry.tolist(),
                    "skip": 0,
                    "blocks": st["blocks"] + max(0, len(blocks) - st["skip"]),
                }
                self.state = st
            if epoch_blocks == 0 and from_start:
                raise DataError(
                    f"The training part of {self.where} (rows from {self.first_row}"
                    f"{f', process {self.rank} of {self.world}' if self.world > 1 else ''}) holds less than one block "
                    f"of {self.T} tokens. Add data, or lower data.val_documents or model.context_length."
                )
            st = {**st, "epoch": st["epoch"] + 1, "source": None, "rows": self.first_row, "skip": 0}
            self.state = st


# --- checkpoints: every rank's state, written before the checkpoint's manifest -------------------


def gather_states(dataset: StreamingBlocks) -> list[dict[str, Any]]:
    """Every rank's stream state (a collective call under torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        states: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, dataset.state)
        return states
    return [dataset.state]


def save_states(checkpoint: Path, states: list[dict[str, Any]], blocks_per_step: int, step: int) -> None:
    for rank, st in enumerate(states):
        if st["blocks"] != step * blocks_per_step:
            raise TrainingError(
                f"Internal error: process {rank}'s stream handed out {st['blocks']} blocks by step {step}, "
                f"not {step * blocks_per_step}; its position would not be exact. Set train.dataloader_workers: 0."
            )
    (checkpoint / STATE_FILE).write_text(json.dumps({"world_size": len(states), "states": states}))


def load_state(checkpoint: Path, rank: int, world: int) -> dict[str, Any]:
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise RunDirError(
            f"{checkpoint} has no {STATE_FILE}: it was not written by a streaming run, so the stream position is "
            "unknown. Use another --out, or delete the checkpoints to start over."
        )
    saved = json.loads(path.read_text())
    if saved["world_size"] != world:
        raise RunDirError(
            f"{checkpoint} was written by {saved['world_size']} processes, and this run has {world}; each process "
            "reads its own part of the stream, so resume with the same number of processes."
        )
    return saved["states"][rank]


def streaming_trainer_class(base: type) -> type:
    """`base` (a Trainer class) reading a StreamingBlocks train set through a plain DataLoader.

    accelerate's prepared loader for an iterable dataset fetches a batch ahead (and shards or
    dispatches batches itself); the plain loader hands out exactly the blocks trained, so the stream's
    state at a checkpoint is exact. Each rank's StreamingBlocks reads its own part of the stream.
    """

    class StreamingTrainer(base):
        def get_train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(
                self.train_dataset,
                batch_size=self._train_batch_size,
                collate_fn=self.data_collator,
                num_workers=0,
                pin_memory=self.args.dataloader_pin_memory,
            )

    return StreamingTrainer
