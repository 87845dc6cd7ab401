"""Fine-tuning examples: the base model and its tokenizer with a chat template, and the rows rendered,
tokenized, masked, length-checked, split and (optionally) packed.

Rows come through a data-source plugin (every column) and become conversations through a format
plugin; the chat-template plugin is installed into the base's tokenizer (new special tokens get new
embedding rows); a loss-mask plugin picks the tokens that carry loss (llmforge.chat.conversations).
Examples longer than `max_length` are filtered, truncated or refused; short ones may be packed several
to a row with positions and attention kept per example.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from rich.console import Console
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmforge import hub, rundir
from llmforge.chat.conversations import (
    Example,
    ExampleBuilder,
    Installed,
    Report,
    install_template,
    located_line,
    report_lines,
)
from llmforge.config.schema import DataConfig, FinetuneConfig
from llmforge.data.batches import pack
from llmforge.data.documents import where_of
from llmforge.errors import ConfigError, DataError, first_line
from llmforge.models.loading import max_positions
from llmforge.plugin.manager import Plugins


def base_dir(cfg: FinetuneConfig, run_dir: Path) -> str:
    """finetune.base (a local dir, made absolute so an adapter can name it) or this run's train/final."""
    if cfg.base is None:
        final = run_dir / "train" / "final"
        if not rundir.is_complete(final):
            raise ConfigError(
                f"finetune.base is not set and {final} holds no finished model. Run the whole recipe, "
                "or set finetune.base to a model dir."
            )
        return str(final.resolve())
    path = Path(cfg.base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"finetune.base '{cfg.base}' is a directory without config.json, not a model dir.")
        return str(path.resolve())
    if path.exists() or cfg.base.startswith((".", "/", "~")):
        raise ConfigError(f"finetune.base '{cfg.base}' is not a model directory.")
    return cfg.base  # a hub name


def base_tokenizer(base: str, cfg: FinetuneConfig, plugins: Plugins) -> tuple[Any, Installed]:
    """The base's tokenizer with the recipe's chat template installed."""
    template = plugins.registries["chat_template"].get(cfg.chat_template)
    try:
        tok = hub.load(AutoTokenizer, base, "finetune.base")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load the tokenizer of finetune.base '{base}': {first_line(exc)}") from exc
    if not tok.is_fast:
        raise ConfigError(f"The tokenizer of '{base}' has no fast (Rust) version; loss masks need its offsets.")
    installed = install_template(tok, cfg.chat_template, template)
    return tok, installed


def base_model(
    base: str, tok: Any, cfg: FinetuneConfig, console: Console, attn: str = "sdpa", **load: Any
) -> torch.nn.Module:
    """The base model, with embedding rows added for the template's new tokens. A family transformers has
    no SDPA kernel for (Gemma 2) runs its own eager attention, said in one line. `load`: more
    `from_pretrained` keywords (a 4-bit quantization)."""
    try:
        try:
            model = hub.load(AutoModelForCausalLM, base, "finetune.base", attn_implementation=attn, **load)
        except ValueError as exc:
            if attn != "sdpa" or "does not support an attention implementation" not in str(exc):
                raise
            model = hub.load(AutoModelForCausalLM, base, "finetune.base", attn_implementation="eager", **load)
            console.print(
                f"  {model.config.model_type} has no SDPA attention in transformers: its eager attention runs "
                "instead (slower; the packed rows' document masks still apply)"
            )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load finetune.base '{base}': {first_line(exc)}") from exc
    old = model.get_input_embeddings().num_embeddings
    if len(tok) > old:
        transformers.set_seed(cfg.seed)  # the new rows are sampled: the same seed, the same rows
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # its note on mean resizing is said below, once
        try:
            model.resize_token_embeddings(len(tok))
        finally:
            transformers.logging.set_verbosity(verbosity)
        console.print(
            f"  {len(tok) - old} new embedding row(s) for the chat template's tokens, drawn from the mean and "
            "covariance of the others"
        )
    return model


