"""Pictures of a run: loss.png (loss and learning rate of each training stage) and data/lengths.png.

Both are drawn from what the run directory already holds (metrics.jsonl, data/documents, tokenizer/),
so `llmforge plot RUN` redraws them at any time, during or after training. Each `*_figure` function
returns the matplotlib `Figure` (no pyplot state, safe in any process); `write_*` saves it as a PNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from llmforge import rundir
from llmforge.data import arrowio
from llmforge.errors import RunDirError

TRAINING_STAGES = ("train", "finetune")
MAX_LENGTH_SAMPLE = 200_000  # documents tokenized for lengths.png; above this a seeded sample is drawn
SAMPLE_RUN = 1_000  # the sample is drawn in runs of this many consecutive documents


# --- loss.png -----------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl` (a line cut by a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def loss_figure(rows: list[dict[str, Any]]) -> Figure:
    """One column per training stage: train and validation loss against steps (tokens on the top axis),
    and the learning rate below."""
    stages = [s for s in TRAINING_STAGES if any(r.get("stage") == s for r in rows)]
    stages += sorted({r.get("stage") for r in rows if r.get("stage") not in TRAINING_STAGES and r.get("stage")})
    if not stages:
        raise RunDirError("metrics.jsonl holds no logged step yet: nothing to plot.")
    fig = Figure(figsize=(6.4 * len(stages), 6.4), layout="constrained")
    axes = fig.subplots(2, len(stages), sharex="col", squeeze=False, height_ratios=[3, 1])
    for col, stage in enumerate(stages):
        mine = [r for r in rows if r.get("stage") == stage]
        train = [(r["step"], r["loss"]) for r in mine if _finite(r.get("loss"))]
        val = [(r["step"], r["eval_loss"]) for r in mine if _finite(r.get("eval_loss"))]
        lr = [(r["step"], r["learning_rate"]) for r in mine if _finite(r.get("learning_rate"))]
        ax, ax_lr = axes[0][col], axes[1][col]
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange")
        ax.set_title(f"{stage}")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if train or val:
            ax.legend(loc="upper right")
        per_step = _tokens_per_step(mine)
        if per_step:
            top = ax.secondary_xaxis("top", functions=(lambda s, k=per_step: s * k, lambda t, k=per_step: t / k))
            top.set_xlabel("tokens")
        if lr:
            ax_lr.plot(*zip(*lr, strict=True), color="tab:green")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.grid(alpha=0.3)
    return fig


def write_loss_plot(run_dir: str | Path) -> Path:
    """Draw `RUN/loss.png` from `RUN/metrics.jsonl`."""
    run_dir = Path(run_dir)
    path = run_dir / "loss.png"
    _save(loss_figure(read_metrics(run_dir)), path)
    return path


def _tokens_per_step(rows: list[dict[str, Any]]) -> float | None:
    ratios = [r["tokens"] / r["step"] for r in rows if r.get("step") and r.get("tokens")]
    return ratios[-1] if ratios else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# --- lengths.png --------------------------------------------------------------------------------


def document_lengths(run_dir: str | Path, split: str = "train") -> tuple[np.ndarray, int]:
    """Token counts of the documents of `split` (without EOS) with the run's tokenizer, and how many
    documents there are in all (a seeded sample of MAX_LENGTH_SAMPLE is tokenized above that)."""
    import datasets
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    if not rundir.is_complete(run_dir / "data" / "documents") or not rundir.is_complete(run_dir / "tokenizer"):
        raise RunDirError(f"{run_dir} has no finished data and tokenizer stages: run them first.")
    docs = datasets.load_from_disk(str(run_dir / "data" / "documents"))[split]
    total = len(docs)
    starts = np.arange(0, total, SAMPLE_RUN)
    if total > MAX_LENGTH_SAMPLE:  # seeded runs of consecutive documents: bounded reads, no permutation of all
        starts = np.sort(np.random.default_rng(0).choice(total // SAMPLE_RUN, MAX_LENGTH_SAMPLE // SAMPLE_RUN, False))
        starts = starts * SAMPLE_RUN
    backend = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer")).backend_tokenizer
    lengths = []
    for start in starts:
        for texts in arrowio.column_batches(docs, "text", SAMPLE_RUN, int(start), int(start) + SAMPLE_RUN):
            lengths += [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    return np.asarray(lengths, dtype=np.int64), total


def length_stats(lengths: np.ndarray, context_length: int) -> dict[str, float]:
    """What packing keeps and what padding each document to `context_length` would waste.

    Each document is followed by EOS (as in training). Packing joins them and cuts full blocks: only the
    last partial block is lost. Padding puts each document in its own rows of `context_length`: a
    document longer than one row either is truncated (the seed tutorials' `truncation=True`) or
    continues into more padded rows."""
    T = context_length
    n = lengths + 1  # with EOS
    tokens = int(n.sum())
    rows_chunked = int(np.ceil(n / T).sum())
    truncated_kept = int(np.minimum(n, T).sum())
    return {
        "documents": int(len(n)),
        "tokens": tokens,
        "median_length": float(np.median(lengths)) if len(lengths) else 0.0,
        "longer_than_context": float((n > T).mean()) if len(n) else 0.0,
        "packing_kept": (tokens // T) * T / tokens if tokens else 0.0,
        "padding_real_share": tokens / (rows_chunked * T) if rows_chunked else 0.0,  # no truncation
        "truncation_kept": truncated_kept / tokens if tokens else 0.0,
        "truncation_real_share": truncated_kept / (len(n) * T) if len(n) else 0.0,
    }


def lengths_figure(lengths: np.ndarray, context_length: int, total_documents: int | None = None) -> Figure:
    """Histogram of document lengths in tokens with the context length marked, and the share of
    positions that hold real tokens with packing vs padding."""
    stats = length_stats(lengths, context_length)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax, ax_share = fig.subplots(1, 2, width_ratios=[3, 2])
    positive = lengths[lengths > 0]
    if len(positive):
        bins = np.logspace(0, math.log10(max(positive.max(), context_length) * 1.05), 50)
        ax.hist(positive, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
    ax.axvline(context_length, color="tab:red", linestyle="--", label=f"context_length = {context_length}")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("documents")
    sampled = (
        f", a sample of {len(lengths):,} of {total_documents:,}"
        if total_documents and total_documents > len(lengths)
        else ""
    )
    ax.set_title(
        f"{stats['documents']:,} documents{sampled}: median {stats['median_length']:.0f} tokens, "
        f"{stats['longer_than_context']:.0%} longer than the context"
    )
    ax.legend()
    labels = ["packing\n(llmforge)", "padding\n(each document\nin own rows)", "padding +\ntruncation"]
    kept = [stats["packing_kept"], 1.0, stats["truncation_kept"]]
    real = [1.0, stats["padding_real_share"], stats["truncation_real_share"]]  # packed rows hold no padding
    x = np.arange(len(labels))
    for offset, values, name, color in (
        (-0.2, kept, "tokens of the corpus trained on", "tab:green"),
        (0.2, real, "row positions holding real tokens", "tab:blue"),
    ):
        bars = ax_share.bar(x + offset, [100 * v for v in values], width=0.4, label=name, color=color)
        for bar, value in zip(bars, values, strict=True):
            ax_share.text(bar.get_x() + bar.get_width() / 2, 100 * value + 1, f"{value:.0%}", ha="center", va="bottom")
    ax_share.set_xticks(x, labels)
    ax_share.set_ylim(0, 135)
    ax_share.set_ylabel("% of tokens / % of positions")
    ax_share.set_title(f"rows of {context_length} tokens: what each way keeps")
    ax_share.legend(loc="upper center", ncols=1, fontsize="small")
    return fig


def write_lengths_plot(run_dir: str | Path, context_length: int | None = None) -> Path:
    """Draw `RUN/data/lengths.png` and `RUN/data/lengths.json` (the numbers in the picture)."""
    run_dir = Path(run_dir)
    if context_length is None:
        import yaml

        context_length = (yaml.safe_load((run_dir / "recipe.yaml").read_text()).get("model") or {}).get(
            "context_length"
        )
        if not context_length:
            raise RunDirError(f"{run_dir}/recipe.yaml names no model.context_length.")
    lengths, total = document_lengths(run_dir)
    path = run_dir / "data" / "lengths.png"
    _save(lengths_figure(lengths, context_length, total), path)
    rundir.write_json(
        path.with_suffix(".json"), {"context_length": context_length, **length_stats(lengths, context_length)}
    )
    return path


# --- shared -------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    """Write a PNG atomically (a reader never sees half a picture)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.png"
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def write_plots(run_dir: str | Path) -> list[Path]:
    """Every picture the run dir has the material for (`llmforge plot RUN`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise RunDirError(f"'{run_dir}' is not an llmforge run directory (no recipe.yaml).")
    written = []
    if rundir.is_complete(run_dir / "data" / "documents") and rundir.is_complete(run_dir / "tokenizer"):
        written.append(write_lengths_plot(run_dir))
    if read_metrics(run_dir):
        written.append(write_loss_plot(run_dir))
    if not written:
        raise RunDirError(
            f"{run_dir} has neither finished data and tokenizer stages nor logged steps: nothing to plot."
        )
    return written
