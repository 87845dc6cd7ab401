"""Text generation from a finished model dir: greedy or sampled, from Python and the CLI.

Sampling is the default: greedy decoding makes small models repeat themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmforge.errors import ConfigError


def load(model_dir: str | Path) -> tuple[Any, Any]:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"'{path}' is not a model directory (no config.json). Pass a run's train/final dir.")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Cannot load the model in '{path}': {first}") from exc
    model.eval()
    return model, tok


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
    """The prompt's continuation (without the prompt)."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if not greedy and temperature <= 0:
        raise ConfigError(f"temperature must be positive for sampling, got {temperature} (or use greedy).")
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
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
