"""Tiny stand-ins for the model families people fine-tune: each family's real config class and a tokenizer
shaped like the real one (its special tokens in their real roles, BOS where the family adds one, a chat
template in the family's own layout, with `{% generation %}` markers where the real one has them or the
point is a template with them), saved as a plain HF dir.

Nothing here is made by llmforge: a stand-in is what a user downloads, in miniature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast


@dataclass
class FamilySpec:
    """One family's stand-in: its config class's model_type, its tokens and template."""

    family: str
    specials: list[str]  # in their real id order, first ids of the vocabulary
    eos: str
    end_of_turn: str
    template: str
    marked: str | None = None  # a template without markers: the same one with them, the tests' oracle
    bos: str | None = None  # the tokenizer adds it in front of every text (Llama, Mistral, Gemma)
    pad: str | None = None
    system_turns: bool = True  # Gemma's and Mistral's templates have none
    config: dict[str, Any] = field(default_factory=dict)


def chatml(default_system: str | None = None, markers: bool = True) -> str:
    system = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
        + default_system
        + "<|im_end|>\\n' }}{% endif %}"
        if default_system
        else ""
    )
    answer = "{{ m['content'] + '<|im_end|>' }}"
    return (
        system + "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}"
        + _generation(answer, markers)
        + "{% else %}{{ m['content'] + '<|im_end|>' }}"
        "{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def _generation(text: str, markers: bool) -> str:
    return "{% generation %}" + text + "{% endgeneration %}" if markers else text


def qwen3(markers: bool = False) -> str:
    """Qwen3's layout: an answer's reasoning is dropped once a later user turn follows it, and the turns
    after the last user turn carry a (here empty) <think> block. No markers, as the real one."""
    answer = (
        "{% if loop.index0 > ns.last_user %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{{ answer + '<|im_end|>' }}"
    )
    return (
        "{% set ns = namespace(last_user=-1) %}{% for m in messages %}"
        "{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}"
        "{% set answer = m['content'].split('</think>')[-1].lstrip('\\n') %}"
        + _generation(answer, markers)
        + "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
        "{% endif %}"
    )


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (  # v0.1: no system turn, the answer closed by EOS
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
GEMMA = (  # the assistant is written as `model`
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] | trim + '<end_of_turn>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] | trim + '<end_of_turn>' }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
PHI3 = (  # Phi-3-mini's own layout, including the EOS it writes after a conversation without a generation prompt
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}{% else %}{{ m['content'] + '<|end|>' }}"
    "{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}

FAMILY_SPECS = {
    "gpt2": FamilySpec(  # OpenAI's: one special token, no pad, no template (the recipe brings chatml)
        "gpt2",
        ["<|endoftext|>"],
        "<|endoftext|>",
        "<|im_end|>",
        "",
        config={"n_embd": 32, "n_layer": 2, "n_head": 2},
    ),
    "llama": FamilySpec(  # Llama 3: BOS, an end-of-turn that is not EOS, no pad, grouped-query attention
        "llama",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|end_of_text|>",
        "<|eot_id|>",
        LLAMA3,
        bos="<|begin_of_text|>",
        config={**SMALL, "num_key_value_heads": 1, "tie_word_embeddings": True},
    ),
    "qwen2": FamilySpec(  # a pad distinct from EOS, a default system line
        "qwen2",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "<|im_end|>",
        "<|im_end|>",
        chatml("You are a helpful assistant.", markers=False),  # Qwen2's own has no markers
        chatml("You are a helpful assistant."),
        pad="<|endoftext|>",
        config={**SMALL, "num_key_value_heads": 1},
    ),
    "qwen3": FamilySpec(
        "qwen3",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        "<|im_end|>",
        "<|im_end|>",
        qwen3(),
        qwen3(markers=True),
        pad="<|endoftext|>",
        config={**SMALL, "num_key_value_heads": 1, "head_dim": 16},
    ),
    "gemma": FamilySpec(  # Gemma 2: logit soft-capping, sliding window, tied embeddings, eager attention
        "gemma2",
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "<eos>",
        "<end_of_turn>",
        GEMMA,
        bos="<bos>",
        pad="<pad>",
        system_turns=False,
        config={**SMALL, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16},
    ),
    "mistral": FamilySpec(  # a sliding window; the answer ends with EOS itself
        "mistral",
        ["<unk>", "<s>", "</s>"],
        "</s>",
        "</s>",
        MISTRAL,
        bos="<s>",
        system_turns=False,
        config={**SMALL, "num_key_value_heads": 1, "sliding_window": 8},
    ),
    "phi3": FamilySpec(  # fused qkv and gate_up projections; EOS doubles as pad
        "phi3",
        ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "<|endoftext|>",
        "<|end|>",
        PHI3,
        pad="<|endoftext|>",
        config=dict(SMALL),
    ),
    "smollm3": FamilySpec(  # layers without rotary positions, a pad token of its own
        "smollm3",
        ["<|im_start|>", "<|im_end|>", "<|finetune_right_pad_id|>"],
        "<|im_end|>",
        "<|im_end|>",
        chatml(),
        pad="<|finetune_right_pad_id|>",
        config={**SMALL, "num_key_value_heads": 1, "no_rope_layers": [1, 0]},
    ),
}


def family_tokenizer(spec: FamilySpec, text: str, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the family's special tokens first, in their roles."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec.specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([p for p in text.split("\n\n") if p.strip()], trainer=trainer)
    if spec.bos:
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A",
            pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, bpe.token_to_id(spec.bos))],
        )
    else:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    roles = {"eos_token": spec.eos, "bos_token": spec.bos, "pad_token": spec.pad}
    extra = [t for t in spec.specials if t not in roles.values() and t != "<unk>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        **{k: v for k, v in roles.items() if v},
        unk_token="<unk>" if "<unk>" in spec.specials else None,
        extra_special_tokens=extra or None,
    )
    if spec.template:
        tok.chat_template = spec.template
    return tok


def build_base(spec: FamilySpec, path: Path, text: str, positions: int = 512) -> Path:
    """Save `spec`'s stand-in (random weights, seeded) and its tokenizer in `path`."""
    tok = family_tokenizer(spec, text)
    ids = {
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    positions_key = "n_positions" if spec.family == "gpt2" else "max_position_embeddings"
    config = AutoConfig.for_model(spec.family, vocab_size=len(tok), **{positions_key: positions}, **ids, **spec.config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
