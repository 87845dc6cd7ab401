"""Pictures: loss.png after each training stage, data/lengths.png, `llmforge plot` and `llmforge compare`."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, tiny_recipe_dict
from llmforge import Recipe
from llmforge.cli import main
from llmforge.tools import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG (magic bytes, then the IHDR chunk)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def labels(fig) -> dict[str, set[str]]:
    """Every x/y label and title of a Figure's axes, secondary axes included."""
    found: dict[str, set[str]] = {"x": set(), "y": set(), "title": set()}
    for ax in fig.get_axes():
        found["x"].add(ax.get_xlabel())
        found["y"].add(ax.get_ylabel())
        found["title"].add(ax.get_title())
        for child in ax.get_children():  # secondary_xaxis objects are children of their parent axes
            if hasattr(child, "get_xlabel") and child is not ax:
                found["x"].add(child.get_xlabel())
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny pretraining run with two saved checkpoints, then a two-step fine-tune."""
    tmp = tmp_path_factory.mktemp("plots")
    corpus = tmp / "corpus" / "book.txt"
    corpus.parent.mkdir()
    corpus.write_text((REPO / "examples/data/corpus/pride_and_prejudice.txt").read_text()[:60_000])
    recipe = tiny_recipe_dict(corpus)
    recipe["model"]["context_length"] = 64
    recipe["finetune"] = {
        "source": "jsonl",
        "path": str(REPO / "examples/data/instruct/alpaca.jsonl"),
        "format": "alpaca",
        "max_steps": 2,
        "batch_size": 4,
        "log_every": 1,
        "eval_every": 2,
        "max_examples": 40,
    }
    out = tmp / "run"
    Recipe.from_dict(recipe).run(out)
    return out


def test_loss_png_written_after_training_with_both_stages(finished_run):
    path = finished_run / "loss.png"
    width, height = png_size(path)
    assert width >= 1000 and height >= 500  # two stage columns, 6.4 inches each at 100 dpi
    fig = plots.loss_figure(plots.read_metrics(finished_run))
    found = labels(fig)
    assert {"loss", "learning rate"} <= found["y"]
    assert {"step", "tokens"} <= found["x"]
    assert {"train", "finetune"} <= found["title"]
    legend = {t.get_text() for ax in fig.get_axes() if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {"train loss", "validation loss"} <= legend
    train_ax = next(ax for ax in fig.get_axes() if ax.get_title() == "train")
    steps = [int(x) for x in train_ax.get_lines()[0].get_xdata()]
    assert steps == [1, 2, 3, 4, 5, 6]  # every logged step of metrics.jsonl


def test_lengths_png_from_real_token_counts(finished_run):
    width, height = png_size(finished_run / "data" / "lengths.png")
    assert width >= 1000 and height >= 400
    lengths, total = plots.document_lengths(finished_run)
    stats = plots.length_stats(lengths, 64)
    assert total == len(lengths) == stats["documents"]
    # the packed blocks hold exactly the tokens counted here (documents + one EOS each)
    import json

    blocks = json.loads((finished_run / "data" / "stats.json").read_text())["blocks"]["train"]
    assert stats["tokens"] == blocks["tokens"]
    fig = plots.lengths_figure(lengths, 64)
    found = labels(fig)
    assert "document length (tokens)" in found["x"] and "documents" in found["y"]
    hist = fig.get_axes()[0]
    assert any(line.get_label() == "context_length = 64" for line in hist.get_lines())


def test_length_stats_by_hand():
    s = plots.length_stats(np.array([3, 7, 20]), 8)  # with EOS: 4, 8, 21 tokens = 33
    assert s["tokens"] == 33
    assert s["packing_kept"] == pytest.approx(32 / 33)  # one partial block of 1 token dropped
    assert s["padding_real_share"] == pytest.approx(33 / 40)  # 1 + 1 + 3 rows of 8
    assert s["truncation_kept"] == pytest.approx(20 / 33)  # 4 + 8 + 8 kept
    assert s["truncation_real_share"] == pytest.approx(20 / 24)
    assert s["longer_than_context"] == pytest.approx(1 / 3)


def test_plot_command_redraws(finished_run, capsys):
    (finished_run / "loss.png").unlink()
    (finished_run / "data" / "lengths.png").unlink()
    assert main(["plot", str(finished_run)]) == 0
    assert png_size(finished_run / "loss.png")[0] > 0 and png_size(finished_run / "data" / "lengths.png")[0] > 0
    assert "wrote" in capsys.readouterr().out


def test_plot_command_on_a_non_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "not an llmforge run directory" in capsys.readouterr().err


def test_compare_prints_every_checkpoint(finished_run, capsys):
    assert main(["compare", str(finished_run), "--prompt", "It is a truth", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("train/checkpoint-3", "train/checkpoint-6", "train/final", "finetune/final"):
        assert name in out
    assert "It is a truth" in out


def test_compare_losses_are_the_logged_ones(finished_run):
    from llmforge.tools.compare import compare

    snaps = compare(finished_run, ["Mr."], max_new_tokens=3)
    logged = {r["step"]: r["eval_loss"] for r in plots.read_metrics(finished_run) if r["stage"] == "train"
              and "eval_loss" in r}  # fmt: skip
    ckpt = {s.step: s.val_loss for s in snaps if s.name.startswith("train/checkpoint")}
    assert ckpt == {3: pytest.approx(logged[3]), 6: pytest.approx(logged[6])}
    assert all(len(s.samples) == 1 and s.samples[0].startswith("Mr.") for s in snaps if s.stage == "train")


def test_compare_chat_answers_with_tuned_models_and_continues_with_base_ones(finished_run):
    from llmforge.tools.compare import compare

    snaps = compare(finished_run, ["What is the capital of France?"], chat=True, max_new_tokens=4)
    base = [s for s in snaps if s.stage == "train"]
    tuned = [s for s in snaps if s.stage == "finetune"]
    assert base and tuned
    assert all(s.samples[0].startswith("What is the capital of France?") for s in base)
    assert all(not s.samples[0].startswith("What is the capital of France?") for s in tuned)
