"""llmforge: from raw text to a trained, benchmarked language model, one recipe at a time."""

from os import PathLike
from typing import Any

from llmforge.config import DataConfig, FinetuneConfig, LoraConfig, ModelConfig, TokenizerConfig, TrainConfig
from llmforge.errors import LlmforgeError
from llmforge.evaluate import evaluate
from llmforge.hookspecs import hookimpl
from llmforge.recipe import Recipe, Run

__version__ = "0.1.0"
__all__ = [
    "DataConfig",
    "FinetuneConfig",
    "LlmforgeError",
    "LoraConfig",
    "ModelConfig",
    "Recipe",
    "Run",
    "TokenizerConfig",
    "TrainConfig",
    "evaluate",
    "finetune",
    "hookimpl",
]


def finetune(
    base: str | PathLike, config: FinetuneConfig | dict | None, out: str | PathLike, console: Any = None
) -> Run:
    """Fine-tune any local HF causal-LM dir into `out`; `config` is a FinetuneConfig or a mapping of its keys.

    `llmforge.finetune("my-gpt2", FinetuneConfig(path="chat.jsonl", format="messages"), "runs/chat")` returns
    the `Run`; its model is `out/finetune/final`. The same as a recipe with only a finetune block."""
    from llmforge.stages.finetune import finetune as run

    return run(base, config, out, console)
