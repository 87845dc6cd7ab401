"""The train stage's promises: NaN and divergence stop cleanly, OOM retries, accumulation is exact."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.errors import ConfigError, TrainingError
from llmforge.training.arguments import peak_lr, planned_steps, precision_flags

NAN_PLUGIN = """
    from llmforge import hookimpl

    BAD_CALLS = {bad}
    calls = []

    @hookimpl
    def prepare_model(model, stage, config):
        def poison(module, args, output):
            if module.training:
                calls.append(1)
                if len(calls) in BAD_CALLS:
                    output.last_hidden_state.mul_(float("nan"))
        model.base_model.register_forward_hook(poison)
"""

OOM_PLUGIN = """
    import torch
    from llmforge import hookimpl

    @hookimpl
    def prepare_model(model, stage, config):
        def refuse_big_batches(module, args, kwargs):
            ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
            if module.training and ids.shape[0] > 2:
                raise torch.OutOfMemoryError("simulated: CPU ran out of memory")
        model.base_model.register_forward_pre_hook(refuse_big_batches, with_kwargs=True)
"""


def _plugin(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _recipe(corpus_file, plugins=(), **train) -> Recipe:
    mapping = tiny_recipe_dict(corpus_file, **train)
    mapping["plugins"] = list(plugins)
    return Recipe.from_dict(mapping)


def test_nan_loss_stops_before_the_weights_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, corpus_file):
    name = _plugin(tmp_path, monkeypatch, "nan_at_5", NAN_PLUGIN.format(bad="{5}"))
    recipe = _recipe(corpus_file, [name], max_steps=8, save_every=2, eval_every=None)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became nan at step 5.*Lower the learning rate"):
        recipe.run(out)
    ckpts = sorted(p.name for p in (out / "train" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4"]
    weights = load_file(out / "train" / "checkpoints" / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "train" / "final").exists()


def test_skip_batch_trains_on_and_counts_skipped_batches(tmp_path, monkeypatch, corpus_file):
    name = _plugin(tmp_path, monkeypatch, "nan_at_3_and_4", NAN_PLUGIN.format(bad="{3, 4}"))
    recipe = _recipe(corpus_file, [name], max_steps=6, on_nan="skip_batch", max_skipped_batches=2)
    recipe.run(tmp_path / "run")
    final = json.loads((tmp_path / "run" / "train" / "final" / ".llmforge.json").read_text())["info"]
    assert final["skipped_batches"] == 2 and final["steps"] == 6
    weights = load_file(tmp_path / "run" / "train" / "final" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_skip_batch_gives_up_after_the_allowed_number(tmp_path, monkeypatch, corpus_file):
    name = _plugin(tmp_path, monkeypatch, "nan_often", NAN_PLUGIN.format(bad="{2, 3, 4}"))
    recipe = _recipe(corpus_file, [name], max_steps=6, on_nan="skip_batch", max_skipped_batches=2)
    with pytest.raises(TrainingError, match="2 batches were already skipped"):
        recipe.run(tmp_path / "run")


def test_divergence_stops_the_run(tmp_path, corpus_file):
    recipe = _recipe(corpus_file, max_steps=30, lr=5.0, divergence_factor=1.02, warmup=0, eval_every=None)
    with pytest.raises(TrainingError, match="diverged"):
        recipe.run(tmp_path / "run")


def test_out_of_memory_is_explained(tmp_path, monkeypatch, corpus_file):
    name = _plugin(tmp_path, monkeypatch, "oom_plugin", OOM_PLUGIN)
    recipe = _recipe(corpus_file, [name], batch_size=8, max_steps=2)
    with pytest.raises(TrainingError, match=r"Out of memory with train.batch_size 8.*grad_accum.*context_length"):
        recipe.run(tmp_path / "run")


def test_auto_batch_size_halves_the_batch_and_keeps_the_effective_batch(tmp_path, monkeypatch, corpus_file, capsys):
    name = _plugin(tmp_path, monkeypatch, "oom_plugin2", OOM_PLUGIN)
    recipe = _recipe(corpus_file, [name], batch_size=8, max_steps=3, auto_batch_size=True)
    recipe.run(tmp_path / "run")
    printed = capsys.readouterr().out
    assert "batch_size 4 x grad_accum 2" in printed and "batch_size 2 x grad_accum 4" in printed
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(r["tokens"] == r["step"] * 8 * 32 for r in rows if "loss" in r)  # 8 blocks of 32 per step


def test_gradient_accumulation_matches_one_big_batch(tmp_path, corpus_file):
    """PITFALLS: batch 8 x accum 1 and batch 2 x accum 4 must give the same gradient and update."""
    weights, logs = [], []
    for i, (batch, accum) in enumerate([(8, 1), (2, 4)]):
        recipe = _recipe(
            corpus_file, batch_size=batch, grad_accum=accum, max_steps=2, eval_every=None, save_every=None, warmup=0
        )
        recipe.run(tmp_path / f"run{i}")
        weights.append(load_file(tmp_path / f"run{i}" / "train" / "final" / "model.safetensors"))
        rows = [json.loads(r) for r in (tmp_path / f"run{i}" / "metrics.jsonl").read_text().splitlines()]
        logs.append([r for r in rows if "loss" in r])
    for a, b in zip(*logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    for key in weights[0]:  # Adam's first steps amplify float summation order a little
        assert torch.allclose(weights[0][key], weights[1][key], atol=2e-5), key


def test_early_stopping_stops_when_validation_loss_stalls(tmp_path, corpus_file):
    recipe = _recipe(
        corpus_file, max_steps=20, eval_every=2, save_every=2, early_stopping=2, lr=1e-30, schedule="constant"
    )
    recipe.run(tmp_path / "run")
    final = json.loads((tmp_path / "run" / "train" / "final" / ".llmforge.json").read_text())["info"]
    assert final["steps"] == 6  # best at 2, no improvement at 4 and 6


def test_changed_effective_batch_on_resume_is_logged(tmp_path, corpus_file, capsys):
    recipe = _recipe(corpus_file, max_steps=6, save_every=3)
    recipe.run(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "train" / "final")  # as if stopped after checkpoint-3
    shutil.rmtree(tmp_path / "run" / "train" / "checkpoints" / "checkpoint-6")
    recipe.train.grad_accum = 2
    recipe.run(tmp_path / "run")
    out = capsys.readouterr().out
    assert "with changed settings: grad_accum 1 -> 2" in out
    assert "effective batch changed since checkpoint-3: 128 -> 256 tokens" in out


def test_fp16_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        precision_flags("fp16")
    assert precision_flags("fp32") == {"bf16": False, "fp16": False}


def test_planned_steps_from_epochs():
    from llmforge.config.schema import TrainConfig

    assert planned_steps(TrainConfig(epochs=2, batch_size=4, grad_accum=2), n_blocks=33, world=1) == 10
    assert planned_steps(TrainConfig(max_steps=7), n_blocks=10**6, world=1) == 7


def test_an_unset_lr_is_the_rate_measured_at_256_wide_falling_as_one_over_width(tmp_path, corpus_file, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmforge.config.schema import TrainConfig

    def lr_for(width: int, lr: float | None = None) -> float:
        model = GPT2LMHeadModel(GPT2Config(n_embd=width, n_layer=1, n_head=2, vocab_size=64, n_positions=8))
        return peak_lr(TrainConfig(lr=lr), model)

    assert lr_for(128) == lr_for(256) == pytest.approx(2e-3)
    assert lr_for(768) == pytest.approx(2e-3 / 3)  # GPT-2 124M's width: near its usual 6e-4
    assert lr_for(768, lr=1e-4) == 1e-4  # a recipe's own lr wins
    _recipe(corpus_file, lr=None, max_steps=2, eval_every=None, save_every=None).run(tmp_path / "run")
    assert "peak learning rate 0.002 (train.lr unset: set by width)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("learning_rate", 0) for r in rows) <= 2e-3


def test_early_stopping_needs_eval_every(tmp_path, corpus_file):
    recipe = _recipe(corpus_file, early_stopping=2, eval_every=None)
    with pytest.raises(ConfigError, match="early_stopping needs train.eval_every"):
        recipe.run(tmp_path / "run")


def test_fused_loss_trains_like_the_models_own_loss(tmp_path, corpus_file):
    logs = []
    for fused in (True, False):
        recipe = _recipe(corpus_file, max_steps=4, eval_every=None, save_every=None, fused_loss=fused)
        recipe.run(tmp_path / f"run-{fused}")
        rows = [json.loads(r) for r in (tmp_path / f"run-{fused}" / "metrics.jsonl").read_text().splitlines()]
        logs.append([(r["loss"], r["grad_norm"]) for r in rows if "loss" in r])
    for (loss_a, norm_a), (loss_b, norm_b) in zip(*logs, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
        assert norm_a == pytest.approx(norm_b, rel=1e-4)


SCRAMBLE_PLUGIN = """
    import torch
    from llmforge import hookimpl

    models = []

    @hookimpl
    def prepare_model(model, stage, config):
        models.append(model)

    @hookimpl
    def on_log(stage, metrics):
        if metrics.get("step") == 8 and "eval_loss" in metrics:  # after step 8's evaluation: a worse model
            with torch.no_grad():
                for p in models[-1].parameters():
                    p.add_(torch.randn_like(p) * 2.0)
