"""Finetune stage: turn a base model into an instruction-following one with transformers' Trainer.

The base is this run's `train/final` or any local HF causal-LM dir (`finetune.base`). The stage reads
rows through a data-source plugin (every column), turns them into conversations with a format plugin,
installs a chat-template plugin into the tokenizer (new special tokens get new embedding rows),
renders and tokenizes every conversation and labels the tokens a loss-mask plugin selects
(llmforge.conversations). Examples longer than `max_length` are filtered, truncated or refused; short
ones may be packed several to a row with positions and attention kept per example. The examples are
cached in `finetune/data/`.

Training is the train stage's machinery (checkpoints trusted only when complete, exact resume,
metrics.jsonl, early stopping with the best checkpoint kept), on every weight or on LoRA adapters
(llmforge.lora). Plugins adjust the model through `prepare_model` (NEFTune attaches there). The result
in `finetune/final/` is a plain HF model dir whose tokenizer carries the chat template and whose
generation config stops at the end-of-turn token; with `lora.merge: false` it holds the adapter, which
names its base dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from rich.console import Console
from rich.text import Text
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
from transformers.trainer_callback import PrinterCallback

from llmforge import rundir
from llmforge.attention import document_attention
from llmforge.callbacks import LlmforgeCallback, truncate_metrics
from llmforge.config import DataConfig, FinetuneConfig, from_mapping
from llmforge.context import Context
from llmforge.conversations import (
    Example,
    ExampleBuilder,
    Installed,
    Problem,
    Report,
    install_template,
    report_lines,
)
from llmforge.errors import ConfigError, DataError
from llmforge.lora import apply_lora, check_targets, parameter_counts
from llmforge.packing import DocumentMaskGuard, ExampleCollator, pack
from llmforge.plugins import Plugins
from llmforge.stages import data
from llmforge.stages.train import (
    last_evaluation,
    planned_steps,
    resume_point,
    retry_on_oom,
    save_final,
    training_arguments,
    validate,
)
from llmforge.trainer import LlmforgeTrainer

ARTEFACT = "finetune/final"
DATA_KEYS = (  # the settings that shape the examples (and so the cached finetune/data)
    "source", "path", "name", "config", "split", "data_files", "encoding", "options", "max_examples",
    "val_fraction", "seed", "format", "chat_template", "loss_mask", "system_prompt", "max_length",
    "length_policy", "packing",
)  # fmt: skip


def enabled(recipe: Any) -> bool:
    return recipe.finetune is not None


def describe(out: dict[str, Any]) -> str:
    if "val_loss" not in out:
        return ""
    how = f"LoRA r={out['lora_r']}{' merged' if out.get('merged') else ' adapter'}" if out.get("lora_r") else "full"
    return (
        f"val loss {out['val_loss']:.3f} on {out['validation_examples']} examples; {how}, "
        f"{out['trainable_parameters'] / out['total_parameters']:.1%} of weights trained; "
        f"loss on {out['loss_share']:.0%} of tokens"
    )


def fingerprint(ctx: Context) -> str:
    return rundir.fingerprint("finetune", dataclasses.asdict(ctx.recipe.finetune), compat_fingerprint(ctx))


def compat_fingerprint(ctx: Context) -> str:
    """What a checkpoint must share with the recipe to be resumed: the base, the examples, the adapters."""
    lora = ctx.recipe.finetune.lora
    return rundir.fingerprint("finetune-compat", data_fingerprint(ctx), dataclasses.asdict(lora) if lora else None)


def data_fingerprint(ctx: Context) -> str:
    cfg: FinetuneConfig = ctx.recipe.finetune
    settings = {key: getattr(cfg, key) for key in DATA_KEYS}
    inputs = data._input_stats(source_config(cfg)) if cfg.path else None
    return rundir.fingerprint("finetune-data", settings, inputs, base_fingerprint(ctx))


def base_fingerprint(ctx: Context) -> Any:
    cfg: FinetuneConfig = ctx.recipe.finetune
    if cfg.base is None:
        if "train" not in ctx.fingerprints:
            raise ConfigError(
                "finetune.base is not set and the recipe trains no model (no train block): name the model dir "
                "to fine-tune in finetune.base."
            )
        return ctx.fingerprints["train"]
    path = Path(cfg.base).expanduser()
    if path.is_dir():
        return rundir.file_stats([p for p in path.rglob("*") if p.is_file()])
    return cfg.base


def run(ctx: Context) -> dict[str, Any]:
    cfg: FinetuneConfig = ctx.recipe.finetune
    validate(cfg, "finetune")
    base = base_dir(cfg, ctx.run_dir)
    if cfg.lora is not None:
        check_targets(base, cfg.lora)  # a wrong target module is reported before anything is written
    tok, installed = load_tokenizer(base, cfg, ctx.plugins)
    examples = prepare(ctx, tok, installed, base)
    shorter = "finetune.max_length" if cfg.packing else "finetune.max_length or the longest examples"
    return retry_on_oom(
        ctx, cfg, lambda attempt: fit(ctx, attempt, base, tok, installed, examples), "finetune", shorter
    )


def fit(
    ctx: Context, cfg: FinetuneConfig, base: str, tok: Any, installed: Installed, examples: datasets.DatasetDict
) -> dict[str, Any]:
    """One attempt at fine-tuning: model, adapters, plugins, Trainer; resume if a checkpoint fits; save."""
    ckpt_dir = ctx.path("finetune", "checkpoints")
    compat = compat_fingerprint(ctx)
    resume = resume_point(ckpt_dir, compat, ctx)
    model = load_model(base, tok, cfg, ctx)
    if cfg.lora is not None:
        with _quiet_peft():
            model = apply_lora(model, cfg.lora, installed.added_ids)
    trainable, total = parameter_counts(model)
    how = ""
    if cfg.lora is not None:
        how = f": LoRA r={cfg.lora.r} on {', '.join(sorted(model.peft_config['default'].target_modules))}"
        how += f" + {len(installed.added_ids)} new token rows" if installed.added_ids else ""
    ctx.console.print(f"  training {trainable:,} of {total:,} parameters ({trainable / total:.2%}){how}")
    ctx.plugins.call("prepare_model", model=model, stage="finetune", config=cfg)
    guard = DocumentMaskGuard().attach(model) if cfg.packing and cfg.document_aware else None

    world = max(1, torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
    stats = ctx.cache["finetune_data"]
    row_tokens = stats["train"]["tokens"] / max(stats["train"]["rows"], 1)
    tokens_per_step = round(cfg.batch_size * cfg.grad_accum * world * row_tokens)  # a mean: rows vary in length
    steps = planned_steps(cfg, len(examples["train"]), world)
    args = training_arguments(cfg, ckpt_dir, steps)
    callback = LlmforgeCallback(
        "finetune",
        ctx.run_dir,
        ctx.plugins,
        ctx.console,
        tokens_per_step,
        compat,
        cfg.keep_last,
        divergence_factor=cfg.divergence_factor,
    )
    callbacks: list[Any] = [callback]
    if cfg.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    trainer = LlmforgeTrainer(
        model=model,
        args=args,
        train_dataset=examples["train"],
        eval_dataset=examples["validation"],
        data_collator=ExampleCollator(pad_id, cfg.document_aware, fill_id=tok.eos_token_id),
        processing_class=tok,
        callbacks=callbacks,
        on_nan=cfg.on_nan,
        max_skipped_batches=cfg.max_skipped_batches,
        stage="finetune",
        fused_loss=cfg.fused_loss,
    )
    trainer.remove_callback(PrinterCallback)
    truncate_metrics(ctx.path("metrics.jsonl"), "finetune", resume[1] if resume else 0)
    if resume:
        ctx.console.print(f"  resuming from {resume[0].name} (step {resume[1]})")
    ctx.console.print(
        f"  {steps} steps of {cfg.batch_size} x {cfg.grad_accum}{f' x {world}' if world > 1 else ''} "
        f"{'packed rows' if cfg.packing else 'examples'} (about {tokens_per_step:,} tokens each)"
    )
    with document_attention(model):
        started = time.perf_counter()
        with _quiet_peft():
            result = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
        wall = time.perf_counter() - started
        if guard is not None:
            guard.remove()
        evaluation = last_evaluation(trainer) or trainer.evaluate()
    done_steps = trainer.state.global_step - (resume[1] if resume else 0)
    best = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
    outputs = {
        "steps": trainer.state.global_step,
        "stopped_early": trainer.state.global_step < steps,
        "best_step": int(Path(best).name.split("-")[-1]) if best else None,
        "train_loss": result.training_loss,
        "val_loss": evaluation["eval_loss"],
        "val_perplexity": math.exp(min(evaluation["eval_loss"], 50)),
        "train_examples": stats["train"]["examples"],
        "validation_examples": stats["validation"]["examples"],
        "loss_share": stats["train"]["loss_share"],
        "trainable_parameters": trainable,
        "total_parameters": total,
        "lora_r": cfg.lora.r if cfg.lora else None,
        "merged": bool(cfg.lora and cfg.lora.merge),
        "neftune_alpha": cfg.neftune_alpha,
        "end_of_turn": installed.end_of_turn,
        "base": base,
        "tokens_per_second": round(done_steps * tokens_per_step / wall, 1) if wall > 0 else None,
        "train_seconds": round(wall, 1),
    }
    final_model = trainer.model
    if cfg.lora is not None and cfg.lora.merge:
        final_model = trainer.model.merge_and_unload()
    stop_ids = list(dict.fromkeys(i for i in (installed.end_of_turn_id, tok.eos_token_id) if i is not None))
    if args.should_save:
        final = ctx.path("finetune", "final")
        with _quiet_peft():
            save_final(trainer, tok, final, ctx.fingerprints["finetune"], outputs, final_model, stop_ids)
    ctx.cache.setdefault("models", {})["finetune"] = final_model  # the evaluate stage scores it without a reload
    return outputs


# --- the base model and its tokenizer ------------------------------------------------------------


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


def load_tokenizer(base: str, cfg: FinetuneConfig, plugins: Plugins) -> tuple[Any, Installed]:
    """The base's tokenizer with the recipe's chat template installed."""
    template = plugins.registries["chat_template"].get(cfg.chat_template)
    try:
        tok = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load the tokenizer of finetune.base '{base}': {_first_line(exc)}") from exc
    if not tok.is_fast:
        raise ConfigError(f"The tokenizer of '{base}' has no fast (Rust) version; loss masks need its offsets.")
    installed = install_template(tok, cfg.chat_template, template)
    return tok, installed


def load_model(base: str, tok: Any, cfg: FinetuneConfig, ctx: Context) -> torch.nn.Module:
    """The base model, with embedding rows added for the template's new tokens."""
    attn = ctx.recipe.model.attn_implementation if ctx.recipe.model is not None else "sdpa"
    try:
        model = AutoModelForCausalLM.from_pretrained(base, attn_implementation=attn)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load finetune.base '{base}': {_first_line(exc)}") from exc
    old = model.get_input_embeddings().num_embeddings
    if len(tok) > old:
        transformers.set_seed(cfg.seed)  # the new rows are sampled: the same seed, the same rows
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # its note on mean resizing is said below, once
        try:
            model.resize_token_embeddings(len(tok))
        finally:
            transformers.logging.set_verbosity(verbosity)
        ctx.console.print(
            f"  {len(tok) - old} new embedding row(s) for the chat template's tokens, drawn from the mean and "
            "covariance of the others"
        )
    return model


