"""A reusable sharded token store: documents tokenized and packed once, in parallel, read by many runs.

    llmforge prepare recipe.yaml --store STORE [--num-proc 8]     # the recipe's data and tokenizer stages
    data:      {source: token_store, path: STORE}                 # then, in any number of recipes
    tokenizer: {train: false, path: STORE/tokenizer}

STORE/
  store.json                 the manifest, written last: context length, vocabulary, and for every shard
                             its split, file, blocks, tokens and bytes
  tokenizer/                 the tokenizer the blocks were made with
  train-00000.arrow ...      Arrow IPC streams of int32 blocks of `context_length` tokens
  validation-00000.arrow

The validation split is held out by document before packing (the recipe's data stage) and packed
exactly like the training split. Each shard packs a contiguous range of documents in its own
process; its last partial block (< context_length tokens) is dropped and counted. Every shard is
written to a temporary name and renamed, the whole store is built beside its final place and
renamed into it, and a shard whose size or block count does not match the manifest is an error.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmforge import rundir
from llmforge.data.arrowio import column_batches
from llmforge.data.packer import Packer, block_writer, encode_joined
from llmforge.errors import ConfigError, DataError

MANIFEST = "store.json"
VERSION = 1


def prepare(recipe: Any, store: str | Path, work: str | Path, num_proc: int | None = None, console: Any = None) -> dict:
    """Run the recipe's data and tokenizer stages in `work`, then pack their output into `store`."""
    from rich.console import Console

    console = console or Console()
    recipe.run(work, only="data", console=console)
    recipe.run(work, only="tokenizer", console=console)
    num_proc = num_proc or recipe.data.num_proc or min(os.cpu_count() or 1, 8)
    started = time.perf_counter()
    info = build(
        Path(work) / "data" / "documents", Path(work) / "tokenizer", recipe.model.context_length, store, num_proc
    )
    seconds = time.perf_counter() - started
    mb = info["input_bytes"] / 2**20
    console.print(
        f"  token store {store}: {info['train']['blocks']:,} train and {info['validation']['blocks']:,} validation "
        f"blocks of {info['context_length']} tokens in {len(info['shards'])} shards; {mb:,.1f} MB of text in "
        f"{seconds:.1f} s ({mb / seconds:,.1f} MB/s, {num_proc} processes)"
    )
    return info


def build(documents: Path, tokenizer: Path, context_length: int, store: str | Path, num_proc: int) -> dict:
    """Tokenize and pack every split of a saved DatasetDict of documents into shards, `num_proc` at a time."""
    import datasets

    store = Path(store)
    dd = datasets.load_from_disk(str(documents))
    jobs = []
    for split, ds in dd.items():
        pieces = num_proc if split == "train" else 1  # validation: one stream, as in a run's own blocks
        bounds = np.linspace(0, len(ds), pieces + 1).astype(int)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if b > a:
                jobs.append((str(documents / split), split, int(a), int(b), f"{split}-{i:05d}.arrow"))
    input_bytes = sum(_text_bytes(documents / split) for split in dd)
    with rundir.atomic_dir(store, "token-store") as tmp:
        shutil.copytree(tokenizer, tmp / "tokenizer", ignore=shutil.ignore_patterns(rundir.MANIFEST))
        args = [(*job, str(tokenizer / "tokenizer.json"), context_length, str(tmp)) for job in jobs]
        if num_proc > 1:
            # one tokenizer thread per worker: the processes are the parallelism (no oversubscription)
            saved = os.environ.get("RAYON_NUM_THREADS")
            os.environ["RAYON_NUM_THREADS"] = "1"
            try:
                with multiprocessing.get_context("spawn").Pool(num_proc) as pool:
                    results = pool.map(_pack_shard, args)
            finally:
                os.environ.pop("RAYON_NUM_THREADS") if saved is None else os.environ.update(RAYON_NUM_THREADS=saved)
        else:
            results = [_pack_shard(a) for a in args]
        info = _manifest(results, context_length, tmp / "tokenizer", input_bytes)
        rundir.write_json(tmp / MANIFEST, info)  # last: a store without it is never read
    return info


def _text_bytes(split_dir: Path) -> int:
    return sum(p.stat().st_size for p in split_dir.glob("*.arrow"))


