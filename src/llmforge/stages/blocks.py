"""Blocks stage: the documents tokenized with the run's tokenizer and packed into `context_length` blocks.

Its own artefact (`data/blocks/`) with its own fingerprint (documents, tokenizer, context length), so
changing only `model.context_length` re-packs without re-reading the corpus. A data source whose rows
are already packed (the token store) gives its blocks as they are: the manifest lists its files.
"""

from __future__ import annotations

from typing import Any

from llmforge import rundir
from llmforge.data.blocks import build_blocks
from llmforge.stages.context import Context

ARTEFACT = "data/blocks"


def enabled(recipe: Any) -> bool:
    return recipe.data is not None and recipe.tokenizer is not None and recipe.model is not None


def describe(out: dict[str, Any]) -> str:
    if "train" not in out:
        return ""
    return (
        f"{out['train']['blocks']:,} train / {out['validation']['blocks']:,} val blocks of {out['context_length']} "
        "tokens"
    )


def fingerprint(ctx: Context) -> str:
    return rundir.fingerprint(
        "blocks", ctx.fingerprints["data"], ctx.fingerprints["tokenizer"], ctx.recipe.model.context_length
    )


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.recipe.data
    T = ctx.recipe.model.context_length
    out = ctx.path(ARTEFACT)
    ctx.cache.pop("blocks", None)
    source = ctx.source(cfg)
    if source.plugin.packed is not None:
        blocks, info = source.plugin.packed(cfg, T)
        stats = _packed_stats(blocks, info)
        with rundir.atomic_dir(out, ctx.fingerprints["blocks"], stats):
            pass  # the blocks stay where the source keeps them
        ctx.cache["blocks"] = blocks
    else:
        ctx.console.print(f"  tokenizing and packing into blocks of {T} tokens")
        stats = build_blocks(
            ctx.path("data", "documents"),
            ctx.tokenizer(),
            T,
            out,
            ctx.fingerprints["blocks"],
            cfg.num_proc,
            ctx.console,
        )
        documents = rundir.read_manifest(ctx.path("data", "documents"))["info"]
        rundir.write_json(ctx.path("data", "stats.json"), {"documents": documents, "blocks": stats})
    return stats


def _packed_stats(blocks: Any, info: dict[str, Any]) -> dict[str, Any]:
    stats: dict[str, Any] = {"context_length": info["context_length"], "vocab_size": info.get("vocab_size")}
    stats["files"] = {split: [f["filename"] for f in ds.cache_files] for split, ds in blocks.items()}
    for split in ("train", "validation"):
        stats[split] = {k: info[split][k] for k in ("tokens", "blocks", "dropped_tokens") if k in info[split]}
    if "unigram_perplexity" in info.get("validation", {}):
        stats["validation"]["unigram_perplexity"] = info["validation"]["unigram_perplexity"]
    stats["tokens_per_word"] = info.get("tokens_per_word")
    return stats
