"""Low-rank adapters through peft: target modules per architecture, new-token rows, merge or save.

`finetune.lora` in a recipe becomes a `peft.LoraConfig` here and nowhere else: r -> r, alpha ->
lora_alpha, dropout -> lora_dropout, target_modules -> target_modules (checked against the model's own
module names first). Rows of the embedding added for a chat template's new tokens are trained through
peft's `trainable_token_indices`, so the new tokens are learnt while the old rows stay frozen.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from llmforge.config.schema import LoraConfig
from llmforge.errors import ConfigError

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEFAULT_TARGETS = {
    "gpt2": ["c_attn", "c_proj"],
    "llama": ATTENTION,
    "mistral": ATTENTION,
    "qwen2": ATTENTION,
    "qwen3": ATTENTION,
    "gemma": ATTENTION,
    "gemma2": ATTENTION,
    "phi3": ["qkv_proj", "o_proj"],
}


def apply_lora(model: torch.nn.Module, cfg: LoraConfig, new_token_ids: list[int] | None = None) -> Any:
    """Wrap `model` in a peft model with LoRA adapters (and trainable rows for `new_token_ids`)."""
    import peft

    if cfg.r < 1:
        raise ConfigError(f"finetune.lora.r must be at least 1, got {cfg.r}.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"finetune.lora.dropout must be in [0, 1), got {cfg.dropout}.")
    targets = target_modules(model, cfg)
    matched = [m for name, m in model.named_modules() if any(_matches(name, t) for t in targets)]
    from transformers.pytorch_utils import Conv1D

    lora = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in matched),  # GPT-2 stores its weights transposed
        trainable_token_indices=_token_rows(model, list(new_token_ids or [])),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, lora)


def _token_rows(model: torch.nn.Module, ids: list[int]) -> list[int] | dict[str, list[int]] | None:
    """New tokens' rows to train: in the input embedding (peft follows a tied output layer), and in an
    untied output layer too, or the model could never learn to write the new tokens (e.g. <|im_end|>)."""
    if not ids:
        return None
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or outputs.weight is inputs.weight:
        return ids
    names = {module: name for name, module in model.named_modules()}
    return {names[inputs]: ids, names[outputs]: ids}


def target_modules(model: torch.nn.Module, cfg: LoraConfig) -> list[str]:
    """The configured targets, or the architecture's default; each must name modules of this model."""
    model_type = getattr(model.config, "model_type", "?")
    targets = cfg.target_modules
    if not targets:
        targets = DEFAULT_TARGETS.get(model_type) or _peft_default(model_type)
        if not targets:
            raise ConfigError(
                f"There is no default LoRA target for model type '{model_type}'. Set finetune.lora.target_modules "
                f"to some of this model's modules: {', '.join(adaptable_modules(model))}."
            )
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(_matches(name, t) for name in names)]
    if missing:
        raise ConfigError(
            f"finetune.lora.target_modules {missing} name(s) no module of this {model_type} model. "
            f"Its modules that LoRA can adapt: {', '.join(adaptable_modules(model))}."
        )
    return list(targets)


def check_targets(base: str, cfg: LoraConfig) -> None:
    """Check the targets against the base's modules before anything is written (weights not loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    target_modules(model, cfg)


def adaptable_modules(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of the modules LoRA can wrap (linear, Conv1D, embedding, convolution)."""
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, kinds)})


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of targets: the full name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


def _peft_default(model_type: str) -> list[str] | None:
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    except ImportError:  # pragma: no cover - moved in some peft versions
        return None
    found = mapping.get(model_type)
    return list(found) if found else None


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def is_adapter_dir(path: Any) -> bool:
    from pathlib import Path

    return (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file()


def load_adapter_model(path: Any, tokenizer: Any) -> torch.nn.Module:
    """An adapter dir's base model (embeddings resized to the tokenizer, as in training) with the adapter merged."""
    import json
    from pathlib import Path

    import peft
    from transformers import AutoModelForCausalLM, GenerationConfig

    base = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"'{path}' holds a LoRA adapter without base_model_name_or_path in adapter_config.json.")
    try:
        model = AutoModelForCausalLM.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"The adapter in '{path}' was trained on '{base}', which cannot be loaded ({exc}). Put the base "
            "model back there, or edit base_model_name_or_path in adapter_config.json."
        ) from exc
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = peft.PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    if (Path(path) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft warns at every save that it stores the resized embedding; that is what we want, said once here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
