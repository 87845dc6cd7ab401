"""Model families and size presets: the recipe's sizes in each transformers family's own config keys.

A recipe speaks one vocabulary (n_layer, n_embd, n_head, n_kv_head, context_length, dropout,
tie_embeddings). `FAMILIES` says which config key each word becomes in every family llmforge has
verified end to end (document-aware packing, fused loss, resume, save, generation, evaluation: see
tests/test_families.py). Any other causal-LM `model_type` that transformers knows is translated through
transformers' standard key names (`family_of`) and checked on the built model (the model stage).

Derived sizes, the same for every family:

* head width: n_embd / n_head, written to the config wherever it has a `head_dim` key (its class
  default, 128 or 256, would otherwise ignore the width);
* MLP width: 8/3 x n_embd for a gated MLP (SwiGLU/GeGLU: three matrices), 4 x n_embd for a plain one
  (two matrices), rounded up to a multiple of 64. Both give the MLP 8 x n_embd^2 weights, like GPT-2's.
  `model.extra.intermediate_size` (a family's own ratio) overrides it.

Presets (`ModelPreset`) are registered by plugins through `register_model_presets`; the built-in ones
live in `plugins/llmforge_models`. `apply_preset` fills a ModelConfig from one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from llmforge.config.schema import MODEL_DEFAULTS, ModelConfig
from llmforge.errors import ConfigError, PluginError, closest, did_you_mean
from llmforge.plugin.types import ModelPreset


@dataclass(frozen=True)
class Family:
    """Which config key each of the recipe's sizes becomes in one transformers family."""

    layers: str = "num_hidden_layers"
    width: str = "hidden_size"
    heads: str = "num_attention_heads"
    positions: str | None = "max_position_embeddings"
    kv_heads: str | None = "num_key_value_heads"  # None: the family has no grouped-query attention
    mlp: str | None = "intermediate_size"  # None: the family derives its MLP width itself
    mlp_ratio: float = 8 / 3  # MLP width / n_embd: 8/3 for a gated MLP, 4 for a plain one
    dropout: tuple[str, ...] = ("attention_dropout",)  # every dropout key the family has
    verified: bool = True


# The verified families. Llama-shaped ones (rotary positions, RMSNorm, gated MLP, no biases, GQA)
# share the defaults; what differs is said in the row.
FAMILIES: dict[str, Family] = {
    # learned positions, LayerNorm, GELU MLP of 4 x n_embd (transformers' own n_inner default), biases
    "gpt2": Family(
        "n_layer",
        "n_embd",
        "n_head",
        "n_positions",
        kv_heads=None,
        mlp=None,
        dropout=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    ),
    "llama": Family(),
    "mistral": Family(),  # sliding-window attention beyond its sliding_window (4096) tokens
    "qwen2": Family(),  # biases on q, k, v
    "qwen3": Family(),  # RMSNorm on queries and keys
    "gemma": Family(),  # GeGLU MLP, embeddings scaled by sqrt(n_embd)
    "olmo2": Family(),  # norms after attention and MLP, RMSNorm on queries and keys
    "smollm3": Family(),  # no rotary positions in every 4th layer
    "phi3": Family(dropout=("attention_dropout", "resid_pdrop", "embd_pdrop")),  # fused q/k/v and gate/up
    # Pythia's family: parallel attention and MLP, rotary on a quarter of each head, plain GELU MLP
    "gpt_neox": Family(kv_heads=None, mlp_ratio=4.0, dropout=("attention_dropout", "hidden_dropout")),
}

RECIPE_SIZES = ("n_layer", "n_embd", "n_head", "n_kv_head", "context_length", "dropout", "tie_embeddings")
FROM_TOKENIZER = ("vocab_size", "eos_token_id", "bos_token_id", "pad_token_id")
_DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "embed_dropout",
    "resid_dropout",
    "attn_dropout",
    "dropout",
)


def causal_lm_types() -> list[str]:
    """Every model_type that transformers can build as AutoModelForCausalLM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def config_class(arch: str) -> type:
    """The transformers config class of `arch`, or a ConfigError listing the known ones, closest first."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    known = causal_lm_types()
    if arch not in known:
        what = (
            "has no causal-LM model in transformers" if arch in CONFIG_MAPPING else "is not a transformers model_type"
        )
        raise ConfigError(
            f"model.arch '{arch}' {what}{did_you_mean(arch, known)}. "
            f"Known (closest first): {', '.join(closest(arch, known)[:12])}, ... "
            f"Verified by llmforge: {', '.join(FAMILIES)}."
        )
    return CONFIG_MAPPING[arch]


@functools.cache
def default_config(cls: type) -> Any:
    """The config class's defaults (read only: the translation and the checks look at them)."""
    return cls()


@functools.cache
def config_keys(cls: type) -> frozenset[str]:
    """The keys a family's config accepts: its fields and their standard aliases (attribute_map)."""
    return frozenset(default_config(cls).to_dict()) | frozenset(getattr(cls, "attribute_map", {}))


