"""What every stage receives: the run directory, the recipe, the plugins, the console, and what the
stages before it reported (`outputs`: a stage reads another's results there or in the run dir only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from transformers import AutoTokenizer

from llmforge.data.blocks import open_blocks
from llmforge.data.documents import SOURCE_CACHE, Source
from llmforge.plugin.manager import Plugins

if TYPE_CHECKING:  # the recipe sits above the stages; a stage only reads its blocks
    from llmforge.recipe import Recipe


@dataclass
class Context:
    run_dir: Path
    recipe: Recipe
    plugins: Plugins
    console: Console
    fingerprints: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # this process's models and datasets, by stage
    restart: frozenset[str] = frozenset()  # stages to redo from scratch (`--restart STAGE`)
    resume: bool = False  # training stages go on from their last checkpoint whatever changed (`--resume`)
    discard: bool = False  # a stage trained afresh deletes the earlier run instead of keeping it aside

    def rerun(self, stage: str) -> str:
        """What a training stage does with the checkpoints it finds (llmforge.training.reruns.Mode)."""
        return "restart" if stage in self.restart else "resume" if self.resume else "auto"

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def source(self, config: Any, cache: str = "data") -> Source:
        """The data-source plugin `config.source` names, bound to `config` and a cache dir in the run dir."""
        registry = self.plugins.registries["data_source"]
        plugin = self.plugins.data_source(config.source)
        return Source(config, plugin, registry.owner(config.source), self.path(cache, SOURCE_CACHE))

    def tokenizer(self) -> Any:
        """The tokenizer stage's artefact (`tokenizer/`), loaded once per process."""
        if "tokenizer" not in self.cache:
            self.cache["tokenizer"] = AutoTokenizer.from_pretrained(str(self.path("tokenizer")))
        return self.cache["tokenizer"]

    def blocks(self) -> Any:
        """The blocks stage's artefact (`data/blocks/`: train and validation blocks), opened once per process."""
        if "blocks" not in self.cache:
            self.cache["blocks"] = open_blocks(self.path("data", "blocks"))
        return self.cache["blocks"]
