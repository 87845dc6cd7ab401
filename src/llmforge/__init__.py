"""llmforge: from raw text to a trained, benchmarked language model, one recipe at a time."""

from llmforge.config import DataConfig, ModelConfig, TokenizerConfig, TrainConfig
from llmforge.errors import LlmforgeError
from llmforge.hookspecs import hookimpl
from llmforge.recipe import Recipe, Run

__version__ = "0.1.0"
__all__ = [
    "DataConfig",
    "LlmforgeError",
    "ModelConfig",
    "Recipe",
    "Run",
    "TokenizerConfig",
    "TrainConfig",
    "hookimpl",
]
