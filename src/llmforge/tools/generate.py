"""Text generation from a finished model dir: greedy or sampled, plain or chat, from Python and the CLI.

Sampling is the default: greedy decoding makes small models repeat themselves. `greedy=True`, or a
temperature of 0 as in most tools, decodes greedily. `chat` renders the saved chat template with a
generation prompt and stops at the model's end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmforge.errors import ConfigError


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    repetition_penalty: float = 1.1,
    greedy: bool = False,
    seed: int | None = None,
) -> str:
    """The prompt's continuation (without the prompt); `temperature=0` is greedy decoding."""
    new = _generate_ids(
        model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, greedy, seed
    )
    return tokenizer.decode(new, skip_special_tokens=True)


@dataclass
class Reply:
    """A chat answer: its text, how many tokens were generated, and whether it ended on a stop token."""

    text: str
    tokens: int
    stopped: bool


@torch.no_grad()
def chat(
    model: Any,
    tokenizer: Any,
    message: str,
    system: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    repetition_penalty: float = 1.1,
    greedy: bool = False,
    seed: int | None = None,
) -> Reply:
    """Answer `message` as the user's turn, rendered with the tokenizer's chat template.

    Generation stops at the ids in the model's generation config (a fine-tuned dir lists its
    end-of-turn token there); `Reply.stopped` is False when it ran to `max_new_tokens` instead."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "This model dir's tokenizer has no chat template, so --chat cannot format a conversation. "
            "Fine-tune it with a finetune block (which saves one), or leave out --chat."
        )
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    new = _generate_ids(
        model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, greedy, seed
    )
    stop = model.generation_config.eos_token_id if model.generation_config is not None else tokenizer.eos_token_id
    stop = set(stop) if isinstance(stop, (list, tuple)) else {stop}
    stopped = len(new) > 0 and int(new[-1]) in stop
    return Reply(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), stopped)


def _generate_ids(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    greedy: bool,
    seed: int | None,
) -> torch.Tensor:
    """The ids generated after `prompt` (the prompt is tokenized without adding special tokens)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if not greedy and temperature < 0:
        raise ConfigError(f"temperature must be positive to sample, or 0 for greedy decoding; got {temperature}.")
    greedy = greedy or temperature == 0  # the limit of sampling as the temperature falls: the likeliest token
    if seed is not None:
        torch.manual_seed(seed)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    if enc["input_ids"].shape[1] == 0:
        enc = {
            "input_ids": torch.tensor([[tokenizer.eos_token_id]]),
            "attention_mask": torch.ones(1, 1, dtype=torch.long),
        }
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if positions and enc["input_ids"].shape[1] > positions:
        raise ConfigError(
            f"The prompt has {enc['input_ids'].shape[1]} tokens but the model has only {positions} positions. "
            "Shorten the prompt."
        )
    if positions and enc["input_ids"].shape[1] + max_new_tokens > positions:
        max_new_tokens = max(1, positions - enc["input_ids"].shape[1])
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "repetition_penalty": repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if greedy:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    out = model.generate(**enc, **kwargs)
    return out[0, enc["input_ids"].shape[1] :]
