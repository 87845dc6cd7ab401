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
    """Register data sources: `register("name", DataSource(load, inputs=...))` or `register("name", load)`.

    `from llmforge import DataSource`. `inputs(config) -> list[Path]` names the local files a load reads:
    the core fingerprints them, so editing one reruns the data (or finetune) stage. Without it the core
    fingerprints every file under `config.path` and `config.data_files` (files, folders, globs), so a plain
    `load` function gets the same rerun-on-change guarantee for local files.

    `load(config: llmforge.DataConfig) -> datasets.Dataset | datasets.IterableDataset` returns
    one row per document with the document's text in the column named by `config.text_column`; when
    `config.text_column` is None (the finetune stage asks so), every column of each row instead.
    Raise `llmforge.DataError` naming the file/row and the fix for input it cannot read.

    A `load` that accepts a `cache_dir` keyword gets a directory inside the run dir for on-disk copies
    (`llmforge.write_texts` writes one with bounded memory). For streaming (`data.streaming:
    true`) a source may instead return an object with `stream_batches(start, batch_size, first_row,
    max_rows)` yielding `(texts, position)`,
    where `position` is JSON-serialisable and `start=position` resumes right after it
    (llmforge.data.streaming.DocumentStream; the Deep Lake plugin is an example).
    """


@hookspec
def register_chat_templates(register: Register) -> None:
    """Register chat templates: `register("name", ChatTemplate(template, special_tokens, end_of_turn))`.

    `from llmforge.chat.conversations import ChatTemplate`. `template` is Jinja text (or a function of the
    tokenizer returning it; None keeps the tokenizer's own), rendered by transformers'
    `apply_chat_template` and saved with the tokenizer. It should mark assistant text with
    `{% generation %}` (the mask is then the markers'); without markers, turns are located by
    rendering prefixes, or where the template rewrites earlier turns, by each message's text.
    `special_tokens` are added to the tokenizer (the model gets new embedding rows); `end_of_turn`
    is the token that ends an assistant turn (string, function of the tokenizer, or None to find it).
    """


@hookspec
def register_formats(register: Register) -> None:
    """Register row formats: `register("name", Format(fields, to_messages, optional))`.

    `from llmforge.chat.conversations import Format, FormatMismatch`. `fields` are the row fields that
    must be present (the core names a missing one with the row number); `to_messages(row)` returns
    `[{"role", "content"}, ...]` with roles mapped to system/user/assistant (others pass through and
    are counted as unknown). Raise `FormatMismatch("what is wrong")` for a row of another shape.
    """


@hookspec
def register_loss_masks(register: Register) -> None:
    """Register loss masks: `register("name", LossMask(select, covers_everything=False))`.

    `from llmforge.chat.conversations import LossMask, MaskError, Rendered`. `select(rendered)` returns the
    character spans of `rendered.text` to train on; `rendered.turns` says where each turn and each
    assistant's own text (after the generation prompt, through its end-of-turn token) lie. The core
    maps spans to tokens by offsets and refuses a mask that selects no token, or every token unless
    `covers_everything`. Raise `MaskError("why")` for a conversation the mask cannot handle.
    """


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register benchmarks: `register("name", Benchmark(...))` (`from llmforge.eval.harness import Benchmark`).

    A `Benchmark` names lm-eval tasks or groups (`tasks`), the rows they add to the results table
    (`rows`: `(label, task, metric)`, e.g. `("MMLU STEM", "mmlu_stem", "acc")`), and optionally a folder
    of lm-eval task YAMLs the plugin ships (`include_path`). Subclass it and override
    `resolve(data_dir, workdir) -> TaskSet` to pick tasks at run time, e.g. local files in
    `data_dir/<name>/` instead of the hub (see the built-in `llmforge_bench`). Used by `llmforge eval`,
    `llmforge.evaluate()` and the evaluate stage (`evaluate.benchmarks`); lm-eval does the scoring.
    """


@hookspec
def register_model_presets(register: Register) -> None:
    """Register model size presets: `register("name", ModelPreset(arch, n_layer, n_embd, n_head, context_length))`.

    `from llmforge.models.families import ModelPreset`; optional fields: `n_kv_head` (grouped-query attention),
    `extra` (further keys of the family's transformers config, e.g. `{"intermediate_size": 2432}`) and
    `description` (one line, shown in docs and errors). A recipe's `model.preset: name` fills `arch`,
    `n_layer`, `n_embd`, `n_head`, `n_kv_head` and `context_length` from the preset; a key the recipe
    sets itself wins. The preset's `extra` applies under the recipe's own `model.extra`, and only when
    the recipe keeps the preset's family. The built-in presets are in `plugins/llmforge_models`.
    """


@hookspec
def prepare_model(model: Any, stage: str, config: Any) -> None:
    """Adjust a model in place before a training stage (`stage` is 'train' or 'finetune') starts.

    Called after the model is built or loaded and before the Trainer sees it; `config` is the stage's
    config. Attach forward hooks, freeze parameters, etc. Hook submodules (the embeddings, the body at
    `model.base_model`), not the top-level forward: with `fused_loss` the training step calls the body
    and the output head's weight directly. In the finetune stage this comes after the
    chat template's embedding rows are added and after LoRA wrapping, so `model` may be a peft model:
    use `model.get_input_embeddings()` rather than attribute paths.
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