def family_of(arch: str) -> Family:
    """The verified row, or one read off the config class through transformers' standard key names."""
    if arch in FAMILIES:
        return FAMILIES[arch]
    cls = config_class(arch)
    valid = config_keys(cls)
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads") if k not in valid]
    if missing:
        raise ConfigError(
            f"model.arch '{arch}' names its sizes in its own way (no {', '.join(missing)}), so llmforge cannot "
            f"translate model.n_layer/n_embd/n_head for it. Verified families: {', '.join(FAMILIES)}."
        )
    default = default_config(cls)
    hidden, inner = getattr(default, "hidden_size", None), getattr(default, "intermediate_size", None)
    has_mlp = "intermediate_size" in valid and isinstance(hidden, int) and isinstance(inner, int) and hidden > 0
    return Family(
        positions="max_position_embeddings" if "max_position_embeddings" in valid else None,
        kv_heads="num_key_value_heads" if "num_key_value_heads" in valid else None,
        mlp="intermediate_size" if has_mlp else None,
        mlp_ratio=inner / hidden if has_mlp else 4.0,  # keep the family's own ratio
        dropout=tuple(k for k in _DROPOUT_KEYS if k in valid),
        verified=False,
    )


def mlp_width(n_embd: int, ratio: float) -> int:
    """ratio x n_embd rounded up to a multiple of 64 (Llama rounds to 256; 64 keeps narrow models near 8/3)."""
    return 64 * math.ceil(ratio * n_embd / 64 - 1e-9)