def source_config(cfg: FinetuneConfig) -> DataConfig:
    """The finetune block's data keys as a data-source config that keeps every column."""
    return DataConfig(
        source=cfg.source,
        path=cfg.path,
        text_column=None,
        encoding=cfg.encoding,
        name=cfg.name,
        config=cfg.config,
        split=cfg.split,
        data_files=cfg.data_files,
        options=cfg.options,
        max_documents=cfg.max_examples,
    )


def load_rows(cfg: FinetuneConfig, plugins: Plugins) -> datasets.Dataset:
    """The instruction rows, every column, at most `max_examples` of them."""
    load = plugins.data_source(cfg.source).load
    try:
        rows = load(source_config(cfg))
    except DataError as exc:  # a source names its keys as data.*: here they are the finetune block's
        keys = {f.name for f in dataclasses.fields(DataConfig)} & {f.name for f in dataclasses.fields(FinetuneConfig)}
        message = re.sub(r"\bdata\.(\w+)", lambda m: f"finetune.{m[1]}" if m[1] in keys else m[0], str(exc))
        raise DataError(f"finetune data: {message}") from exc
    if isinstance(rows, datasets.IterableDataset):
        stream = rows.take(cfg.max_examples) if cfg.max_examples else rows
        rows = datasets.Dataset.from_list(list(stream))
    if not isinstance(rows, datasets.Dataset):
        raise DataError(f"Data source '{cfg.source}' returned a {type(rows).__name__}, not a datasets.Dataset.")
    if cfg.max_examples is not None:
        rows = rows.select(range(min(cfg.max_examples, len(rows))))
    if len(rows) == 0:
        raise DataError(f"The finetune data {where_of(cfg)} holds no rows.")
    return rows


def builder(cfg: FinetuneConfig, tok: Any, plugins: Plugins) -> ExampleBuilder:
    formats = plugins.registries["format"]
    return ExampleBuilder(
        tok,
        formats.get(cfg.format),
        plugins.registries["loss_mask"].get(cfg.loss_mask),
        {"format": cfg.format, "chat_template": cfg.chat_template, "loss_mask": cfg.loss_mask},
        system_prompt=cfg.system_prompt,
        where=where_of(cfg),
        other_formats={name: formats.get(name) for name in formats.names()},
    )


def max_length(cfg: FinetuneConfig, base: str) -> int:
    positions = max_positions(hub.load(AutoConfig, base, "finetune.base"))
    if cfg.max_length is None:
        if positions is None:
            raise ConfigError(f"'{base}' does not say how many positions it has: set finetune.max_length.")
        return positions
    if cfg.max_length < 2:
        raise ConfigError(f"finetune.max_length must be at least 2, got {cfg.max_length}.")
    if positions is not None and cfg.max_length > positions:
        raise ConfigError(
            f"finetune.max_length {cfg.max_length} exceeds the {positions} positions of '{base}'. "
            f"Lower finetune.max_length to at most {positions}."
        )
    return cfg.max_length


