"""Model stage: build a causal LM from the recipe's sizes (any transformers family), or load weights.

The recipe speaks one vocabulary (n_layer, n_embd, n_head, n_kv_head, context_length, dropout,
tie_embeddings); `family_config` translates it to the family's own config keys in one place. Special
token ids always come from the tokenizer. The model is saved in `model/` as a plain HF model dir.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from llmforge import rundir
from llmforge.config import ModelConfig
from llmforge.context import Context
from llmforge.errors import ConfigError, closest, did_you_mean
from llmforge.stages import data
from llmforge.stages.tokenizer import load_tokenizer

CHINCHILLA_TOKENS_PER_PARAM = 20
ARTEFACT = "model"


def enabled(recipe: Any) -> bool:
    return recipe.model is not None  # absent in a fine-tune-only recipe


def describe(out: dict[str, Any]) -> str:
    if "parameters" not in out:
        return ""
    return f"{out['arch']} {out['parameters'] / 1e6:.2f}M params, {out['tokens_per_parameter']:.2f} tokens/param"


def fingerprint(ctx: Context) -> str:
    return rundir.fingerprint("model", vars(ctx.recipe.model), ctx.fingerprints["tokenizer"], ctx.recipe.train.seed)


def run(ctx: Context) -> dict[str, Any]:
    cfg: ModelConfig = ctx.recipe.model
    tok = load_tokenizer(ctx)
    model = build_model(cfg, tok, seed=ctx.recipe.train.seed)
    params = sum(p.numel() for p in model.parameters())
    train_tokens = data.block_stats(ctx)["train"]["tokens"]
    info = {
        "arch": model.config.model_type,
        "parameters": params,
        "train_tokens": train_tokens,
        "tokens_per_parameter": round(train_tokens / params, 4),
    }
    with rundir.atomic_dir(ctx.path("model"), ctx.fingerprints["model"], info) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    ctx.console.print(
        f"  {info['arch']} with {params / 1e6:.2f}M parameters; {train_tokens:,} training tokens = "
        f"{info['tokens_per_parameter']:.2f} tokens/parameter (Chinchilla's guide: {CHINCHILLA_TOKENS_PER_PARAM}, "
        f"i.e. {CHINCHILLA_TOKENS_PER_PARAM * params / 1e6:.1f}M tokens for this size)"
    )
    return info


def build_model(cfg: ModelConfig, tok: Any, seed: int) -> torch.nn.Module:
    if cfg.from_pretrained:
        return load_pretrained(cfg, tok)
    config = family_config(cfg, tok)
    transformers.set_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)


def load_pretrained(cfg: ModelConfig, tok: Any) -> torch.nn.Module:
    if cfg.trust_remote_code:
        print(f"  trust_remote_code is on: code from '{cfg.from_pretrained}' may run.")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.from_pretrained, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"Cannot load model.from_pretrained '{cfg.from_pretrained}': {first}") from exc
    positions = _max_positions(model.config)
    if positions is not None and cfg.context_length > positions:
        raise ConfigError(
            f"model.context_length {cfg.context_length} exceeds the {positions} positions of "
            f"'{cfg.from_pretrained}'. Lower model.context_length to at most {positions}."
        )
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    _set_special_ids(model.config, tok)
    return model


def family_config(cfg: ModelConfig, tok: Any) -> PretrainedConfig:
    """Translate the recipe's sizes to the family's config keys and validate the result."""
    known = sorted(transformers.models.auto.configuration_auto.CONFIG_MAPPING.keys())
    if cfg.arch not in known:
        raise ConfigError(
            f"model.arch '{cfg.arch}' is not a transformers model_type{did_you_mean(cfg.arch, known)}. "
            f"Known (closest first): {', '.join(closest(cfg.arch, known)[:12])}, ..."
        )
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"model.n_head {cfg.n_head} must divide model.n_embd {cfg.n_embd}.")
    if cfg.n_kv_head is not None and cfg.n_head % cfg.n_kv_head:
        raise ConfigError(f"model.n_kv_head {cfg.n_kv_head} must divide model.n_head {cfg.n_head}.")
    for key in ("n_layer", "n_embd", "n_head", "context_length"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"model.{key} must be at least 1, got {getattr(cfg, key)}.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}.")
    config_class = type(AutoConfig.for_model(cfg.arch))
    valid = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
    keys = _translate(cfg)
    for key in cfg.extra:
        if key not in valid:
            raise ConfigError(
                f"model.extra.{key} is not a {cfg.arch} config key{did_you_mean(key, valid)}. "
                f"Valid keys: {', '.join(sorted(valid))}."
            )
    keys.update(cfg.extra)
    keys = {k: v for k, v in keys.items() if k in valid}
    keys["vocab_size"] = len(tok)
    keys.update(_special_ids(tok))
    return AutoConfig.for_model(cfg.arch, **keys)


def _translate(cfg: ModelConfig) -> dict[str, Any]:
    """One table from the recipe's words to each family's keys (unknown keys are dropped later)."""
    if cfg.arch == "gpt2":
        return {
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "n_positions": cfg.context_length,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    # Llama-shaped families (llama, mistral, qwen2, ...) share these names.
    intermediate = 256 * ((int(8 * cfg.n_embd / 3) + 255) // 256)
    return {
        "num_hidden_layers": cfg.n_layer,
        "hidden_size": cfg.n_embd,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head or cfg.n_head,
        "max_position_embeddings": cfg.context_length,
        "intermediate_size": intermediate,
        "attention_dropout": cfg.dropout,
        "hidden_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "head_dim": cfg.n_embd // cfg.n_head,
        # GPT-2-style families use other names for the same sizes:
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_positions": cfg.context_length,
    }


def _special_ids(tok: Any) -> dict[str, int | None]:
    """Every special id from the tokenizer: a fresh GPT2Config would keep 50256 (see PITFALLS)."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return {"eos_token_id": tok.eos_token_id, "bos_token_id": bos, "pad_token_id": tok.pad_token_id}


def _set_special_ids(config: PretrainedConfig, tok: Any) -> None:
    for key, value in _special_ids(tok).items():
        setattr(config, key, value)


def _max_positions(config: PretrainedConfig) -> int | None:
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None