def model_positions(base: str) -> int | None:
    config = AutoConfig.from_pretrained(base)
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


# --- the examples --------------------------------------------------------------------------------


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
    load = plugins.data_source(cfg.source)
    try:
        rows = load(source_config(cfg))
    except DataError as exc:
        raise DataError(f"finetune data: {exc} (in a finetune block the keys have the same names)") from exc
    if isinstance(rows, datasets.IterableDataset):
        stream = rows.take(cfg.max_examples) if cfg.max_examples else rows
        rows = datasets.Dataset.from_list(list(stream))
    if not isinstance(rows, datasets.Dataset):
        raise DataError(f"Data source '{cfg.source}' returned a {type(rows).__name__}, not a datasets.Dataset.")
    if cfg.max_examples is not None:
        rows = rows.select(range(min(cfg.max_examples, len(rows))))
    if len(rows) == 0:
        raise DataError(f"The finetune data {where(cfg)} holds no rows.")
    return rows


def where(cfg: FinetuneConfig) -> str:
    return f"'{cfg.path}'" if isinstance(cfg.path, str) else str(cfg.path or cfg.name or cfg.source)


def builder(cfg: FinetuneConfig, tok: Any, plugins: Plugins) -> ExampleBuilder:
    formats = plugins.registries["format"]
    return ExampleBuilder(
        tok,
        formats.get(cfg.format),
        plugins.registries["loss_mask"].get(cfg.loss_mask),
        {"format": cfg.format, "chat_template": cfg.chat_template, "loss_mask": cfg.loss_mask},
        system_prompt=cfg.system_prompt,
        where=where(cfg),
        other_formats={name: formats.get(name) for name in formats.names()},
    )


