"""optimizer: muon: Muon on the hidden matrices, AdamW on the rest, scheduled and checkpointed as one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from rich.console import Console

from conftest import tiny_gpt2, tiny_recipe_dict
from llmforge import Recipe
from llmforge.training.optimizers import Muon, MuonWithAdamW, orthogonalize, split_parameters


def test_muon_takes_the_hidden_matrices_and_adamw_the_embeddings_head_biases_and_norms():
    model = tiny_gpt2()
    hidden, decay, no_decay = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)].split(".", 3)[-1] for p in hidden) == sorted(
        ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"] * 2
    )
    assert {names[id(p)] for p in decay} == {"transformer.wte.weight", "transformer.wpe.weight"}  # head tied to wte
    assert all(p.ndim == 1 for p in no_decay)
    assert len(hidden) + len(decay) + len(no_decay) == len(list(model.parameters()))


def _muon_steps(make_optimizer, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(shape)) for shape in [(24, 40), (40, 24), (16, 16)]]
    opt = make_optimizer(weights)
    for step in range(steps):
        torch.manual_seed(100 + step)
        for w in weights:
            w.grad = torch.randn_like(w)
        opt.step()
    return [w.detach().clone() for w in weights]


def test_muon_with_bf16_newton_schulz_is_torchs_muon_exactly_and_fp32_differs_only_by_rounding():
    torchs = _muon_steps(lambda ws: torch.optim.Muon(ws, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"))
    bf16 = _muon_steps(lambda ws: Muon(ws, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16))
    fp32 = _muon_steps(lambda ws: Muon(ws, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32))
    start = _muon_steps(lambda ws: Muon(ws, lr=0.0, weight_decay=0.0), steps=0)
    for theirs, ours, precise, first in zip(torchs, bf16, fp32, start, strict=True):
        assert torch.equal(theirs, ours)
        moved = (theirs - first).norm()
        assert moved > 0.1
        assert (precise - theirs).norm() < 0.05 * moved  # bf16 rounding, not another rule
    state = torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))]).state_dict()
    assert Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.1, weight_decay=0.0).state_dict().keys() == state.keys()


def test_orthogonalize_brings_every_singular_value_near_one_for_wide_and_tall_matrices():
    torch.manual_seed(0)
    for shape in [(32, 96), (96, 32)]:
        matrix = torch.randn(shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))
        singular = torch.linalg.svdvals(orthogonalize(matrix, torch.float32))
        assert orthogonalize(matrix, torch.float32).shape == shape
        assert singular.min() > 0.5 and singular.max() < 1.3


def test_muon_refuses_a_vector_by_its_shape():
    bias = torch.nn.Parameter(torch.zeros(8))
    bias.grad = torch.ones(8)
    with pytest.raises(ValueError, match=r"weight matrices only; got a parameter of shape \(8,\)"):
        Muon([bias], lr=0.1, weight_decay=0.0).step()


def test_a_schedule_scales_both_halves_and_a_step_moves_every_weight():
    model = tiny_gpt2()
    opt = MuonWithAdamW(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert {g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups} == {5e-3}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 50, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    state = opt.state_dict()
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]  # Muon's momentum is kept
    resumed = MuonWithAdamW(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    resumed.load_state_dict(state)
    for group in resumed.param_groups:  # what a resumed schedule does: it must reach both optimizers
        group["lr"] = 1e-5
    assert {g["lr"] for g in resumed.muon.param_groups + resumed.adamw.param_groups} == {1e-5}
    assert resumed.muon.state_dict()["state"].keys() == state["muon"]["state"].keys()
    with pytest.raises(ValueError, match="saved with another train.optimizer"):
        opt.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_the_schedule_still_reaches_both_halves_once_accelerate_has_wrapped_the_optimizer():
    """Trainer hands the optimizer to accelerate, which reloads its state (new group dicts): before the
    fix the schedule set stale dicts and Muon trained at the peak rate throughout."""
    from accelerate import Accelerator

    opt = MuonWithAdamW(tiny_gpt2(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    Accelerator(cpu=True).prepare(opt)
    sched.step()
    sched.step()
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == pytest.approx([2.5e-3] * 3)


def test_training_with_muon_learns_and_resumes_from_its_checkpoint(tmp_path, corpus_file):
    run = tmp_path / "run"
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus_file, optimizer="muon", max_steps=12, eval_every=None, lr=1e-2))
    recipe.run(run, console=Console(quiet=True))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stage"] == "train" and "loss" in r]
    assert losses[-1] < losses[0] - 0.5
    saved = torch.load(run / "train" / "checkpoints" / "checkpoint-12" / "optimizer.pt", weights_only=False)
    assert set(saved) == {"muon", "adamw"}

    shutil.rmtree(run / "train" / "final")  # killed after the last checkpoint: the resume loads both states
    shutil.rmtree(run / "train" / "checkpoints" / "checkpoint-12")
    console = Console(record=True, width=200)
    recipe.run(run, console=console)
    assert "resuming from checkpoint-9 (step 9)" in console.export_text()

    recipe.train.optimizer = "adamw"  # another optimizer's state cannot be loaded: trains afresh
    console = Console(record=True, width=200)
    recipe.run(run, console=console)
    assert "the model, tokenizer, data or optimizer changed since train's checkpoint-12: training afresh" in (
        console.export_text()
    )
