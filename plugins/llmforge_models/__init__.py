"""Built-in model size presets: shapes people know, by name (`model.preset: gpt2-medium`).

Registered through the `llmforge` entry-point group like any third-party plugin. Parameter counts
below are with GPT-2's 50,257-token vocabulary and tied embeddings; a recipe's own tokenizer changes
the embedding part (vocab_size x n_embd). docs/models.md says where each shape comes from.
"""

from __future__ import annotations

from llmforge import ModelPreset, hookimpl

PRESETS = {
    "gpt2": ModelPreset("gpt2", 12, 768, 12, 1024, description="GPT-2 small, 124M (OpenAI's smallest GPT-2)"),
    "gpt2-medium": ModelPreset("gpt2", 24, 1024, 16, 1024, description="GPT-2 medium, 355M (the seed's FineWeb run)"),
    "gpt2-large": ModelPreset("gpt2", 36, 1280, 20, 1024, description="GPT-2 large, 774M"),
    "gpt2-1b": ModelPreset(
        "gpt2",
        36,
        1536,
        24,
        1024,
        description="GPT-2 at 1B: GPT-2 large's depth, 24 heads of GPT-2's width 64; 1.02B without embeddings, 1.10B",
    ),
    "gpt2-xl": ModelPreset("gpt2", 48, 1600, 25, 1024, description="GPT-2 XL, 1.56B"),
    "llama-124m": ModelPreset(
        "llama",
        12,
        768,
        12,
        1024,
        n_kv_head=4,
        extra={"intermediate_size": 2432},
        description="GPT-2 small's shape in Llama's parts (rotary, RMSNorm, SwiGLU, 4 KV heads), 124M like gpt2",
    ),
    "smollm-135m": ModelPreset(
        "llama", 30, 576, 9, 2048, n_kv_head=3, description="SmolLM-135M's shape: deep and narrow Llama, 135M"
    ),
}


@hookimpl
def register_model_presets(register) -> None:
    for name, preset in PRESETS.items():
        register(name, preset)
