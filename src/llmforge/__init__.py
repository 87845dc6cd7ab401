"""llmforge: from raw text to a trained, benchmarked language model, one recipe at a time.

This module is the public face: what a user and a plugin author import (plugins import from here only).
Names load on first use, so `import llmforge` and importing one submodule (a token-store worker imports
`llmforge.data.packer` in a fresh process) do not pull in torch and transformers' Trainer.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _not_the_optional_cpu_kernel(record: logging.LogRecord) -> bool:
    """bitsandbytes (QLoRA), imported by transformers' Trainer through peft, tries at import to fetch an
    optional CPU kernel from the hub and warns when it cannot (offline, or the publisher unverified): every
    llmforge command would print it, though 4-bit layers work without it."""
    message = record.getMessage()
    return "kernels-community/quantization-bitsandbytes" not in message and "gemm_4bit_forward" not in message


for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_not_the_optional_cpu_kernel)

_EXPORTS = {  # public name -> the module that defines it
    "Benchmark": "llmforge.plugin.types",
    "ChatTemplate": "llmforge.plugin.types",
    "ConfigError": "llmforge.errors",
    "DataConfig": "llmforge.config.schema",
    "DataError": "llmforge.errors",
    "DataSource": "llmforge.plugin.types",
    "did_you_mean": "llmforge.errors",
    "evaluate": "llmforge.eval.harness",
    "EvaluateConfig": "llmforge.config.schema",
    "finetune": "llmforge.recipe",
    "FinetuneConfig": "llmforge.config.schema",
    "first_line": "llmforge.errors",
    "Format": "llmforge.plugin.types",
    "FormatMismatch": "llmforge.plugin.types",
    "hookimpl": "llmforge.plugin.hookspecs",
    "hub_offline": "llmforge.eval.harness",
    "LlmforgeError": "llmforge.errors",
    "lm_eval_tasks_dir": "llmforge.eval.harness",
    "LoraConfig": "llmforge.config.schema",
    "LossMask": "llmforge.plugin.types",
    "MaskError": "llmforge.plugin.types",
    "ModelConfig": "llmforge.config.schema",
    "ModelPreset": "llmforge.plugin.types",
    "open_token_store": "llmforge.data.tokenstore",
    "PluginError": "llmforge.errors",
    "Recipe": "llmforge.recipe",
    "Rendered": "llmforge.plugin.types",
    "Run": "llmforge.recipe",
    "RunDirError": "llmforge.errors",
    "Span": "llmforge.plugin.types",
    "TaskSet": "llmforge.plugin.types",
    "TemplateError": "llmforge.chat.conversations",
    "token_store_inputs": "llmforge.data.tokenstore",
    "TokenizerConfig": "llmforge.config.schema",
    "TrainConfig": "llmforge.config.schema",
    "TrainingError": "llmforge.errors",
    "Turn": "llmforge.plugin.types",
    "write_texts": "llmforge.data.arrowio",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from llmforge.chat.conversations import TemplateError  # noqa: F401
    from llmforge.config.schema import (  # noqa: F401
        DataConfig,
        EvaluateConfig,
        FinetuneConfig,
        LoraConfig,
        ModelConfig,
        TokenizerConfig,
        TrainConfig,
    )
    from llmforge.data.arrowio import write_texts  # noqa: F401
    from llmforge.data.tokenstore import open_token_store, token_store_inputs  # noqa: F401
    from llmforge.errors import (  # noqa: F401
        ConfigError,
        DataError,
        LlmforgeError,
        PluginError,
        RunDirError,
        TrainingError,
        did_you_mean,
        first_line,
    )
    from llmforge.eval.harness import evaluate, hub_offline, lm_eval_tasks_dir  # noqa: F401
    from llmforge.plugin.hookspecs import hookimpl  # noqa: F401
    from llmforge.plugin.types import (  # noqa: F401
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
    from llmforge.recipe import Recipe, Run, finetune  # noqa: F401
