"""The data report: how much data a recipe has, what its model will see, and what a budget buys.

`llmforge data-report RECIPE` runs the data and tokenizer stages (into `--out`, which a later
`llmforge run --out` reuses, or a temporary dir), tokenizes and packs the blocks exactly as training
will, and counts: documents, words, tokens, tokens per word, blocks, steps per epoch, and tokens per
parameter against Chinchilla's guide of about 20 (Hoffmann et al. 2022). With a compute budget it
suggests the model size for it by the rule `model.preset: auto` builds with (llmforge.training.sizing), and
a recipe with `preset: auto` is reported at the size its model stage will choose.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from llmforge import hub, rundir
from llmforge.config.schema import TrainConfig
from llmforge.data.blocks import open_blocks
from llmforge.errors import ConfigError
from llmforge.models.build import CHINCHILLA_TOKENS_PER_PARAM
from llmforge.models.families import AUTO
from llmforge.tools.plots import read_metrics
from llmforge.training import sizing
from llmforge.training.arguments import planned_steps
from llmforge.training.budget import parse_duration


def data_report(
    recipe: Any,
    out: str | Path | None = None,
    console: Console | None = None,
    budget_flops: float | None = None,
    budget_hours: float | None = None,
    flops_per_second: float | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Count the recipe's data as training will see it; with a budget, suggest a model size."""
    console = console or Console()
    if recipe.data is None or recipe.tokenizer is None or recipe.model is None:
        raise ConfigError("data-report needs a recipe with data, tokenizer and model blocks (it pretrains).")
    if budget_flops is not None and budget_hours is not None:
        raise ConfigError("Give --budget-flops or --budget-hours, not both.")
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="llmforge-report-")
        out = tmp.name
    try:
        return _report(recipe, Path(out), console, budget_flops, budget_hours, flops_per_second, processes, tmp)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _report(recipe, out, console, budget_flops, budget_hours, flops_per_second, processes, tmp) -> dict[str, Any]:
    started = time.perf_counter()
    recipe.run(out, console=console, until="blocks")  # the same blocks the train stage reads
    blocks = open_blocks(out / "data" / "blocks")
    stats = rundir.read_manifest(out / "data" / "blocks")["info"]
    docs = _read_json(out / "data" / "stats.json")["documents"]
    T = recipe.model.context_length
    cfg = recipe.train or TrainConfig()
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    model_cfg, sized = recipe.model, None
    assumed = (flops_per_second, "assumed (--flops-per-second)") if flops_per_second is not None else None
    if model_cfg.preset == AUTO:  # the size the model stage will choose for this budget, chosen the same way
        model_cfg, sized = sizing.for_budget(
            model_cfg,
            tok,
            cfg,
            len(blocks["train"]),
            None if recipe.data.streaming else stats["train"]["tokens"],
            processes,
            measure=(lambda _: assumed) if assumed else None,
        )
    params = count_parameters(model_cfg, tok)
    per_epoch = planned_steps(dataclasses.replace(cfg, max_steps=None, epochs=1.0), len(blocks["train"]), processes)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * T * processes
    time_budget = parse_duration(cfg.max_time, "train.max_time")
    if time_budget is not None and budget_hours is None and budget_flops is None:
        budget_hours = time_budget / 3600  # the recipe's own budget: the report plans what training will do
    throughput = None
    if budget_hours is not None or time_budget is not None:
        timed = (sized["flops_per_second"], sized["measured"]) if sized and "measured" in sized else None
        throughput = assumed or timed or measure_throughput(model_cfg, tok, cfg, out, params, T, console)
    planned = planned_steps(cfg, len(blocks["train"]), processes)
    if time_budget is not None and throughput is not None:  # the steps train.max_time holds at this speed
        in_time = max(1, int(time_budget * throughput[0] / (6 * params * tokens_per_step)))
        planned = min(planned, in_time)
    train_tokens = stats["train"]["tokens"]
    report: dict[str, Any] = {
        "documents": docs["train"]["documents"] + docs["validation"]["documents"],
        "train_documents": docs["train"]["documents"],
        "validation_documents": docs["validation"]["documents"],
        "words": docs["train"]["words"] + docs["validation"]["words"],
        "tokens": stats["train"]["tokens"] + stats["validation"]["tokens"],
        "train_tokens": train_tokens,
        "tokens_per_word": stats["tokens_per_word"],
        "context_length": T,
        "train_blocks": stats["train"]["blocks"],
        "validation_blocks": stats["validation"]["blocks"],
        "parameters": params,
        "processes": processes,
        "tokens_per_step": tokens_per_step,
        "steps_per_epoch": per_epoch,
        "planned_steps": planned,
        "planned_tokens": planned * tokens_per_step,
        "planned_epochs": planned * tokens_per_step / max(stats["train"]["blocks"] * T, 1),
        "tokens_per_parameter": train_tokens / params,
        "chinchilla_tokens": CHINCHILLA_TOKENS_PER_PARAM * params,
        "chinchilla_parameters": train_tokens / CHINCHILLA_TOKENS_PER_PARAM,
        "planned_flops": 6 * params * planned * tokens_per_step,
        "streaming": bool(recipe.data.streaming),
        "max_time": cfg.max_time,
        "auto": sized,
    }
    if budget_flops is not None or budget_hours is not None:
        report["budget"] = suggest(model_cfg, tok, report, budget_flops, budget_hours, throughput)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_report(console, report, None if tmp else out)
    return report


