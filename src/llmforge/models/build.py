"""Building a causal LM from the recipe's sizes (any transformers family), or loading its weights.

The recipe speaks one vocabulary (n_layer, n_embd, n_head, n_kv_head, context_length, dropout,
tie_embeddings), optionally filled from a size preset; `family_config` translates it to the family's own
config keys through the table in llmforge.models.families. Special token ids always come from the
tokenizer. `check_document_aware` refuses a family whose attention crosses packed documents: the
promise every family must keep, not one llmforge takes on trust.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from rich.console import Console
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from llmforge import hub
from llmforge.config.schema import ModelConfig
from llmforge.data.batches import document_leak
from llmforge.errors import ConfigError, first_line
from llmforge.models.families import (
    FAMILIES,
    apply_preset,
    check,
    config_class,
    config_keys,
    family_of,
    needs_preset,
    translate,
)
from llmforge.models.loading import causal_lm_loss, max_positions
from llmforge.plugin.manager import get_plugins

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal training tokens per parameter


def build_model(cfg: ModelConfig, tok: Any, seed: int, console: Console | None = None) -> torch.nn.Module:
    """The recipe's model with the tokenizer's vocabulary and special ids, initialised from `seed`."""
    console = console or Console()
    if needs_preset(cfg):  # a ModelConfig(preset=...) built outside a Recipe
        cfg = apply_preset(cfg, get_plugins())
    if cfg.from_pretrained:
        return load_pretrained_model(cfg, tok, console)
    config = family_config(cfg, tok)
    if not family_of(cfg.arch).verified:
        console.print(
            f"  note: llmforge has not verified '{cfg.arch}' end to end (verified: {', '.join(FAMILIES)}); its "
            "sizes were set through transformers' standard config keys. Check the parameter count."
        )
    transformers.set_seed(seed)
    try:
        return causal_lm_loss(AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation))
    except (ValueError, ImportError) as exc:
        raise ConfigError(
            f"transformers cannot build model.arch '{cfg.arch}' as configured: {first_line(exc)}"
        ) from exc


def load_pretrained_model(cfg: ModelConfig, tok: Any, console: Console) -> torch.nn.Module:
    """model.from_pretrained's weights, its vocabulary grown to the tokenizer's, special ids from the tokenizer."""
    if cfg.trust_remote_code:
        console.print(
            f"  [bold yellow]trust_remote_code is on[/]: Python code from '{cfg.from_pretrained}' may run "
            "(model.trust_remote_code: true in the recipe)."
        )
    try:
        model = hub.load(
            AutoModelForCausalLM,
            cfg.from_pretrained,
            "model.from_pretrained",
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation,
        )
    except (OSError, ValueError) as exc:
        hint = (
            " It ships its own model code: set model.trust_remote_code: true if you trust its authors."
            if "trust_remote_code" in str(exc)
            else ""
        )
        raise ConfigError(
            f"Cannot load model.from_pretrained '{cfg.from_pretrained}': {first_line(exc)}{hint}"
        ) from exc
    positions = max_positions(model.config)
    if positions is not None and cfg.context_length > positions:
        raise ConfigError(
            f"model.context_length {cfg.context_length} exceeds the {positions} positions of "
            f"'{cfg.from_pretrained}'. Lower model.context_length to at most {positions}."
        )
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    _set_special_ids(model.config, tok)
    return causal_lm_loss(model)


def family_config(cfg: ModelConfig, tok: Any) -> PretrainedConfig:
    """Translate the recipe's sizes to the family's config keys and validate the result."""
    if needs_preset(cfg):
        cfg = apply_preset(cfg, get_plugins())
    if cfg.n_layer is None:  # preset auto, not yet sized
        raise ConfigError(
            "model.preset auto is sized by the model stage of a Recipe run (or llmforge.training.sizing.for_budget): "
            "build the sized config, not the auto one."
        )
    check(cfg)  # arch, sizes, n_kv_head and extra keys, as when the recipe was loaded
    valid = config_keys(config_class(cfg.arch))
    keys, _ = translate(family_of(cfg.arch), cfg, valid)
    keys.update(cfg.extra)
    keys["vocab_size"] = len(tok)
    keys.update(_special_ids(tok))
    try:
        config = AutoConfig.for_model(cfg.arch, **keys)
    except Exception as exc:  # transformers validates its configs (ValueError, StrictDataclass errors, ...)
        raise ConfigError(f"transformers rejects this {cfg.arch} config: {first_line(exc)}") from exc
    return config


def check_document_aware(model: torch.nn.Module, eos_id: int, cfg: ModelConfig) -> None:
    """Refuse a model whose attention crosses packed documents despite restarting position ids."""
    try:
        leak = document_leak(model, eos_id)
    except Exception as exc:  # a family that cannot run a packed row at all
        raise ConfigError(
            f"{model.config.model_type} failed a forward pass on a packed row: {type(exc).__name__}: "
            f"{first_line(exc)}. Check model.arch and its sizes, or set train.document_aware: false."
        ) from exc
    if leak:
        what = f"'{cfg.from_pretrained}'" if cfg.from_pretrained else f"model.arch '{cfg.arch}'"
        raise ConfigError(
            f"{what} ({model.config.model_type}) does not keep packed documents apart: with position ids that "
            "restart at each document its attention still reaches the previous ones. Set train.document_aware: "
            f"false to train with plain causal attention across documents, or use a family that supports it "
            f"(verified: {', '.join(FAMILIES)})."
        )


def _special_ids(tok: Any) -> dict[str, int | None]:
    """Every special id from the tokenizer: a fresh GPT2Config would keep 50256 (see PITFALLS)."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return {"eos_token_id": tok.eos_token_id, "bos_token_id": bos, "pad_token_id": tok.pad_token_id}


def _set_special_ids(config: PretrainedConfig, tok: Any) -> None:
    for key, value in _special_ids(tok).items():
        setattr(config, key, value)