def build_examples(
    cfg: FinetuneConfig, tok: Any, installed: Installed, plugins: Plugins, limit: int, console: Console
) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Rows -> examples -> length policy -> train/validation split -> (packed) rows, and their counts."""
    rows = load_rows(cfg, plugins)
    report = Report()
    console.print(f"  rendering {len(rows):,} rows with format '{cfg.format}' and chat template '{cfg.chat_template}'")
    build = builder(cfg, tok, plugins)
    examples = build.build(rows, report)
    if not examples:
        raise DataError(f"No row of {where_of(cfg)} gives a usable conversation: " + "; ".join(report.lines()))
    console.print(f"  {located_line(examples, build.names)}")
    kept, lengths = apply_length_policy(examples, cfg, limit)
    if len(kept) < 2:
        raise DataError(
            f"Only {len(kept)} example(s) of {where_of(cfg)} remain after the length policy "
            f"({lengths['filtered']} longer than {limit} tokens filtered): too few to train and validate."
        )
    order = list(range(len(kept)))
    random.Random(cfg.seed).shuffle(order)
    n_val = min(len(kept) - 1, max(1, round(len(kept) * cfg.val_fraction)))
    split = {"validation": [kept[i] for i in sorted(order[:n_val])], "train": [kept[i] for i in sorted(order[n_val:])]}
    stats: dict[str, Any] = {
        "rows": report.rows,
        "examples": len(kept),
        "dropped": report.as_dict(),
        "length": lengths,
        "end_of_turn": installed.end_of_turn,
        "added_tokens": installed.added_tokens,
    }
    out = {}
    for name in ("train", "validation"):
        out[name], stats[name] = to_rows(split[name], cfg.packing, limit)
    return datasets.DatasetDict(out), stats


def apply_length_policy(examples: list[Example], cfg: FinetuneConfig, limit: int) -> tuple[list[Example], dict]:
    kept: list[Example] = []
    counts = {"max_length": limit, "policy": cfg.length_policy, "filtered": 0, "truncated": 0, "truncated_away": 0}
    counts["longest"] = max(len(e.input_ids) for e in examples)
    for ex in examples:
        n = len(ex.input_ids)
        if n <= limit:
            kept.append(ex)
        elif cfg.length_policy == "error":
            first = next((m["content"] for m in ex.messages if m["role"] == "user"), "")
            raise DataError(
                f"Row {ex.row + 1} of {where_of(cfg)} ({first[:60]!r}...) renders to {n} tokens, more than "
                f"finetune.max_length {limit} (finetune.length_policy: error). Shorten that conversation, raise "
                "finetune.max_length (up to the model's positions), or set length_policy to filter or truncate."
            )
        elif cfg.length_policy == "filter":
            counts["filtered"] += 1
        else:
            ex.input_ids, ex.offsets, ex.loss = ex.input_ids[:limit], ex.offsets[:limit], ex.loss[:limit]
            if any(ex.loss):
                counts["truncated"] += 1
                kept.append(ex)
            else:
                counts["truncated_away"] += 1  # nothing left to learn from
    return kept, counts


def to_rows(examples: list[Example], packing: bool, limit: int) -> tuple[datasets.Dataset, dict[str, Any]]:
    """One example per row, or examples packed into rows of `limit` tokens with restarting positions."""
    groups = pack([len(e.input_ids) for e in examples], limit) if packing else [[i] for i in range(len(examples))]
    columns: dict[str, list] = {"input_ids": [], "labels": [], "rows": []}
    if packing:
        columns["position_ids"] = []
    for group in groups:
        members = [examples[i] for i in group]
        columns["input_ids"].append([t for e in members for t in e.input_ids])
        columns["labels"].append([t for e in members for t in e.labels()])  # each starts with -100
        columns["rows"].append([e.row for e in members])
        if packing:
            columns["position_ids"].append([p for e in members for p in range(len(e.input_ids))])
    tokens = sum(len(e.input_ids) for e in examples)
    loss = sum(e.loss_tokens for e in examples)
    stats = {
        "examples": len(examples),
        "rows": len(groups),
        "tokens": tokens,
        "loss_tokens": loss,
        "loss_share": round(loss / max(tokens, 1), 4),
        "fill": round(tokens / (len(groups) * limit), 4) if packing else None,
    }
    return datasets.Dataset.from_dict(columns), stats


def summary_lines(stats: dict[str, Any], cfg: FinetuneConfig) -> list[str]:
    lines = [
        f"{stats['rows']:,} rows -> {stats['examples']:,} examples ({stats['train']['examples']:,} train, "
        f"{stats['validation']['examples']:,} validation); end of turn {stats['end_of_turn']!r}"
        + (f", added tokens {', '.join(stats['added_tokens'])}" if stats["added_tokens"] else "")
    ]
    lines += report_lines(stats["dropped"])
    length = stats["length"]
    if length["filtered"]:
        lines.append(f"dropped {length['filtered']} example(s) longer than {length['max_length']} tokens (filter)")
    if length["truncated"] or length["truncated_away"]:
        lines.append(
            f"truncated {length['truncated']} example(s) to {length['max_length']} tokens"
            + (f"; {length['truncated_away']} lost every loss token, dropped" if length["truncated_away"] else "")
        )
    train = stats["train"]
    lines.append(
        f"loss on {train['loss_tokens']:,} of {train['tokens']:,} training tokens ({train['loss_share']:.1%}, "
        f"mask '{cfg.loss_mask}')"
        + (f"; packed into {train['rows']:,} rows, {train['fill']:.0%} full" if train["fill"] is not None else "")
    )
    return lines
