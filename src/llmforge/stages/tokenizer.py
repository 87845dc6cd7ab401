"""Tokenizer stage: train a byte-level BPE tokenizer on the training documents, or load one.

The result is a `PreTrainedTokenizerFast` saved in `tokenizer/` (llmforge.data.tokenizer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llmforge import rundir
from llmforge.config.schema import TokenizerConfig
from llmforge.data.tokenizer import load_pretrained_tokenizer, text_bytes, train_bpe
from llmforge.models.families import AUTO
from llmforge.stages.context import Context
from llmforge.training import sizing
from llmforge.training.distributed import world_size

ARTEFACT = "tokenizer"


def enabled(recipe: Any) -> bool:
    return recipe.tokenizer is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    return f"vocab {out['vocab_size']:,}" if "vocab_size" in out else ""


def fingerprint(ctx: Context) -> str:
    cfg: TokenizerConfig = ctx.recipe.tokenizer
    source = ctx.fingerprints["data"] if cfg.train else cfg.path
    return rundir.fingerprint("tokenizer", vars(cfg), source, ctx.recipe.model.context_length)


def run(ctx: Context) -> dict[str, Any]:
    cfg: TokenizerConfig = ctx.recipe.tokenizer
    sized = None
    if cfg.train and cfg.vocab_size == AUTO:
        train_bytes = None if ctx.recipe.data.streaming else text_bytes(ctx.path("data", "documents"))
        size, sized = sizing.vocabulary_for_budget(ctx.recipe.model, ctx.recipe.train, train_bytes, world_size())
        ctx.console.print(f"  tokenizer.vocab_size auto: {sizing.describe_vocabulary(sized)}")
        cfg = dataclasses.replace(cfg, vocab_size=size)
    tok = train_bpe(cfg, ctx.path("data", "documents")) if cfg.train else load_pretrained_tokenizer(cfg)
    tok.model_max_length = ctx.recipe.model.context_length
    info = {"vocab_size": len(tok), "eos_token": tok.eos_token, "pad_token": tok.pad_token, "trained": cfg.train}
    if sized:
        info["sized"] = sized  # vocab_size auto: the size it chose, and why
    with rundir.atomic_dir(ctx.path(ARTEFACT), ctx.fingerprints["tokenizer"], info) as tmp:
        tok.save_pretrained(str(tmp))
    ctx.cache.pop("tokenizer", None)
    ctx.console.print(f"  vocabulary of {len(tok):,} tokens (eos {tok.eos_token!r}, pad {tok.pad_token!r})")
    return info