def translate(family: Family, cfg: ModelConfig, valid: frozenset[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The family's config keys for the recipe's sizes, and which recipe key each one comes from."""
    words: dict[str, str] = {
        family.layers: "n_layer",
        family.width: "n_embd",
        family.heads: "n_head",
        "tie_word_embeddings": "tie_embeddings",
        **dict.fromkeys(family.dropout, "dropout"),
    }
    keys: dict[str, Any] = {k: getattr(cfg, w) for k, w in words.items()}
    if family.positions:
        words[family.positions] = "context_length"
        keys[family.positions] = cfg.context_length
    if family.kv_heads:
        words[family.kv_heads] = "n_kv_head"
        keys[family.kv_heads] = cfg.n_kv_head or cfg.n_head
    if family.mlp:
        keys[family.mlp] = mlp_width(cfg.n_embd, family.mlp_ratio)
    if "head_dim" in valid:
        keys["head_dim"] = cfg.n_embd // cfg.n_head
    return keys, words


def check(cfg: ModelConfig) -> None:
    """Refuse an unknown arch, sizes that cannot work, and extra keys the family lacks or the recipe owns.

    Needs no tokenizer, so a recipe is checked when it is loaded, before any stage runs.
    """
    if cfg.preset == AUTO and cfg.n_layer is None:  # sized later by the model stage: check the rest now
        cfg = dataclasses.replace(cfg, n_layer=2, n_embd=128, n_head=2)
    cls = config_class(cfg.arch)
    family = family_of(cfg.arch)
    for key in ("n_layer", "n_embd", "n_head", "context_length"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"model.{key} must be at least 1, got {getattr(cfg, key)}.")
    if cfg.n_embd % cfg.n_head:
        fits = [h for h in range(1, cfg.n_embd + 1) if cfg.n_embd % h == 0]
        near = sorted(sorted(fits, key=lambda h: abs(h - cfg.n_head))[:3])
        raise ConfigError(
            f"model.n_head {cfg.n_head} must divide model.n_embd {cfg.n_embd} (each head gets n_embd / n_head "
            f"dimensions). Head counts that do: {', '.join(map(str, near))}."
        )
    if cfg.n_kv_head is not None:
        if not family.kv_heads:
            raise ConfigError(
                f"model.n_kv_head: {cfg.arch} has no grouped-query attention (every head has its own keys and "
                "values). Remove model.n_kv_head, or choose a family that has it (llama, mistral, qwen3, ...)."
            )
        if cfg.n_kv_head < 1 or cfg.n_head % cfg.n_kv_head:
            raise ConfigError(
                f"model.n_kv_head {cfg.n_kv_head} must divide model.n_head {cfg.n_head} "
                "(each key/value head serves n_head / n_kv_head query heads)."
            )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {cfg.dropout}.")
    valid = config_keys(cls)
    keys, words = translate(family, cfg, valid)
    aliases = dict(getattr(cls, "attribute_map", {}))
    for key in cfg.extra:
        if key not in valid:
            rope = (
                " In transformers 5 the rotary settings live in rope_parameters, e.g. model.extra.rope_parameters: "
                "{rope_type: default, rope_theta: 500000.0}."
                if key in ("rope_theta", "rope_scaling", "partial_rotary_factor") and "rope_parameters" in valid
                else ""
            )
            raise ConfigError(
                f"model.extra.{key} is not a {cfg.arch} config key{did_you_mean(key, valid)}.{rope} "
                f"Valid keys: {', '.join(sorted(valid))}."
            )
        word = words.get(key) or words.get(aliases.get(key, ""))
        if word:
            raise ConfigError(f"model.extra.{key} is what model.{word} sets for {cfg.arch}: set model.{word} instead.")
        if key in FROM_TOKENIZER:
            raise ConfigError(f"model.extra.{key} comes from the tokenizer and cannot be set here; remove it.")
    _check_rotary(cls, {**keys, **cfg.extra}, cfg)


def _check_rotary(cls: type, keys: dict[str, Any], cfg: ModelConfig) -> None:
    """Rotary positions turn pairs of dimensions: the rotated part of each head must be even."""
    rope = keys.get("rope_parameters", getattr(default_config(cls), "rope_parameters", None))
    if isinstance(rope, dict) and "rope_theta" not in rope:  # one set per layer type (sliding, full)
        rope = next((v for v in rope.values() if isinstance(v, dict)), None)
    if not isinstance(rope, dict):
        return
    head_dim = keys.get("head_dim") or cfg.n_embd // cfg.n_head
    factor = rope.get("partial_rotary_factor") or keys.get("partial_rotary_factor") or 1.0
    rotated = int(head_dim * factor)
    if rotated % 2:
        raise ConfigError(
            f"{cfg.arch} rotates {rotated} of each head's {head_dim} dimensions (n_embd / n_head"
            f"{f' x {factor}' if factor != 1.0 else ''}), an odd number: rotary positions need an even one. "
            "Change model.n_embd or model.n_head."
        )


# --- presets ----------------------------------------------------------------------------------------


PRESET_KEYS = ("arch", "n_layer", "n_embd", "n_head", "n_kv_head", "context_length")
AUTO = "auto"  # model.preset: auto: the model stage sizes the model for the budget (llmforge.training.sizing)
AUTO_SIZES = ("n_layer", "n_embd", "n_head", "n_kv_head")


def needs_preset(cfg: ModelConfig) -> bool:
    """A named preset (not auto, which the model stage resolves) with some size still unset (a Recipe
    applies presets when it is built)."""
    return cfg.preset not in (None, AUTO) and any(getattr(cfg, k) is None for k in MODEL_DEFAULTS)


def _prepare_auto(cfg: ModelConfig) -> ModelConfig:
    """`preset: auto` leaves the sizes to the model stage; the family and context are the recipe's or the
    defaults, because the tokenizer and blocks stages need them first."""
    if given := [k for k in AUTO_SIZES if getattr(cfg, k) is not None]:
        raise ConfigError(
            f"model.preset auto chooses n_layer, n_embd and n_head for the training budget (with a key/value head "
            f"per query head), but the recipe sets {', '.join(f'model.{k}' for k in given)}. Remove "
            f"{'it' if len(given) == 1 else 'them'}, or remove model.preset to give every size yourself."
        )
    fill = {k: MODEL_DEFAULTS[k] for k in ("arch", "context_length") if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **fill)


def apply_preset(cfg: ModelConfig, plugins: Any) -> ModelConfig:
    """`cfg` with what it leaves unset taken from its preset (explicit keys win); idempotent.

    The preset's `extra` goes under the recipe's own, and with the preset's n_kv_head only when the
    recipe keeps the preset's family (another family may have neither those keys nor GQA).
    """
    if cfg.preset is None:
        return cfg
    if cfg.from_pretrained:
        raise ConfigError(
            f"model.preset '{cfg.preset}' and model.from_pretrained '{cfg.from_pretrained}' exclude each other: "
            "a preset builds a new model, from_pretrained loads one. Remove one of them."
        )
    if cfg.preset == AUTO:
        return _prepare_auto(cfg)
    try:
        preset = plugins.registries["model_preset"].get(cfg.preset)
    except PluginError as exc:
        raise ConfigError(f"model.preset: {exc}") from exc
    if not isinstance(preset, ModelPreset):
        owner = plugins.registries["model_preset"].owner(cfg.preset)
        raise PluginError(
            f"Plugin '{owner}' registered model preset '{cfg.preset}' as a {type(preset).__name__}, "
            "not a llmforge.models.families.ModelPreset."
        )
    filled = {k: getattr(preset, k) for k in PRESET_KEYS if getattr(cfg, k) is None}
    same_family = filled.get("arch", cfg.arch) == preset.arch
    if not same_family:
        filled.pop("n_kv_head", None)
    extra = {**preset.extra, **cfg.extra} if same_family else cfg.extra
    resolved = dataclasses.replace(cfg, **filled, extra=extra)
    for key, value in MODEL_DEFAULTS.items():  # a plugin's preset always has these; belt and braces
        if getattr(resolved, key) is None:
            setattr(resolved, key, value)
    return resolved
