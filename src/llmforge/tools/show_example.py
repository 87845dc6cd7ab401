"""`llmforge show-example`: one fine-tuning row as the model will see it, loss-carrying tokens highlighted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from llmforge.chat.conversations import Example, Problem
from llmforge.chat.examples import base_dir, base_tokenizer, builder, load_rows, max_length
from llmforge.config.schema import FinetuneConfig
from llmforge.data.documents import where_of
from llmforge.errors import ConfigError
from llmforge.plugin.manager import get_plugins


def show_example(recipe: Any, index: int, console: Console, run_dir: str | Path | None = None) -> Example | Problem:
    """Print row `index` (0-based) of the recipe's finetune data as the model will see it: the tokens
    that carry loss highlighted, the others dimmed, and the counts. Returns the example (or why the row
    is dropped)."""
    cfg: FinetuneConfig | None = recipe.finetune
    if cfg is None:
        raise ConfigError("The recipe has no finetune block, so it has no examples to show.")
    plugins = get_plugins(recipe.plugins)
    if cfg.base is None and run_dir is None:
        raise ConfigError(
            "show-example needs the base model's tokenizer: set finetune.base, or pass --out with a run dir "
            "whose train stage has finished."
        )
    base = base_dir(cfg, Path(run_dir) if run_dir is not None else Path("."))
    tok, installed = base_tokenizer(base, cfg, plugins)
    rows = load_rows(cfg, plugins)
    if not 0 <= index < len(rows):
        raise ConfigError(
            f"--index {index} is out of range: {where_of(cfg)} has {len(rows)} rows (0 to {len(rows) - 1})."
        )
    result = builder(cfg, tok, plugins).example(rows[index], index)
    console.print(
        f"[bold]row {index + 1}[/] of {where_of(cfg)} (--index {index}): format '{cfg.format}', "
        f"chat template '{cfg.chat_template}', loss mask '{cfg.loss_mask}'",
        highlight=False,
    )
    if isinstance(result, Problem):
        console.print(f"[yellow]this row is dropped: {result.kind}[/] {result.detail}", highlight=False)
        return result
    text = Text()
    for i, ((start, end), carries) in enumerate(zip(result.offsets, result.loss, strict=True)):
        piece = result.rendered.text[start:end]
        shade = "on green4" if i % 2 else "on dark_green"  # alternate so token boundaries show
        text.append(piece.replace("\n", "\u21b5\n"), style=f"bold white {shade}" if carries else "dim")
    console.print(text)
    n, k = len(result.input_ids), result.loss_tokens
    limit = max_length(cfg, base)
    fits = "fits" if n <= limit else f"longer than max_length {limit}: {cfg.length_policy}"
    console.print(
        f"{n} tokens, {k} carry loss ({k / n:.1%}), {n - k} do not; {fits}. "
        f"End of turn {installed.end_of_turn!r}. Highlighted: trained; dim: context only.",
        highlight=False,
    )
    return result
