"""precision: auto is measured: the faster candidate on the real shape, cached per machine and shape."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmforge.errors import TrainingError
from llmforge.training import precision


def tiny(width: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=width, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config)


@pytest.fixture
def both_candidates(monkeypatch):
    monkeypatch.setattr(precision, "candidates", lambda: ["fp32", "bf16"])


def test_auto_picks_the_faster_candidate_on_each_of_two_shapes(tmp_path, both_candidates):
    # bf16 is the faster one at 64 wide and fp32 at 32 wide on this imagined machine
    table = {(64, "fp32"): 0.30, (64, "bf16"): 0.17, (32, "fp32"): 0.05, (32, "bf16"): 0.09}
    timed = []

    def measure(model, option, rows, length):
        timed.append((model.config.n_embd, option, rows, length))
        return table[(model.config.n_embd, option)]

    cache = tmp_path / "precision.json"
    wide = precision.choose("auto", tiny(64), 16, cache, measure)
    narrow = precision.choose("auto", tiny(32), 16, cache, measure)
    assert (wide.precision, narrow.precision) == ("bf16", "fp32")
    assert wide.seconds == {"fp32": 0.30, "bf16": 0.17} and not wide.cached
    assert {rows for _, _, rows, _ in timed} == {precision.PROBE_TOKENS // 16}
    assert wide.describe() == "precision auto: bf16 (fp32 300 ms, bf16 170 ms a step on this shape)"
    assert len(json.loads(cache.read_text())) == 2  # one entry per shape

    again = precision.choose("auto", tiny(64), 16, cache, lambda *a: pytest.fail("measured twice"))
    assert again.precision == "bf16" and again.cached
    assert again.describe().endswith("measured earlier)")
    longer = precision.choose("auto", tiny(64), 32, cache, measure)  # another row length is another shape
    assert not longer.cached and len(timed) == 6
    # never more rows than a training step has: the probe must not set the run's peak memory
    small = precision.choose("auto", tiny(64), 16, cache, measure, batch=3)
    assert not small.cached and timed[-1][2] == 3


def test_a_real_probe_keeps_the_faster_of_its_own_measurements_and_leaves_the_model_as_it_was(
    tmp_path, both_candidates
):
    for width in (32, 64):
        model = tiny(width).eval()
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(7)
        expected_draw = torch.rand(3)
        torch.manual_seed(7)
        choice = precision.choose("auto", model, 16, tmp_path / "precision.json")
        assert set(choice.seconds) == {"fp32", "bf16"} and all(s > 0 for s in choice.seconds.values())
        assert choice.precision == min(choice.seconds, key=choice.seconds.get)
        assert torch.equal(torch.rand(3), expected_draw)  # the random state a run seeded is untouched
        assert not model.training and all(p.grad is None for p in model.parameters())
        assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_one_candidate_is_chosen_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "candidates", lambda: ["fp32"])
    choice = precision.choose("auto", tiny(32), 16, tmp_path / "p.json", lambda *a: pytest.fail("measured"))
    assert choice.precision == "fp32" and choice.describe() is None
    assert not (tmp_path / "p.json").exists()


def test_a_damaged_cache_is_measured_again(tmp_path, both_candidates):
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    choice = precision.choose("auto", tiny(32), 16, cache, lambda m, option, r, n: {"fp32": 2.0, "bf16": 1.0}[option])
    assert choice.precision == "bf16" and not choice.cached
    assert list(json.loads(cache.read_text()).values()) == [{"fp32": 2.0, "bf16": 1.0}]


def test_an_explicit_precision_is_checked_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.choose("fp32", tiny(32), 16, tmp_path / "p.json").precision == "fp32"
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        precision.choose("fp16", tiny(32), 16, tmp_path / "p.json")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.raises(TrainingError, match="no bf16 support"):
        precision.choose("bf16", tiny(32), 16, tmp_path / "p.json")


def test_the_cache_lives_in_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMFORGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert precision.cache_file() == tmp_path / "llmforge" / "precision.json"
    monkeypatch.setenv("LLMFORGE_CACHE_DIR", str(tmp_path / "mine"))
    assert precision.cache_file() == tmp_path / "mine" / "precision.json"


def test_frozen_weights_kept_in_bf16_give_the_same_products_in_half_the_memory():
    import peft
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_positions=32, n_embd=64, n_layer=2, n_head=2))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear", fan_in_fan_out=True))
    torch.nn.init.normal_(model.base_model.model.transformer.h[0].attn.c_attn.lora_B["default"].weight)
    ids = torch.randint(0, 96, (2, 16))
    model.eval()  # no dropout: the same forward twice
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    assert precision.frozen_weights_in(model, "fp32") == 0
    freed = precision.frozen_weights_in(model, "bf16")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)  # autocast rounded those weights to bf16 anyway
    frozen_linear = 2 * (64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256 + 256 * 64 + 64)
    assert freed == frozen_linear * 2
    assert base.lm_head.weight is base.transformer.wte.weight and base.lm_head.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
