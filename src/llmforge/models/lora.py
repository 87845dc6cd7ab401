"""Low-rank adapters through peft: target modules, new-token rows, merge or save.

`finetune.lora` in a recipe becomes a `peft.LoraConfig` here and nowhere else: r -> r, alpha ->
lora_alpha, dropout -> lora_dropout, target_modules -> target_modules (peft's all-linear by default, a
list checked against the model's own module names first), dora -> use_dora, rslora -> use_rslora. Rows
of the embedding added for a chat template's new tokens are trained through peft's
`trainable_token_indices`, so the new tokens are learnt while the old rows stay frozen.

`quantize` (QLoRA) loads the frozen base's linear layers in 4 bits through bitsandbytes (nf4 or fp4,
double quantization, computing in the training precision); merging then loads the base again in full
precision and merges the trained adapters into it, so the merged model is a plain, unquantized HF dir.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from llmforge import hub
from llmforge.config.schema import LoraConfig
from llmforge.errors import ConfigError

ALL_LINEAR = "all-linear"  # peft's own shorthand: every linear or Conv1D layer but the output head


def apply_lora(
    model: torch.nn.Module, cfg: LoraConfig, new_token_ids: list[int] | None = None, base: str | None = None
) -> Any:
    """Wrap `model` in a peft model with LoRA adapters (and trainable rows for `new_token_ids`). A hub
    `base` pinned as `name@revision` is saved as peft writes a pin: the name, and the revision beside it."""
    import peft

    if cfg.r < 1:
        raise ConfigError(f"finetune.lora.r must be at least 1, got {cfg.r}.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"finetune.lora.dropout must be in [0, 1), got {cfg.dropout}.")
    targets = target_modules(model, cfg)
    from transformers.pytorch_utils import Conv1D

    every = targets == ALL_LINEAR
    matched = [m for name, m in model.named_modules() if every or any(_matches(name, t) for t in targets)]
    lora = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        use_dora=cfg.dora,
        use_rslora=cfg.rslora,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in matched),  # GPT-2 stores its weights transposed
        trainable_token_indices=_token_rows(model, list(new_token_ids or [])),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, lora, revision=hub.split(base)[1] if base else None)


def quantization(cfg: LoraConfig | None, compute: torch.dtype, device: torch.device) -> dict[str, Any]:
    """`from_pretrained` keywords that load the base in 4 bits on `device` (none without lora.quantize)."""
    if cfg is None or cfg.quantize is None:
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "finetune.lora.quantize needs bitsandbytes (pip install 'bitsandbytes>=0.46'; its 4-bit layers run "
            "on CUDA, Intel XPU and CPU), or leave quantize out to train LoRA on the unquantized base."
        ) from exc
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quantize,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    return {"quantization_config": config, "device_map": {"": device}}


def prepare_quantized(model: torch.nn.Module) -> torch.nn.Module:
    """peft's preparation of a 4-bit base: norms and the head in fp32, gradients into the inputs
    (gradient checkpointing stays the recipe's switch, train.gradient_checkpointing)."""
    import peft

    if not getattr(model, "is_loaded_in_4bit", False):
        return model
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def rounded_base(model: torch.nn.Module) -> bool:
    """The frozen base was rounded for training (4-bit, or bf16/fp16 weights): merge into a fresh copy."""
    if getattr(model, "is_loaded_in_4bit", False):
        return True
    return any(not p.requires_grad and p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())


def merge_into(full: torch.nn.Module, trained: Any) -> torch.nn.Module:
    """The adapters of `trained` (a peft model on a quantized base) merged into `full`, the same base
    loaded in full precision: merging into 4-bit weights would round the update away and save a
    checkpoint only bitsandbytes can read."""
    import peft

    model = peft.get_peft_model(full, copy.deepcopy(trained.peft_config["default"]))
    peft.set_peft_model_state_dict(model, peft.get_peft_model_state_dict(trained))
    return model.merge_and_unload()


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


def target_modules(model: torch.nn.Module, cfg: LoraConfig) -> list[str] | str:
    """The configured targets: peft's all-linear, or names that must each name modules of this model."""
    targets = cfg.target_modules
    if targets == ALL_LINEAR:
        return ALL_LINEAR
    model_type = getattr(model.config, "model_type", "?")
    if not targets:
        raise ConfigError(
            "finetune.lora.target_modules is empty: leave it out (all-linear) or name some of this model's "
            f"modules: {', '.join(adaptable_modules(model))}."
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
        model = AutoModelForCausalLM.from_config(hub.load(AutoConfig, base, "finetune.base"))
    target_modules(model, cfg)


def adaptable_modules(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of the modules LoRA can wrap (linear, Conv1D, embedding, convolution)."""
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, kinds)})


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of targets: the full name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


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

    adapter = json.loads((Path(path) / "adapter_config.json").read_text())
    base = adapter.get("base_model_name_or_path")
    if base and adapter.get("revision") and hub.is_hub_name(base):
        base = f"{base}@{adapter['revision']}"
    if not base:
        raise ConfigError(f"'{path}' holds a LoRA adapter without base_model_name_or_path in adapter_config.json.")
    try:
        model = hub.load(AutoModelForCausalLM, base, f"the base of the adapter in {path}")
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
