"""Data stage: read documents through a data-source plugin, validate them, split by document.

Writes `data/documents/` (llmforge.data.documents). With `data.streaming: true` only the head of the
stream is read (validation rows, the tokenizer's sample); training reads the stream itself. A source
whose rows are already packed (the token store) is checked here and read as it is by the blocks stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from llmforge import rundir
from llmforge.config.schema import DataConfig
from llmforge.data import documents
from llmforge.errors import ConfigError
from llmforge.stages.context import Context

ARTEFACT = "data/documents"


def enabled(recipe: Any) -> bool:
    return recipe.data is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    if "train" not in out:
        return ""
    return f"{out['train']['documents']:,} train / {out['validation']['documents']:,} val documents"


def fingerprint(ctx: Context) -> str:
    cfg: DataConfig = ctx.recipe.data
    return rundir.fingerprint("data", vars(cfg), ctx.source(cfg).inputs())


def run(ctx: Context) -> dict[str, Any]:
    cfg: DataConfig = ctx.recipe.data
    source = ctx.source(cfg)
    shutil.rmtree(source.cache_dir, ignore_errors=True)  # never reuse a killed run's copy
    out = ctx.path(ARTEFACT)
    if source.plugin.packed is not None:
        return _check_packed(ctx, source)
    if cfg.streaming:
        tok = ctx.recipe.tokenizer
        stats = documents.stream_head(source, out, ctx.fingerprints["data"], tok.max_documents if tok else None)
        V, rows = cfg.val_documents, stats["streaming"]["validation_rows"]
        ctx.console.print(
            f"  streaming from {source.where}: {stats['validation']['documents']:,} validation documents (rows "
            f"0-{rows - 1}) held out; {stats['train']['documents']:,} documents after them sampled for the "
            f"tokenizer; training reads the stream from row {V}"
        )
    else:
        stats = documents.split_documents(source, out, ctx.fingerprints["data"])
        ctx.console.print(
            f"  {stats['train']['documents']:,} training and {stats['validation']['documents']:,} validation "
            f"documents, {stats['train']['words'] + stats['validation']['words']:,} words"
            + (f" ({stats['empty_documents_dropped']} empty dropped)" if stats["empty_documents_dropped"] else "")
        )
        say_validation_share(ctx, stats, cfg.val_fraction)
    rundir.write_json(ctx.path("data", "stats.json"), {"documents": stats})
    return stats


def say_validation_share(ctx: Context, stats: dict[str, Any], fraction: float) -> None:
    """One line when validation is not whole documents, or holds a share of the text far from the one asked."""
    share = stats["validation_share"]
    if stats["held_out"] == "tails":
        ctx.console.print(
            f"  validation: the last {fraction:.0%} of each document ({share:.1%} of the characters): the "
            f"{stats['train']['documents']:,} documents are too few and long to hold out whole ones at "
            f"data.val_fraction {fraction}"
        )
    elif abs(share - fraction) > fraction / 2:
        ctx.console.print(
            f"  [yellow]validation holds {share:.1%} of the characters, data.val_fraction asked {fraction:.1%}[/]"
        )


def _check_packed(ctx: Context, source: documents.Source) -> dict[str, Any]:
    """A packed source (the token store): its blocks checked, and the tokenizer they were made with."""
    cfg = source.config
    _, info = source.plugin.packed(cfg, ctx.recipe.model.context_length)
    expected = Path(info["tokenizer"]).resolve() if info.get("tokenizer") else None
    tok = ctx.recipe.tokenizer
    if expected is not None and (
        tok is None or tok.train or not tok.path or Path(tok.path).expanduser().resolve() != expected
    ):
        raise ConfigError(
            f"Data source '{cfg.source}' holds blocks made with the tokenizer {expected}: set tokenizer: "
            f"{{train: false, path: {expected}}}."
        )
    out = {
        split: {"documents": info[split]["documents"], "blocks": info[split]["blocks"]}
        for split in ("train", "validation")
    }
    out["packed"] = str(cfg.path)
    with rundir.atomic_dir(ctx.path(ARTEFACT), ctx.fingerprints["data"], out):
        pass  # nothing to copy: the source's blocks are the data
    ctx.console.print(
        f"  {cfg.source} {cfg.path}: {info['train']['blocks']:,} train and {info['validation']['blocks']:,} "
        f"validation blocks of {info['context_length']} tokens"
    )
    return out