def max_length(cfg: FinetuneConfig, base: str) -> int:
    positions = model_positions(base)
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


def prepare(ctx: Context, tok: Any, installed: Installed, base: str) -> datasets.DatasetDict:
    """Train and validation examples (cached in finetune/data), with their statistics in ctx.cache."""
    from llmforge.recipe import distributed_state

    cfg: FinetuneConfig = ctx.recipe.finetune
    out = ctx.path("finetune", "data")
    fp = data_fingerprint(ctx)
    dist = distributed_state()  # under torchrun every process fine-tunes; one prepares, the others wait
    with dist.main_process_first() if dist is not None else contextlib.nullcontext():
        if not rundir.is_complete(out, fp):
            if not 0.0 < cfg.val_fraction < 1.0:
                raise ConfigError(f"finetune.val_fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}.")
            splits, stats = build_examples(cfg, tok, installed, ctx.plugins, max_length(cfg, base), ctx.console)
            with rundir.atomic_dir(out, fp, stats) as tmp:
                splits.save_to_disk(str(tmp))
    stats = rundir.read_manifest(out)["info"]
    ctx.cache["finetune_data"] = stats
    for line in summary_lines(stats, cfg):
        ctx.console.print(f"  {line}")
    return datasets.load_from_disk(str(out))


