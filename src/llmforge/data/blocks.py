"""Blocks: the training split and the validation split as `context_length` token blocks, an artefact.

Each split's documents are tokenized batch by batch, joined with EOS and cut into full blocks
(llmforge.data.packer), streamed to Arrow in `data/blocks/` with bounded memory. The statistics
(tokens, blocks, tokens per word, an add-one unigram model's validation perplexity) are its manifest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmforge import rundir
from llmforge.data import arrowio
from llmforge.data.packer import Packer, block_writer, encode_joined
from llmforge.errors import DataError


def build_blocks(
    documents: Path, tok: Any, context_length: int, out: Path, fingerprint: str, num_proc: int | None, console: Console
) -> dict[str, Any]:
    """Tokenize each split of `documents` and write its full blocks to `out` atomically; the stats."""
    T = context_length
    docs = datasets.load_from_disk(str(documents))
    doc_stats = rundir.read_manifest(documents)["info"]
    num_proc = num_proc or _default_num_proc(docs)
    stats: dict[str, Any] = {"context_length": T, "vocab_size": len(tok)}
    scratch = out.parent / f".blocks-scratch.tmp-{os.getpid()}"  # map's cache files, never in documents/
    scratch.mkdir(parents=True, exist_ok=True)
    train_counts = np.zeros(len(tok), dtype=np.int64)
    try:
        with rundir.atomic_dir(out, fingerprint, stats) as tmp, _progress(console) as progress:
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
    return stats


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


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("documents"),
        TimeRemainingColumn(),
        console=console,
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


def open_blocks(path: Path) -> datasets.DatasetDict:
    """The blocks artefact: Arrow blocks saved in `path`, or the files its manifest lists (`files`: a
    packed source's shards, read where they are)."""
    info = (rundir.read_manifest(path) or {}).get("info", {})
    if "files" not in info:
        return datasets.load_from_disk(str(path))
    splits = {
        split: datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
        for split, files in info["files"].items()
    }
    return datasets.DatasetDict(splits)
