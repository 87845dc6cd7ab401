"""Documents to training blocks: tokenize, join with EOS, cut `context_length` blocks, carry the rest.

Shared by the data stage, the token store's worker processes and the streaming reader, so the three
produce the same blocks from the same documents. Kept to numpy, pyarrow and tokenizers: a token-store
worker imports this module in a fresh process, and importing torch or the stages there cost seconds per
worker.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from llmforge.data.arrowio import column_writer


def encode_joined(backend: Any, texts: list[str], eos: int) -> np.ndarray:
    """The texts' token ids, each text followed by EOS, as one int32 array.

    `encode_batch_fast` skips the character offsets nothing here uses (12% faster on the bundled corpus);
    one flat array avoids a numpy array per document.
    """
    if not texts:
        return np.zeros(0, dtype=np.int32)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    lists = [e.ids for e in encode(texts, add_special_tokens=False)]
    for ids in lists:
        ids.append(eos)
    return np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=sum(map(len, lists)))


class Packer:
    """Concatenate EOS-joined token runs and cut full blocks; the remainder carries over to the next call."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.carry = np.zeros(0, dtype=np.int32)
        self.tokens = 0
        self.blocks = 0

    def add(self, joined: np.ndarray) -> np.ndarray:
        """Blocks [n, T] completed by `joined` (as encode_joined returns it)."""
        flat = np.concatenate([self.carry, joined.astype(np.int32, copy=False)])
        self.tokens += len(joined)
        n = len(flat) // self.T
        self.carry = flat[n * self.T :].copy()
        self.blocks += n
        return flat[: n * self.T].reshape(n, self.T)


@contextlib.contextmanager
def block_writer(path: str | Path, T: int) -> Iterator[Callable[[np.ndarray], None]]:
    """Write [n, T] block arrays to `path` as an Arrow IPC stream of int32 rows of T tokens: the format of
    `data/blocks` and of token-store shards. Yields `write(blocks)`; empty arrays are skipped."""
    with column_writer(path, "input_ids", pa.list_(pa.int32(), T)) as write_column:

        def write(blocks: np.ndarray) -> None:
            write_column(pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel(), type=pa.int32()), T))

        yield write