def build_examples(
    cfg: FinetuneConfig, tok: Any, installed: Installed, plugins: Plugins, limit: int, console: Console
) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """Rows -> examples -> length policy -> train/validation split -> (packed) rows, and their counts."""
    rows = load_rows(cfg, plugins)
    report = Report()
    console.print(f"  rendering {len(rows):,} rows with format '{cfg.format}' and chat template '{cfg.chat_template}'")
    examples = builder(cfg, tok, plugins).build(rows, report)
    if not examples:
        raise DataError(f"No row of {where(cfg)} gives a usable conversation: " + "; ".join(report.lines()))
    kept, lengths = apply_length_policy(examples, cfg, limit)
    if len(kept) < 2:
        raise DataError(
            f"Only {len(kept)} example(s) of {where(cfg)} remain after the length policy "
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
                f"Row {ex.row + 1} of {where(cfg)} ({first[:60]!r}...) renders to {n} tokens, more than "
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


# --- show-example --------------------------------------------------------------------------------


def show_example(recipe: Any, index: int, console: Console, run_dir: str | Path | None = None) -> Example | Problem:
    """Print row `index` (0-based) of the recipe's finetune data as the model will see it: the tokens
    that carry loss highlighted, the others dimmed, and the counts. Returns the example (or why the row
    is dropped)."""
    from llmforge.plugins import get_plugins

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
    tok, installed = load_tokenizer(base, cfg, plugins)
    rows = load_rows(cfg, plugins)
    if not 0 <= index < len(rows):
        raise ConfigError(f"--index {index} is out of range: {where(cfg)} has {len(rows)} rows (0 to {len(rows) - 1}).")
    result = builder(cfg, tok, plugins).example(rows[index], index)
    console.print(
        f"[bold]row {index + 1}[/] of {where(cfg)} (--index {index}): format '{cfg.format}', "
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


# --- the Python entry point ----------------------------------------------------------------------


def finetune(
    base: str | Path, config: FinetuneConfig | dict[str, Any] | None, out: str | Path, console: Console | None = None
) -> Any:
    """Fine-tune any local HF causal-LM dir: `llmforge.finetune("gpt2-dir", FinetuneConfig(...), "runs/ft")`.

    `config` is a FinetuneConfig or a mapping of its keys (as in a recipe's finetune block); the result
    is a `Run` whose `model_dir` is `out/finetune/final`."""
    from llmforge.recipe import Recipe

    if config is None or isinstance(config, dict):
        config = from_mapping(FinetuneConfig, config or {}, "finetune")
    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig or a mapping, got {type(config).__name__}.")
    config = dataclasses.replace(config, base=str(Path(base).expanduser()))
    recipe = Recipe(name="finetune", data=None, tokenizer=None, model=None, train=None, finetune=config)
    return recipe.run(out, console=console)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft warns at every save that it stores the resized embedding; that is what we want, said once here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