"""


def test_the_final_model_is_the_best_evaluated_checkpoint(tmp_path, monkeypatch, corpus_file, capsys):
    name = _plugin(tmp_path, monkeypatch, "scramble_after_8", SCRAMBLE_PLUGIN)
    recipe = _recipe(
        corpus_file,
        [name],
        max_steps=12,
        eval_every=2,
        save_every=None,
        lr=1e-2,
        schedule="constant",
        divergence_factor=None,
        warmup=0,
    )
    recipe.run(tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    best = min(losses, key=losses.get)
    assert best != 12  # the weights were scrambled after step 8: validation loss rises at the end
    final = tmp_path / "run" / "train" / "final"
    info = json.loads((final / ".llmforge.json").read_text())["info"]
    assert info["best_step"] == best and info["val_loss"] == pytest.approx(losses[best])
    kept = load_file(tmp_path / "run" / "train" / "checkpoints" / f"checkpoint-{best}" / "model.safetensors")
    assert all(torch.equal(kept[k], v) for k, v in load_file(final / "model.safetensors").items())
    out = capsys.readouterr().out
    assert f"final model: step {best} of 12, the lowest validation loss" in out
    assert f"(best of 12 steps: step {best})" in out  # the summary table says it too
    recipe.train.final_model = "last"
    recipe.run(tmp_path / "last")
    info = json.loads((tmp_path / "last" / "train" / "final" / ".llmforge.json").read_text())["info"]
    assert info["best_step"] is None and info["val_loss"] == pytest.approx(losses[12])
