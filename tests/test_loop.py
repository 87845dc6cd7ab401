"""The one training loop's promises that both stages share: the plan line says what a step is."""

from __future__ import annotations

from rich.console import Console

from chat_helpers import INSTRUCT
from conftest import tiny_recipe_dict
from llmforge import Recipe


def test_the_plan_line_gives_tokens_per_step_and_epochs(tmp_path, corpus_file):
    mapping = tiny_recipe_dict(corpus_file, max_steps=4, eval_every=None, save_every=None)
    mapping["model"]["context_length"] = 128
    mapping["finetune"] = {
        "path": str(INSTRUCT / "alpaca.jsonl"), "max_examples": 40, "max_steps": 6, "batch_size": 8,
        "eval_every": None, "max_length": 128,
    }  # fmt: skip
    console = Console(record=True, width=200)
    Recipe.from_dict(mapping).run(tmp_path / "run", console=console)
    text = console.export_text()
    blocks = next(line for line in text.splitlines() if "steps of" in line and "x 128)" in line)
    assert blocks.strip().startswith("4 steps of 512 tokens (4 x 1 x 128): ") and "epochs over" in blocks
    examples = next(line for line in text.splitlines() if "steps of 8 x 1 examples" in line)
    # 36 training examples (40 less the 10% held out): 6 steps x 8 = 48 examples = 1.33 epochs
    assert "tokens per step: 1.33 epochs over 36 examples" in examples, examples
    assert "tokens each" not in text  # the old line called a step's tokens each example's


def test_evaluation_keeps_no_logits(tmp_path, corpus_file, monkeypatch):
    """Only eval_loss is used: the Trainer is told so, or it would keep every batch's logits (GBs at a 50k
    vocabulary: the 124M fine-tune peaked at 8 GB before)."""
    from llmforge.training.trainer import LlmforgeTrainer

    seen = []
    original = LlmforgeTrainer.prediction_step

    def recording(self, model, inputs, prediction_loss_only, ignore_keys=None):
        out = original(self, model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        seen.append((prediction_loss_only, out[1]))
        return out

    monkeypatch.setattr(LlmforgeTrainer, "prediction_step", recording)
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus_file, max_steps=2, eval_every=2))
    recipe.run(tmp_path / "run", console=Console(quiet=True))
    assert seen and all(loss_only and logits is None for loss_only, logits in seen)
