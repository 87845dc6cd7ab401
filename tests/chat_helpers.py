"""Helpers for the fine-tuning tests: a tiny base model dir built in seconds, and small data sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llmforge.plugin.manager import get_plugins

REPO = Path(__file__).resolve().parents[1]
INSTRUCT = REPO / "examples" / "data" / "instruct"
EOS, PAD = "<|endoftext|>", "<|pad|>"

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who is Mr. Darcy?"},
    {"role": "assistant", "content": "A proud gentleman."},
    {"role": "user", "content": "And Jane Bennet?"},
    {"role": "assistant", "content": "Elizabeth's elder sister."},
]

OWN = (  # a Zephyr-like template whose turns end with the tokenizer's EOS, with generation markers
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def tiny_tokenizer(text: str, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like the tokenizer stage trains (EOS doubles as BOS)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([p for p in text.split("\n\n") if p.strip()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def tiny_base(path: Path, text: str, arch: str = "gpt2", width: int = 32, positions: int = 96) -> Path:
    """Save a 1-layer model of `arch` and its tokenizer in `path`: a base any test can fine-tune."""
    tok = tiny_tokenizer(text)
    torch.manual_seed(0)
    ids = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=width, n_layer=1, n_head=2, **ids)
        model = GPT2LMHeadModel(config)
    else:
        common = {
            "vocab_size": len(tok),
            "max_position_embeddings": positions,
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_attention_heads": 2,
            **ids,
        }
        if arch == "gemma2":  # logit soft-capping, a sliding window on every other layer, no SDPA in transformers
            config = Gemma2Config(
                **common, num_hidden_layers=2, num_key_value_heads=1, head_dim=width // 2, sliding_window=16
            )
            model = Gemma2ForCausalLM(config)
        else:
            model = LlamaForCausalLM(LlamaConfig(**common, num_hidden_layers=1, num_key_value_heads=2))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def registry(kind: str) -> Any:
    """A registry of the installed plugins (the built-ins come through their entry points)."""
    return get_plugins().registries[kind]
