"""The types a plugin author implements or registers, in one place (re-exported by `llmforge`).

Each registry hook in `llmforge.plugin.hookspecs` takes one of these: `DataSource`, `ChatTemplate`,
`Format`, `LossMask`, `Benchmark`, `ModelPreset`. They hold no behaviour of the core, so a plugin
that imports them pulls in nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Span = tuple[int, int]


# --- data sources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """A data source: `load(config)` returns its rows; `inputs(config)` the local files it reads.

    `load(config: DataConfig, cache_dir=...)` is described in `hookspecs.register_data_sources`.
    `inputs(config) -> list[Path]` names every local file a load would read, so the core can
    fingerprint them and rerun the data (or fine-tune) stage when one changes; when it is None the core
    fingerprints the files under `config.path` and `config.data_files`. A registered plain function is
    taken as `DataSource(load=function)`.

    `packed(config, context_length) -> (DatasetDict of blocks, stats)` marks a source whose rows are
    already tokenized and packed (the token store): the blocks artefact then comes from it as it is.

    `suffixes` are the file-name endings the source reads, lower case with the dot (`(".csv", ".tsv")`);
    the core reads them to recognise a data file given where a recipe goes (`llmforge run rows.csv`) and
    to name the source in the recipe it suggests. Empty for a source that reads no files of its own.
    """

    load: Callable[..., Any]
    inputs: Callable[[Any], list[Path]] | None = None
    packed: Callable[[Any, int], tuple[Any, dict[str, Any]]] | None = None
    description: str = ""
    suffixes: tuple[str, ...] = ()


# --- chat: formats, templates, loss masks ---------------------------------------------------------


class FormatMismatch(Exception):
    """Raised by a format's `to_messages` when a row does not have the shape the format reads.

    The message names the field (e.g. "turn 2 of 'conversations' has no field 'from'"); the core adds
    the row number, the format's name and where the data came from.
    """


@dataclass(frozen=True)
class Format:
    """A row format: the fields a row must have, and how the row becomes messages.

    `to_messages(row)` returns `[{"role": ..., "content": ...}, ...]` in the format's own words mapped
    to `system`/`user`/`assistant`; a role it cannot map is passed through unchanged (the core counts
    it as unknown), and so is empty content (counted as an empty turn).
    """

    fields: tuple[str, ...]
    to_messages: Callable[[dict[str, Any]], list[dict[str, Any]]]
    optional: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template: Jinja text (or a function of the tokenizer returning it), its special tokens and
    the token that ends an assistant turn.

    `template=None` keeps the tokenizer's own template. `end_of_turn` may be a token string, a function
    of the tokenizer, or None to find it from a rendered probe conversation. Put `{% generation %}` /
    `{% endgeneration %}` around what the assistant writes, so `return_assistant_tokens_mask` works too.
    """

    template: str | Callable[[Any], str] | None
    special_tokens: tuple[str, ...] = ()
    end_of_turn: str | Callable[[Any], str] | None = None
    description: str = ""


@dataclass(frozen=True)
class LossMask:
    """A loss mask: `select(rendered) -> [(start, end), ...]` character spans of `rendered.text` to train on.

    `covers_everything` is True only for a mask meant to select every token (`all`); any other mask that
    selects every token, or no token, of an example is an error.
    """

    select: Callable[[Rendered], list[Span]]
    covers_everything: bool = False
    description: str = ""


class MaskError(Exception):
    """Raised by a loss mask for an example it cannot handle (the core names the row)."""


@dataclass(frozen=True)
class Turn:
    """Where one message sits in the rendered text.

    `start:end` is the whole turn, template markup included. For an assistant turn `content_start:
    content_end` is what the model is to write: what the template's `{% generation %}` markers select
    where it has them; else from where the generation prompt ends (what the template adds at inference
    is not the model's to write) to where its text and end-of-turn token end (trailing whitespace
    excluded). For the other turns the content span is the whole turn.
    """

    role: str
    start: int
    end: int
    content_start: int
    content_end: int


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation, where its turns are, and how they were located (`located`: the
    template's generation markers, rendered prefixes, or each message's text)."""

    text: str
    turns: list[Turn]
    located: str = ""

    def assistant_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "assistant"]


# --- benchmarks --------------------------------------------------------------------------------


Row = tuple[str, str, str]  # (label in the table, lm-eval task or group, metric such as "acc")


@dataclass
class TaskSet:
    """The lm-eval tasks one benchmark resolved to, and the task folders lm-eval must index for them."""

    tasks: list[str]
    include_paths: list[Path] = field(default_factory=list)
    builtin: bool = True  # also index all of lm-eval's built-in tasks (slow: ~15k entries)
    source: str = "lm-eval"  # where the data comes from, for the user


@dataclass
class Benchmark:
    """A named benchmark: lm-eval tasks, the rows they add to the results table, and their YAML folder.

    `tasks` are lm-eval task or group names; `rows` are `(label, task, metric)` triples picked out of
    lm-eval's results for the compact table (all of a task's metrics when empty); `include_path` is a
    folder of lm-eval task YAMLs that the plugin ships (None for lm-eval's built-in tasks); `builtin`
    says whether lm-eval's built-in tasks must be indexed too (False only for self-contained folders).
    Override `resolve` to choose the tasks at run time, e.g. local files instead of the hub.
    """

    tasks: list[str]
    rows: list[Row] = field(default_factory=list)
    include_path: str | Path | None = None
    builtin: bool = True
    data_help: str = ""  # what files to put where when the data cannot be found

    def resolve(self, data_dir: Path | None, workdir: Path) -> TaskSet:
        """The tasks to run; `data_dir` is the user's local benchmark folder, `workdir` a scratch folder."""
        paths = [Path(self.include_path)] if self.include_path else []
        return TaskSet(list(self.tasks), paths, self.builtin, "plugin task folder" if paths else "lm-eval")


# --- model presets ------------------------------------------------------------------------------


@dataclass
class ModelPreset:
    """A named model shape: what `model.preset: NAME` fills in (see hookspecs.register_model_presets)."""

    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    context_length: int
    n_kv_head: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    description: str = ""
