"""The data report: how much data a recipe has, what its model will see, and what a budget buys.

`llmforge data-report RECIPE` runs the data and tokenizer stages (into `--out`, which a later
`llmforge run --out` reuses, or a temporary dir), tokenizes and packs the blocks exactly as training
will, and counts: documents, words, tokens, tokens per word, blocks, steps per epoch, and tokens per
parameter against Chinchilla's guide of about 20 (Hoffmann et al. 2022). With a compute budget it
suggests the compute-optimal model size: C = 6 N D training FLOPs (attention not counted) and D = 20 N,
so N = sqrt(C / 120).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llmforge import rundir
from llmforge.config.schema import TrainConfig
from llmforge.data.blocks import open_blocks
from llmforge.errors import ConfigError
from llmforge.models.build import CHINCHILLA_TOKENS_PER_PARAM, build_model
from llmforge.tools.plots import read_metrics
from llmforge.training.arguments import planned_steps
from llmforge.training.budget import parse_duration
from llmforge.training.precision import choose as choose_precision

# GPT-2-shaped sizes to suggest from (n_layer, n_embd, n_head): the tiny example up to GPT-2 XL.
SHAPES = [
    (2, 128, 4),
    (4, 256, 4),
    (6, 384, 6),
    (8, 512, 8),
    (12, 768, 12),
    (24, 1024, 16),
    (36, 1280, 20),
    (48, 1600, 25),
]


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
    params = count_parameters(recipe, out)
    T = recipe.model.context_length
    cfg = recipe.train or TrainConfig()
    per_epoch = planned_steps(dataclasses.replace(cfg, max_steps=None, epochs=1.0), len(blocks["train"]), processes)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * T * processes
    time_budget = parse_duration(cfg.max_time, "train.max_time")
    if time_budget is not None and budget_hours is None and budget_flops is None:
        budget_hours = time_budget / 3600  # the recipe's own budget: the report plans what training will do
    throughput = None
    if budget_hours is not None or time_budget is not None:
        throughput = (
            (flops_per_second, "assumed (--flops-per-second)")
            if flops_per_second is not None
            else measure_throughput(recipe, out, {"parameters": params, "context_length": T}, console)
        )
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
    }
    if budget_flops is not None or budget_hours is not None:
        report["budget"] = suggest(recipe, report, budget_flops, budget_hours, throughput)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_report(console, report, None if tmp else out)
    return report


def count_parameters(recipe: Any, out: Path) -> int:
    """Parameters of the recipe's model, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    with torch.device("meta"):
        if recipe.model.from_pretrained:
            config = AutoConfig.from_pretrained(recipe.model.from_pretrained)
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = build_model(recipe.model, tok, seed=0)
    return sum(p.numel() for p in model.parameters())


def suggest(
    recipe: Any,
    report: dict[str, Any],
    budget_flops: float | None,
    budget_hours: float | None,
    throughput: tuple[float, str] | None,
) -> dict[str, Any]:
    """The compute-optimal size for a budget (C = 6 N D, D = 20 N), and a GPT-2 shape near it.
    `throughput`: (training FLOP/s, where that figure came from), needed with `budget_hours`."""
    flops_per_second, throughput_source = throughput or (None, None)
    if budget_hours is not None:
        assert flops_per_second is not None
        budget_flops = budget_hours * 3600 * flops_per_second
    assert budget_flops is not None
    if budget_flops <= 0:
        raise ConfigError("The compute budget must be positive.")
    n_opt = math.sqrt(budget_flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    d_opt = CHINCHILLA_TOKENS_PER_PARAM * n_opt
    vocab = report.get("vocab_size") or recipe.tokenizer.vocab_size
    shape = min(SHAPES, key=lambda s: abs(math.log(gpt2_parameters(*s[:2], vocab, report["context_length"]) / n_opt)))
    return {
        "flops": budget_flops,
        "hours": budget_hours,
        "flops_per_second": flops_per_second,
        "throughput_source": throughput_source,
        "parameters": n_opt,
        "tokens": d_opt,
        "epochs_of_this_data": d_opt / max(report["train_tokens"], 1),
        "shape": {"n_layer": shape[0], "n_embd": shape[1], "n_head": shape[2]},
        "shape_parameters": gpt2_parameters(shape[0], shape[1], vocab, report["context_length"]),
    }


def gpt2_parameters(n_layer: int, n_embd: int, vocab: int, context_length: int) -> int:
    """GPT-2's parameter count with tied embeddings: 12 L d^2 (+ biases, norms) + (V + T) d."""
    per_block = 12 * n_embd * n_embd + 13 * n_embd
    return n_layer * per_block + (vocab + context_length) * n_embd + 2 * n_embd


def measure_throughput(recipe: Any, out: Path, report: dict[str, Any], console: Console) -> tuple[float, str]:
    """Training FLOP/s (6 N per token) of the recipe's model on this machine: from this run dir's own
    training log if it has one, else timed over a few optimizer steps of one micro-batch now."""
    speeds = [
        r["tokens_per_second"] for r in read_metrics(out) if r.get("stage") == "train" and r.get("tokens_per_second")
    ]
    if speeds:
        tps = sorted(speeds)[len(speeds) // 2]
        return 6 * report["parameters"] * tps, f"measured: median of {len(speeds)} logged training intervals in {out}"
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = build_model(recipe.model, tok, seed=0).to(device)
    model.train()
    batch = recipe.train.batch_size if recipe.train else 8
    if not cuda:
        batch = min(batch, 4)  # a CPU measurement of a big model must not take minutes
    T = report["context_length"]
    ids = torch.randint(0, len(tok), (batch, T), device=device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    asked = recipe.train.precision if recipe.train else "auto"
    bf16 = choose_precision(asked, model, T).precision == "bf16"  # what the train stage will choose
    console.print(f"  timing the model: 1 warm-up + 3 steps of {batch} x {T} tokens on this machine ...")
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    tps = batch * T / (sum(times) / len(times))
    where = (
        f"{torch.cuda.get_device_name()}, {'bf16' if bf16 else 'fp32'}"
        if cuda
        else f"CPU, {torch.get_num_threads()} threads, {'bf16' if bf16 else 'fp32'}"
    )
    return 6 * report["parameters"] * tps, f"measured now: 3 steps of {batch} x {T} tokens ({where})"


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
            f"  compute-optimal (C = 6ND, D = 20N): {_n(b['parameters'])} parameters on {_n(b['tokens'])} tokens "
            f"({b['epochs_of_this_data']:.2f} epochs of this data"
            + (
                "; more than ~4 epochs repeats too much: get more data or take a smaller model"
                if b["epochs_of_this_data"] > 4
                else ""
            )
            + ")\n  nearest GPT-2 shape: model: "
            f"{{n_layer: {s['n_layer']}, n_embd: {s['n_embd']}, n_head: {s['n_head']}}}"
            f" ({_n(b['shape_parameters'])} parameters)"
        )
    if kept:
        console.print(
            f"prepared data, tokenizer and blocks are in {kept}: `llmforge run RECIPE --out {kept}` reuses them"
        )
    console.print(f"({r['seconds']:.1f}s)")