def count_parameters(model_cfg: Any, tok: Any) -> int:
    """Parameters of the recipe's model, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not model_cfg.from_pretrained:
        return sizing.parameters(model_cfg, tok)
    with torch.device("meta"):
        config = hub.load(AutoConfig, model_cfg.from_pretrained, "model.from_pretrained")
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def suggest(
    model_cfg: Any,
    tok: Any,
    report: dict[str, Any],
    budget_flops: float | None,
    budget_hours: float | None,
    throughput: tuple[float, str] | None,
) -> dict[str, Any]:
    """The compute-optimal size for a budget and the ladder's shape for it in the recipe's family, as
    `model.preset: auto` chooses (llmforge.training.sizing). `throughput`: (training FLOP/s, where that
    figure came from), needed with `budget_hours`."""
    flops_per_second, throughput_source = throughput or (None, None)
    if budget_hours is not None:
        assert flops_per_second is not None
        budget_flops = budget_hours * 3600 * flops_per_second
    assert budget_flops is not None
    if budget_flops <= 0:
        raise ConfigError("The compute budget must be positive.")
    shape, n_opt = sizing.for_flops(model_cfg, tok, budget_flops, report["train_tokens"])
    ratio = sizing.tokens_per_parameter(budget_flops)
    return {
        "flops": budget_flops,
        "hours": budget_hours,
        "flops_per_second": flops_per_second,
        "throughput_source": throughput_source,
        "parameters": n_opt,
        "tokens_per_parameter": ratio,
        "tokens": ratio * n_opt,
        "epochs_of_this_data": ratio * n_opt / max(report["train_tokens"], 1),
        "shape": {"n_layer": shape.n_layer, "n_embd": shape.n_embd, "n_head": shape.n_head},
        "shape_parameters": sizing.parameters(shape, tok),
    }


def measure_throughput(
    model_cfg: Any, tok: Any, train: Any, out: Path, params: int, length: int, console: Console
) -> tuple[float, str]:
    """Training FLOP/s (6 N per token) of the recipe's model on this machine: from this run dir's own
    training log if it has one, else timed over a few optimizer steps of one micro-batch now."""
    speeds = [
        r["tokens_per_second"] for r in read_metrics(out) if r.get("stage") == "train" and r.get("tokens_per_second")
    ]
    if speeds:
        tps = sorted(speeds)[len(speeds) // 2]
        return 6 * params * tps, f"measured: median of {len(speeds)} logged training intervals in {out}"
    console.print("  timing the model: 1 warm-up + 5 optimizer steps of one micro-batch on this machine ...")
    return sizing.flops_per_second(model_cfg, tok, train.batch_size, length, train.precision)


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def _n(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:,.0f}"


def print_report(console: Console, r: dict[str, Any], kept: Path | None) -> None:
    table = Table(title="llmforge data report", show_header=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("note")
    rows = [
        ("documents", f"{r['documents']:,}", f"{r['train_documents']:,} train / {r['validation_documents']:,} val"),
        ("words", f"{r['words']:,}", "whitespace-separated"),
        ("tokens", f"{r['tokens']:,}", f"{r['train_tokens']:,} train, EOS after each document"),
        ("tokens per word", f"{r['tokens_per_word']:.3f}", "the tokenizer's compression"),
        ("blocks", f"{r['train_blocks']:,}", f"train blocks of {r['context_length']} ({r['validation_blocks']:,} val)"),
        (
            "tokens per step",
            f"{r['tokens_per_step']:,}",
            f"batch x grad_accum x context x {r['processes']} process(es)",
        ),
        ("steps per epoch", f"{r['steps_per_epoch']:,}", ""),
        (
            "planned steps",
            f"{r['planned_steps']:,}",
            f"{_n(r['planned_tokens'])} tokens = {r['planned_epochs']:.2f} epochs; {r['planned_flops']:.2e} FLOPs"
            + (f"; about what train.max_time {r['max_time']} holds at the speed below" if r.get("max_time") else ""),
        ),
        ("parameters", _n(r["parameters"]), f"{r['parameters']:,}"),
        (
            "tokens per parameter",
            f"{r['tokens_per_parameter']:.2f}",
            f"Chinchilla's guide: {CHINCHILLA_TOKENS_PER_PARAM} -> {_n(r['chinchilla_tokens'])} tokens for this "
            f"model, or a {_n(r['chinchilla_parameters'])}-parameter model for this data",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if r.get("auto"):
        console.print(f"model.preset auto will build {sizing.describe(r['auto'])}")
    if r.get("streaming"):
        console.print(
            "[yellow]data.streaming: these counts are of the head of the stream the data stage reads (the "
            "validation rows and the tokenizer's sample), not of the corpus, which is read while training. "
            "The planned steps and tokens, and the budget below, do not depend on it.[/]"
        )
    b = r.get("budget")
    if b:
        how = f"{b['hours']:g} h x {b['flops_per_second']:.3g} FLOP/s, {b['throughput_source']}" if b["hours"] else ""
        s = b["shape"]
        console.print(
            f"budget {b['flops']:.3g} FLOPs{f' ({how})' if how else ''}:\n"
            f"  compute-optimal (C = 6ND, D = {b['tokens_per_parameter']:.3g}N at this budget: "
            "llmforge.training.sizing): "
            f"{_n(b['parameters'])} parameters on {_n(b['tokens'])} tokens "
            f"({b['epochs_of_this_data']:.2f} epochs of this data"
            + (
                f"; more than {sizing.MAX_EPOCHS} passes repeat the text too often: the shape below is larger, so "
                "that it sees the data fewer times; more data would do better"
                if b["epochs_of_this_data"] > sizing.MAX_EPOCHS
                else ""
            )
            + ")\n  the shape for it (what model.preset auto builds): model: "
            f"{{n_layer: {s['n_layer']}, n_embd: {s['n_embd']}, n_head: {s['n_head']}}}"
            f" ({_n(b['shape_parameters'])} parameters)"
        )
    if kept:
        console.print(
            f"prepared data, tokenizer and blocks are in {kept}: `llmforge run RECIPE --out {kept}` reuses them"
        )
    console.print(f"({r['seconds']:.1f}s)")
