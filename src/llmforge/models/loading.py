"""Loading a finished model dir (or a LoRA adapter dir onto its base), how many positions a model has, and
the loss a causal LM's forward computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmforge import hub
from llmforge.errors import ConfigError, first_line
from llmforge.models.lora import is_adapter_dir, load_adapter_model


def load_model_dir(model_dir: str | Path) -> tuple[Any, Any]:
    """A model dir (or a LoRA adapter dir, loaded onto its base) and its tokenizer, in eval mode."""
    path = Path(model_dir)
    if hub.is_hub_name(str(model_dir)):
        tok = hub.load(AutoTokenizer, str(model_dir), "the model")
        model = hub.load(AutoModelForCausalLM, str(model_dir), "the model").eval()
        causal_lm_loss(model)
        return model, tok
    adapter = is_adapter_dir(path)
    if not (path / "config.json").is_file() and not adapter:
        raise ConfigError(
            f"'{path}' is not a model directory (no config.json). Pass a model dir such as a run's finetune/final "
            "or train/final, or the run dir itself."
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = load_adapter_model(path, tok) if adapter else AutoModelForCausalLM.from_pretrained(str(path))
    except (OSError, ValueError, SafetensorError) as exc:  # missing, malformed or truncated files
        raise ConfigError(
            f"Cannot load the model in '{path}': {first_line(exc)}. "
            "The directory is incomplete or damaged: save or copy it again."
        ) from exc
    model.eval()
    causal_lm_loss(model)
    return model, tok


def causal_lm_loss(model: Any) -> Any:
    """Name the causal-LM loss on a model whose class name names none (GPT-2's `GPT2LMHeadModel`).

    transformers picks a model's loss by matching its class name against its loss table; a name that
    matches nothing (`...LMHeadModel`) gets the causal-LM loss anyway, with a warning on the first forward
    with labels. llmforge only builds causal LMs, so it names that same loss: the numbers do not change,
    the warning is not raised. A loss the class name did pick is kept. Returns the model.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's own model
    if hasattr(base, "loss_type") and base.loss_type is None:
        base.loss_type = "ForCausalLM"
    return model


def max_positions(config: Any) -> int | None:
    """The positions a model config allows (n_positions, max_position_embeddings or n_ctx), None if it says none."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            return value
    return None
