"""llmforge: from raw text to a trained, benchmarked language model, one recipe at a time.

This module is the public face: what a user and a plugin author import. Plugins import from here only.
"""

from llmforge.chat.conversations import TemplateError
from llmforge.config.schema import (
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    LoraConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
)
from llmforge.data.arrowio import write_texts
from llmforge.data.tokenstore import open_token_store, token_store_inputs
from llmforge.errors import (
    ConfigError,
    DataError,
    LlmforgeError,
    PluginError,
    RunDirError,
    TrainingError,
    did_you_mean,
    first_line,
)
from llmforge.eval.harness import evaluate, hub_offline, lm_eval_tasks_dir
from llmforge.plugin.hookspecs import hookimpl
from llmforge.plugin.types import (
    Benchmark,
    ChatTemplate,
    DataSource,
    Format,
    FormatMismatch,
    LossMask,
    MaskError,
    ModelPreset,
    Rendered,
    Span,
    TaskSet,
    Turn,
)
from llmforge.recipe import Recipe, Run, finetune

__version__ = "0.1.0"
__all__ = [
    "Benchmark",
    "ChatTemplate",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSource",
    "EvaluateConfig",
    "FinetuneConfig",
    "Format",
    "FormatMismatch",
    "LlmforgeError",
    "LoraConfig",
    "LossMask",
    "MaskError",
    "ModelConfig",
    "ModelPreset",
    "PluginError",
    "Recipe",
    "Rendered",
    "Run",
    "RunDirError",
    "Span",
    "TaskSet",
    "TemplateError",
    "TokenizerConfig",
    "TrainConfig",
    "TrainingError",
    "Turn",
    "did_you_mean",
    "evaluate",
    "finetune",
    "first_line",
    "hookimpl",
    "hub_offline",
    "lm_eval_tasks_dir",
    "open_token_store",
    "token_store_inputs",
    "write_texts",
]
