"""Tokenizers: train a byte-level BPE on the training documents, or load one, with explicit EOS and pad.

The pad token is never silently an existing real token.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow.compute as pc
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llmforge import hub
from llmforge.config.schema import TokenizerConfig
from llmforge.data import arrowio
from llmforge.errors import ConfigError, first_line

BYTE_ALPHABET = 256


def train_bpe(cfg: TokenizerConfig, documents: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the training documents of `documents` (data/documents)."""
    if cfg.path:
        raise ConfigError(
            "tokenizer.path and tokenizer.train: true exclude each other: leave train out (or false) to load "
            "the tokenizer at path, or path out to train one."
        )
    specials = list(dict.fromkeys(cfg.special_tokens))
    if cfg.eos_token not in specials:
        raise ConfigError(
            f"tokenizer.eos_token {cfg.eos_token!r} is not in tokenizer.special_tokens {specials}: add it."
        )
    if cfg.pad_token is not None and cfg.pad_token not in specials:
        raise ConfigError(
            f"tokenizer.pad_token {cfg.pad_token!r} is not in tokenizer.special_tokens {specials}: add it, "
            "or set pad_token equal to eos_token if you mean to pad with EOS."
        )
    minimum = BYTE_ALPHABET + len(specials)
    if cfg.vocab_size <= minimum:
        raise ConfigError(
            f"tokenizer.vocab_size {cfg.vocab_size} leaves no room for merges: the 256 byte symbols and "
            f"{len(specials)} special tokens need {minimum}. Use a vocab_size above {minimum} (thousands is typical)."
        )
    docs = datasets.load_from_disk(str(documents))["train"]
    if cfg.max_documents is not None:
        docs = docs.select(range(min(cfg.max_documents, len(docs))))

    def batches():
        yield from arrowio.column_batches(docs, "text")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(batches(), trainer=trainer, length=len(docs))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=cfg.eos_token,
        bos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        additional_special_tokens=[t for t in specials if t not in (cfg.eos_token, cfg.pad_token)] or None,
    )


def text_bytes(documents: Path) -> int:
    """UTF-8 bytes of the training documents in `documents` (data/documents)."""
    texts = datasets.load_from_disk(str(documents))["train"].data.column("text")
    return int(pc.sum(pc.binary_length(texts)).as_py() or 0)


def load_pretrained_tokenizer(cfg: TokenizerConfig) -> PreTrainedTokenizerBase:
    """tokenizer.path (a dir or a hub name), with the EOS and pad tokens the recipe asks for."""
    if not cfg.path:
        raise ConfigError("tokenizer.train is false but tokenizer.path is empty: name a tokenizer dir or hub name.")
    local = Path(cfg.path).expanduser()
    if (local.is_absolute() or cfg.path.startswith((".", "~"))) and not local.exists():
        raise ConfigError(
            f"tokenizer.path '{cfg.path}' does not exist. Point it at a tokenizer dir (e.g. a previous run's "
            "tokenizer/) or a hub name."
        )
    try:
        tok = hub.load(AutoTokenizer, cfg.path, "tokenizer.path")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load tokenizer.path '{cfg.path}': {first_line(exc)}") from exc
    if not tok.is_fast:
        raise ConfigError(f"tokenizer.path '{cfg.path}' has no fast (Rust) tokenizer; llmforge needs one.")
    if tok.eos_token is None:
        if cfg.eos_token not in tok.get_vocab():
            tok.add_special_tokens({"eos_token": cfg.eos_token})
        else:
            tok.eos_token = cfg.eos_token
    if tok.pad_token is None and cfg.pad_token is not None:
        if cfg.pad_token == tok.eos_token:
            tok.pad_token = tok.eos_token  # asked for explicitly
        else:
            tok.add_special_tokens({"pad_token": cfg.pad_token})
    return tok