def _pack_shard(job: tuple) -> dict:
    """One process: tokenize documents [start, stop) of a split and write their blocks to one shard."""
    import datasets
    from tokenizers import Tokenizer

    split_dir, split, start, stop, name, tok_file, T, out = job
    tok = Tokenizer.from_file(tok_file)
    config = json.loads(Path(tok_file).with_name("tokenizer_config.json").read_text())
    eos = tok.token_to_id(config["eos_token"])
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ds = datasets.load_from_disk(split_dir)
    packer, counts = Packer(T), np.zeros(vocab, dtype=np.int64)
    final = Path(out) / name
    tmp = final.with_name(f".{name}.tmp-{os.getpid()}")
    with block_writer(tmp, T) as write:
        for texts in column_batches(ds, "text", start=start, stop=stop):
            joined = encode_joined(tok, texts, eos)
            if split == "train":
                counts += np.bincount(joined, minlength=vocab)
            write(packer.add(joined))
    os.replace(tmp, final)
    return {
        "split": split,
        "file": name,
        "documents": stop - start,
        "blocks": packer.blocks,
        "tokens": packer.tokens,
        "dropped_tokens": len(packer.carry),
        "bytes": final.stat().st_size,
        "counts": counts if split == "train" else None,
    }


def _manifest(results: list[dict], T: int, tokenizer: Path, input_bytes: int) -> dict:
    import datasets

    counts = sum(r["counts"] for r in results if r["counts"] is not None)
    info: dict[str, Any] = {"version": VERSION, "context_length": T, "vocab_size": int(len(counts))}
    for split in dict.fromkeys(r["split"] for r in results):
        mine = [r for r in results if r["split"] == split]
        info[split] = {k: sum(r[k] for r in mine) for k in ("documents", "tokens", "blocks", "dropped_tokens")}
        if info[split]["blocks"] == 0:
            raise DataError(
                f"The {split} split has {info[split]['tokens']} tokens, fewer than one block of {T}. "
                "Add data, raise data.val_fraction, or lower model.context_length."
            )
    val = [r for r in results if r["split"] == "validation"]
    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    nll = targets = 0
    for r in val:
        blocks = np.asarray(datasets.Dataset.from_file(str(tokenizer.parent / r["file"]))["input_ids"])
        nll -= float(logp[blocks[:, 1:].ravel()].sum())
        targets += blocks[:, 1:].size
    info["validation"]["unigram_perplexity"] = float(np.exp(nll / max(targets, 1)))
    info["input_bytes"] = input_bytes
    info["shards"] = [{k: r[k] for k in ("split", "file", "documents", "blocks", "tokens", "bytes")} for r in results]
    return info


def read_manifest(store: str | Path) -> dict:
    path = Path(store) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"'{store}' is not a token store (it has no {MANIFEST}). Build one with: llmforge prepare RECIPE --store "
            f"{store}"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"The manifest {path} is not valid JSON ({exc}): rebuild the store.") from exc


def open_token_store(config: Any, context_length: int) -> tuple[Any, dict]:
    """The token_store source's blocks: a DatasetDict (memory-mapped) of every split, each shard checked
    against the manifest, and the counts (documents, blocks per split; the tokenizer the blocks need)."""
    import datasets

    store = config.path
    if not store:
        raise ConfigError("data.source token_store needs data.path: the store directory `llmforge prepare` wrote.")
    store = Path(store)
    info = read_manifest(store)
    if info["context_length"] != context_length:
        raise ConfigError(
            f"Token store {store} holds blocks of {info['context_length']} tokens, but model.context_length is "
            f"{context_length}. Set model.context_length: {info['context_length']}, or prepare another store."
        )
    splits: dict[str, list[Any]] = {}
    for shard in info["shards"]:
        path = store / shard["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != shard["bytes"]:
            found = "missing" if size is None else f"{size:,} bytes"
            raise DataError(
                f"Token store shard {path} is {found}, but the manifest says {shard['bytes']:,} bytes: it is truncated "
                f"or was changed. Rebuild the store (llmforge prepare ... --store {store})."
            )
        ds = datasets.Dataset.from_file(str(path))
        if len(ds) != shard["blocks"]:
            raise DataError(
                f"Token store shard {path} holds {len(ds):,} blocks, but the manifest says {shard['blocks']:,}. "
                f"Rebuild the store (llmforge prepare ... --store {store})."
            )
        splits.setdefault(shard["split"], []).append(ds)
    dd = datasets.DatasetDict({k: datasets.concatenate_datasets(v) for k, v in splits.items()})
    stats = {**info, "tokenizer": str((store / "tokenizer").resolve()), "token_store": str(store)}
    return dd, stats


def token_store_inputs(config: Any) -> list[Path]:
    """What a rerun compares: the store's manifest (written last, it names every shard's size)."""
    path = Path(config.path or "") / MANIFEST
    return [path] if path.is_file() else []
