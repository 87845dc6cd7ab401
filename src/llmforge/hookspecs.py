"""Every hook a plugin can implement. This module is the plugin author's reference.

A plugin is a module (or object) with functions decorated by `llmforge.hookimpl`, installed under the
entry-point group `llmforge`, or named in a recipe's `plugins:` list. Two families of hooks:

* Registries, called once when the plugin manager starts: each receives a `register(name, obj)`
  callback. Call it once per thing you provide. Names must be unique across all plugins.
* Lifecycle hooks, called by the core at fixed points of a run. Every implementation is called;
  return values are ignored unless the hook says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("llmforge")
hookimpl = pluggy.HookimplMarker("llmforge")

Register = Callable[[str, Any], None]


@hookspec
def register_data_sources(register: Register) -> None:
    """Register data sources: `register("name", load)`.

    `load(config: llmforge.config.DataConfig) -> datasets.Dataset | datasets.IterableDataset` returns
    one row per document with the document's text in the column named by `config.text_column`.
    Raise `llmforge.DataError` naming the file/row and the fix for input it cannot read.
    """


@hookspec
def register_chat_templates(register: Register) -> None:
    """Register chat templates: `register("name", template)` (used by the finetune stage)."""


@hookspec
def register_formats(register: Register) -> None:
    """Register dataset formats that turn a row into `[{"role", "content"}, ...]` messages."""


@hookspec
def register_loss_masks(register: Register) -> None:
    """Register loss masks that choose which tokens of a rendered example carry loss."""


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register benchmark suites: a name mapped to lm-eval tasks (used by the evaluate stage)."""


@hookspec
def prepare_model(model: Any, stage: str, config: Any) -> None:
    """Adjust a model in place before a training stage (`stage` is 'train' or 'finetune') starts.

    Called after the model is built or loaded and before the Trainer sees it; `config` is the stage's
    config. Attach forward hooks, freeze parameters, etc.
    """


@hookspec
def on_stage_start(stage: str, run_dir: Path) -> None:
    """A stage is about to run (not called for stages skipped as up to date)."""


@hookspec
def on_stage_end(stage: str, run_dir: Path, outputs: dict[str, Any]) -> None:
    """A stage finished; `outputs` holds what it reported (paths, counts, metrics)."""


@hookspec
def on_log(stage: str, metrics: dict[str, Any]) -> None:
    """A training stage logged `metrics` (step, loss, learning_rate, tokens_per_second, ...)."""


@hookspec
def on_checkpoint(stage: str, path: Path) -> None:
    """A complete checkpoint was written to `path` (called after it is marked complete)."""
