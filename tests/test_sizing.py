"""model.preset: auto and the size rule behind it (llmforge.training.sizing), shared with data-report."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.config.schema import ModelConfig, TrainConfig
from llmforge.errors import ConfigError
from llmforge.training import sizing


@pytest.fixture(scope="module")
def tok():
    vocab = {f"t{i}": i for i in range(1000)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), eos_token="t1", unk_token="t0"
    )


def auto(**keys) -> ModelConfig:
    from llmforge.models.families import apply_preset

    return apply_preset(ModelConfig(preset="auto", **keys), None)


def test_the_ratio_is_the_measured_one_for_small_budgets_and_chinchillas_for_large_ones():
    r = sizing.tokens_per_parameter
    assert r(1e10) == r(sizing.MEASURED_FLOPS) == sizing.TOKENS_PER_PARAMETER
    assert r(sizing.CHINCHILLA_FLOPS) == r(1e24) == 20
    budgets = [10**e for e in range(13, 20)]
    assert all(r(a) <= r(b) for a, b in zip(budgets, budgets[1:], strict=False))  # no jump back down
    mid = math.sqrt(sizing.MEASURED_FLOPS * sizing.CHINCHILLA_FLOPS)  # log-linear: the geometric mean between
    assert r(mid) == pytest.approx(math.sqrt(sizing.TOKENS_PER_PARAMETER * 20))


def test_optimal_parameters_solve_c_equals_6nd_at_the_budgets_ratio():
    for flops in (1e12, 1e15, 1e18, 1e21):
        n = sizing.optimal_parameters(flops=flops)
        d = sizing.tokens_per_parameter(flops) * n
        assert 6 * n * d == pytest.approx(flops)
    for tokens in (1e5, 1e8, 1e11):
        n = sizing.optimal_parameters(tokens=tokens)
        assert tokens / n == pytest.approx(sizing.tokens_per_parameter(6 * n * tokens), rel=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_parameter_count_is_the_built_models(arch, tok):
    from llmforge.models.build import build_model

    cfg = sizing.shaped(auto(arch=arch), (3, 192, 3))
    built = build_model(cfg, tok, seed=0)
    assert sizing.parameters(cfg, tok) == sum(p.numel() for p in built.parameters())


def test_nearest_is_the_ladder_rung_nearest_in_log(tok):
    cfg = auto()
    counts = {r: sizing.parameters(sizing.shaped(cfg, r), tok) for r in sizing.LADDER}
    for target in (1e4, 2e6, 7e6, 5e7, 1e9, 1e11):
        best = min(counts, key=lambda r: abs(math.log(counts[r] / target)))
        chosen = sizing.nearest(cfg, tok, target)
        assert (chosen.n_layer, chosen.n_embd, chosen.n_head) == best
        assert chosen.preset is None and chosen.arch == cfg.arch and chosen.context_length == cfg.context_length


def test_a_step_budget_is_sized_by_its_tokens(tok):
    train = TrainConfig(max_steps=2000, batch_size=16, grad_accum=2)
    cfg, info = sizing.for_budget(auto(context_length=512), tok, train, train_blocks=10**6, train_tokens=10**9)
    assert info["budget_tokens"] == 2000 * 16 * 2 * 512
    assert info["optimal_parameters"] == round(sizing.optimal_parameters(tokens=info["budget_tokens"]))
    assert cfg == sizing.nearest(auto(context_length=512), tok, info["optimal_parameters"])
    assert info["parameters"] == sizing.parameters(cfg, tok)
    epochs = sizing.for_budget(auto(), tok, TrainConfig(epochs=2.0, batch_size=8), 4000, 4000 * 256)[1]
    assert epochs["budget_tokens"] == 2 * 500 * 8 * 256  # 500 steps an epoch of 4,000 blocks in batches of 8
    assert epochs["epochs"] == 2.0


def test_a_time_budget_measures_until_the_choice_stays(tok):
    """A bigger model runs more FLOP/s (a CPU's small matmuls are slow): the rule re-measures on its pick."""
    measured = []

    def measure(cfg):
        measured.append(cfg.n_embd)
        return 1e9 * cfg.n_embd / 256, f"fake {cfg.n_embd}"

    train = TrainConfig(max_time="2h", batch_size=8)
    cfg, info = sizing.for_budget(auto(), tok, train, 1000, train_tokens=10**10, measure=measure)
    assert measured[0] == 256  # the first guess: 4 x 256
    assert measured[-1] == cfg.n_embd and len(measured) == len(set(measured))  # the last pick was measured, once each
    rate = 1e9 * cfg.n_embd / 256
    assert info["flops_per_second"] == rate and info["budget_flops"] == rate * 7200
    assert cfg == sizing.nearest(auto(), tok, sizing.optimal_parameters(flops=rate * 7200))  # a fixed point
    assert len(measured) > 1  # this fake speed moved the choice off the first guess
    line = sizing.describe(info)
    assert line.startswith(f"{cfg.n_layer} layers x {cfg.n_embd} wide") and f"7200 s x {rate:.3g} FLOP/s" in line
    assert f"(fake {cfg.n_embd})" in line


def test_a_choice_that_flips_between_two_rungs_keeps_the_measured_rungs_own_figures(tok):
    """Noise can send the choice back to a rung measured before: it stops there, with that rung's speed."""

    def rate_choosing(rung):  # a FLOP/s at which 2 h of training choose `rung`
        rates = [10 ** (e / 8) for e in range(40, 130)]
        return next(r for r in rates if sizing.for_flops(auto(), tok, r * 7200, 10**12)[0].n_embd == rung[1])

    to_384, to_256 = rate_choosing((6, 384, 6)), rate_choosing((4, 256, 4))
    rates = {256: to_384, 384: to_256}  # 4 x 256 measures fast and points up; 6 x 384 slow and points back
    train = TrainConfig(max_time="2h", batch_size=8)
    calls = []
    fake = lambda c: (calls.append(c.n_embd), (rates[c.n_embd], f"fake {c.n_embd}"))[1]  # noqa: E731
    cfg, info = sizing.for_budget(auto(), tok, train, 1000, train_tokens=10**12, measure=fake)
    assert calls == [256, 384] and cfg.n_embd == 384  # measured each once, and kept the last one measured
    assert info["flops_per_second"] == to_256 and info["measured"] == "fake 384"


def test_every_process_trains_so_the_budget_is_theirs_together(tok):
    train = TrainConfig(max_time="1h", batch_size=8)
    fake = lambda c: (1e11, "fake")  # noqa: E731
    one = sizing.for_budget(auto(), tok, train, 1000, 10**12, world=1, measure=fake)[1]
    eight = sizing.for_budget(auto(), tok, train, 1000, 10**12, world=8, measure=fake)[1]
    assert eight["budget_flops"] == 8 * one["budget_flops"] and eight["parameters"] > one["parameters"]


def test_a_step_limit_that_ends_training_first_sizes_by_its_tokens(tok):
    both = TrainConfig(max_time="2h", max_steps=10, batch_size=8)
    cfg, info = sizing.for_budget(auto(), tok, both, 1000, 10**9, measure=lambda c: (1e11, "fake"))
    assert info["budget_tokens"] == 10 * 8 * 256 and "budget_seconds" not in info
    assert cfg == sizing.for_budget(auto(), tok, TrainConfig(max_steps=10, batch_size=8), 1000, 10**9)[0]
    long = TrainConfig(max_time="1m", max_steps=10**9, batch_size=8)  # the time ends it first
    assert "budget_seconds" in sizing.for_budget(auto(), tok, long, 1000, 10**9, measure=lambda c: (1e11, "f"))[1]


def test_a_stream_of_unknown_size_is_not_held_to_the_epoch_limit(tok):
    train, fake = TrainConfig(max_time="1h", batch_size=8), (lambda c: (1e11, "fake"))
    free, info = sizing.for_budget(auto(), tok, train, 10, train_tokens=None, measure=fake)
    assert free == sizing.nearest(auto(), tok, sizing.optimal_parameters(flops=1e11 * 3600)) and info["epochs"] is None
    assert "epochs of the data" not in sizing.describe(info)


def test_a_time_budget_takes_a_larger_model_rather_than_repeat_the_data_too_often(tok):
    train, rate = TrainConfig(max_time="10m", batch_size=8), 1e11
    fake = lambda c: (rate, "fake")  # noqa: E731
    free, info = sizing.for_budget(auto(), tok, train, 1000, train_tokens=10**9, measure=fake)
    assert info["epochs"] < sizing.MAX_EPOCHS  # plenty of data: the compute-optimal rung
    assert free == sizing.nearest(auto(), tok, sizing.optimal_parameters(flops=rate * 600))
    little = int(rate * 600 / (6 * info["parameters"]) / 10)  # that rung would pass over this data 10 times
    capped, capped_info = sizing.for_budget(auto(), tok, train, 10, little, measure=fake)
    assert capped_info["parameters"] > info["parameters"] and capped_info["epochs"] <= sizing.MAX_EPOCHS
    below = sizing.LADDER[sizing.LADDER.index((capped.n_layer, capped.n_embd, capped.n_head)) - 1]
    epochs_below = rate * 600 / (6 * sizing.parameters(sizing.shaped(auto(), below), tok)) / little
    assert epochs_below > sizing.MAX_EPOCHS  # the rung below the chosen one would repeat the data too often


def test_auto_refuses_sizes_of_its_own_and_from_pretrained():
    with pytest.raises(ConfigError, match=r"preset auto chooses n_layer.*sets model\.n_layer, model\.n_head"):
        auto(n_layer=4, n_head=2)
    with pytest.raises(ConfigError, match=r"a key/value head per query head.*sets model\.n_kv_head"):
        auto(n_kv_head=2)
    with pytest.raises(ConfigError, match="exclude each other"):
        auto(from_pretrained="some/model")


def test_auto_needs_the_data_and_a_budget():
    with pytest.raises(ConfigError, match="needs data, tokenizer and train blocks"):
        Recipe(model=ModelConfig(preset="auto"), train=None)


def test_an_unsized_auto_config_is_not_built(tok):
    from llmforge.models.build import build_model

    with pytest.raises(ConfigError, match="sized by the model stage"):
        build_model(auto(), tok, seed=0)


def test_an_auto_recipe_is_checked_when_loaded(corpus_file):
    spec = tiny_recipe_dict(corpus_file)
    spec["model"] = {"preset": "auto", "context_length": 32, "extra": {"intermediat_size": 64}}
    with pytest.raises(ConfigError, match="intermediat_size is not a qwen3 config key"):
        Recipe.from_dict(spec)


def test_an_auto_recipe_trains_the_chosen_shape_and_a_later_budget_trains_it_on(tmp_path, corpus_file):
    from llmforge import Run
    from llmforge.tools.report import data_report

    spec = tiny_recipe_dict(corpus_file, max_steps=4, eval_every=None, save_every=4)
    spec["model"] = {"preset": "auto", "arch": "llama", "context_length": 32}
    out = tmp_path / "run"
    report = data_report(Recipe.from_dict(spec), out=tmp_path / "report", console=Console(quiet=True))
    Recipe.from_dict(spec).run(out, console=Console(quiet=True))
    info = json.loads((out / "model" / ".llmforge.json").read_text())["info"]
    assert info["preset"] == "auto" and info["sized"]["budget_tokens"] == 4 * 4 * 32
    config = json.loads((Run(out).model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    shape = info["sized"]["shape"]
    assert [config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads")] == list(shape.values())
    assert report["auto"]["shape"] == info["sized"]["shape"] and report["parameters"] == info["parameters"]
    first = (out / "model" / ".llmforge.json").read_text()
    spec["train"]["max_steps"] = 6
    console = Console(record=True, width=200)
    Recipe.from_dict(spec).run(out, console=console)
    assert (out / "model" / ".llmforge.json").read_text() == first  # a later budget trains the same model on
    assert json.loads((out / "train" / "final" / ".llmforge.json").read_text())["info"]["steps"] == 6
    assert "training afresh" not in console.export_text()


def test_the_vocabulary_is_the_measured_one_for_small_budgets_and_grows_as_a_power_law():
    v = sizing.vocabulary_size
    (small_flops, small), (large_flops, large), (last_flops, last) = sizing.VOCABULARY_POINTS
    assert v(1e10) == v(small_flops) == small == 8192
    assert v(large_flops) == large and v(last_flops) == v(1e30) == last
    mid = math.sqrt(small_flops * large_flops)  # a power law: the geometric means meet
    assert v(mid) == pytest.approx(math.sqrt(small * large), abs=32)
    sizes = [v(10**e) for e in range(13, 28)]
    assert sizes == sorted(sizes) and all(s % sizing.VOCABULARY_MULTIPLE == 0 for s in sizes)
    assert 16_384 < v(1.9e18) < 32_768  # GPT-2 124M on Chinchilla's 2.5B tokens: between GPT-2's 50K and our 8K


def test_the_vocabulary_of_a_time_budget_is_its_measured_flops():
    train = TrainConfig(max_time="10m", batch_size=8)
    seen = []

    def fake(cfg):
        seen.append((cfg.n_layer, cfg.n_embd))
        return 1e12, "fake"

    size, info = sizing.vocabulary_for_budget(auto(), train, 10**6, measure=fake)
    assert seen == [(4, 256)]  # preset auto: the ladder's first guess is measured
    assert info["budget_flops"] == 600 * 1e12 and size == sizing.vocabulary_size(6e14)
    assert size > sizing.VOCABULARY_POINTS[0][1]
    assert "600 s x 1e+12 FLOP/s (fake)" in sizing.describe_vocabulary(info)
    eight = sizing.vocabulary_for_budget(auto(), train, 10**6, world=8, measure=fake)[1]
    assert eight["budget_flops"] == 8 * info["budget_flops"]


def test_the_vocabulary_of_a_token_budget_counts_the_text_and_the_models_parameters():
    fixed = ModelConfig(arch="llama", n_layer=2, n_embd=64, n_head=2, context_length=64)
    train = TrainConfig(epochs=2, batch_size=4, max_steps=None)
    size, info = sizing.vocabulary_for_budget(fixed, train, train_bytes=4 * 64 * 400)
    blocks = math.ceil(4 * 64 * 400 / sizing.BYTES_PER_TOKEN / 64)  # the text's blocks of 64 tokens, estimated
    assert info["budget_tokens"] == 2 * math.ceil(blocks / 4) * 4 * 64  # two epochs of batches of 4 blocks
    n = sizing.parameters(fixed, sizing.Vocabulary(8192))
    assert info["budget_flops"] == 6 * n * info["budget_tokens"] and size == sizing.vocabulary_size(
        6 * n * info["budget_tokens"]
    )
    steps = sizing.vocabulary_for_budget(fixed, TrainConfig(max_steps=10, batch_size=4), None)[1]
    assert steps["budget_tokens"] == 10 * 4 * 64  # a stream with a step budget needs no size
    both = TrainConfig(max_steps=10, max_time="1h", batch_size=4)
    first = sizing.vocabulary_for_budget(fixed, both, None, measure=lambda c: (1e12, "fake"))[1]
    assert "budget_tokens" in first  # ten steps end training long before the hour


def test_a_stream_without_a_step_or_time_budget_cannot_size_its_vocabulary():
    with pytest.raises(ConfigError, match="a stream's size is unknown"):
        sizing.vocabulary_for_budget(auto(), TrainConfig(epochs=1, max_steps=None), None)


def test_vocab_auto_needs_a_trained_tokenizer_and_a_budget(corpus_file):
    spec = tiny_recipe_dict(corpus_file)
    spec["tokenizer"] = {"vocab_size": "auto", "train": False, "path": "gpt2"}
    with pytest.raises(ConfigError, match="tokenizer.vocab_size auto sizes a trained tokenizer"):
        Recipe.from_dict(spec)
    spec["tokenizer"] = {"vocab_size": "auto"}
    spec["model"] = {"from_pretrained": "some/model"}
    with pytest.raises(ConfigError, match="model.from_pretrained has its own vocabulary"):
        Recipe.from_dict(spec)
    spec["tokenizer"] = {"vocab_size": "autoo"}
    with pytest.raises(ConfigError, match="tokenizer.vocab_size"):
        Recipe.from_dict(spec)


def test_a_vocab_auto_recipe_trains_the_chosen_size_and_keeps_it(tmp_path, corpus_file):
    from llmforge import Run

    spec = tiny_recipe_dict(corpus_file, max_steps=4, eval_every=None, save_every=4)
    spec["tokenizer"] = {"vocab_size": "auto"}
    out = tmp_path / "run"
    console = Console(record=True, width=200)
    Recipe.from_dict(spec).run(out, console=console)
    info = json.loads((out / "tokenizer" / ".llmforge.json").read_text())["info"]
    assert info["sized"]["budget_tokens"] == 4 * 4 * 32
    chosen = info["sized"]["vocab_size"]
    assert chosen == 8192  # a few million FLOPs: the size measured best at the smallest budget
    # the BPE stops where the tiny corpus has no pair left to merge: the size asked for is a ceiling
    assert info["vocab_size"] <= chosen
    assert f"tokenizer.vocab_size auto: {chosen:,} tokens" in console.export_text()
    config = json.loads((Run(out).model_dir / "config.json").read_text())
    assert config["vocab_size"] == info["vocab_size"]
    first = (out / "tokenizer" / ".llmforge.json").read_text()
    spec["train"]["max_steps"] = 6
    Recipe.from_dict(spec).run(out, console=Console(quiet=True))
    assert (out / "tokenizer" / ".llmforge.json").read_text() == first  # a later budget keeps the tokenizer


def test_a_flip_never_stops_on_a_rung_that_would_repeat_the_data_too_often(tok):
    """The first guess measured slow points down; the smaller rung, measured faster, points back up because
    it would pass over the data more than MAX_EPOCHS times: the choice must be the larger one."""
    train = TrainConfig(max_time="3m", batch_size=8)
    n = sizing.parameters(sizing.shaped(auto(), (3, 192, 3)), tok)
    slow = 6 * sizing.TOKENS_PER_PARAMETER * n * n  # 3 x 192 is compute-optimal for these FLOPs
    tokens = int(1.5 * slow / (6 * n * sizing.MAX_EPOCHS))  # 2.7 epochs at the slow rate, 5.3 at twice it
    rates = {256: slow / 180, 192: 2 * slow / 180}
    fake = lambda c: (rates.get(c.n_embd, 2 * slow / 180), f"fake {c.n_embd}")  # noqa: E731
    assert sizing.for_flops(auto(), tok, slow, tokens)[0].n_embd == 192  # the slow first guess points down
    assert sizing.for_flops(auto(), tok, 2 * slow, tokens)[0].n_embd == 256  # and the fast small rung back up
    cfg, info = sizing.for_budget(auto(), tok, train, 1000, train_tokens=tokens, measure=fake)
    assert cfg.n_embd > 192 and info["epochs"] <= sizing.MAX_EPOCHS
