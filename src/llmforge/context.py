"""What every stage receives: the run directory, the recipe, the plugins and the console."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from llmforge.plugins import Plugins

if TYPE_CHECKING:
    from llmforge.recipe import Recipe


@dataclass
class Context:
    run_dir: Path
    recipe: Recipe
    plugins: Plugins
    console: Console
    fingerprints: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)
