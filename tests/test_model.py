"""The model stage: the recipe's sizes translated per family, special ids, errors, pretrained weights."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.config.schema import MODEL_DEFAULTS, ModelConfig
from llmforge.errors import ConfigError
from llmforge.models.build import build_model, family_config

EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<|bos|>"
SMALL = {"n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 32}


def make_tokenizer(corpus_text: str, with_bos: bool) -> PreTrainedTokenizerFast:
    # filler specials first, so that no special id is 0, 1 or 2 (the config classes' defaults)
    specials = ["<|a|>", "<|b|>", "<|c|>", EOS, PAD, BOS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([p for p in corpus_text.split("\n\n") if p.strip()][:100], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, pad_token=PAD, **({"bos_token": BOS} if with_bos else {})
    )


@pytest.fixture(scope="module")
def tok(corpus_text):
    return make_tokenizer(corpus_text, with_bos=False)


@pytest.fixture(scope="module")
def tok_bos(corpus_text):
    return make_tokenizer(corpus_text, with_bos=True)


def cfg(**kw: object) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- family_config ------------------------------------------------------------------------------


def test_gpt2_config_keys(tok):
    config = family_config(cfg(arch="gpt2", n_layer=2, n_embd=48, n_head=3, context_length=24, dropout=0.125), tok)
    assert isinstance(config, GPT2Config)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_positions) == (2, 48, 3, 24)
    assert config.resid_pdrop == config.embd_pdrop == config.attn_pdrop == 0.125
    assert config.tie_word_embeddings is True
    assert config.vocab_size == len(tok) == 320


def test_special_ids_come_from_the_tokenizer(tok, tok_bos):
    eos, pad = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(PAD)
    assert (eos, pad) == (3, 4)
    for arch in ("gpt2", "llama"):
        config = family_config(cfg(arch=arch), tok)
        assert (config.eos_token_id, config.bos_token_id, config.pad_token_id) == (eos, eos, pad), arch
        assert 50256 not in (config.eos_token_id, config.bos_token_id, config.pad_token_id)
        with_bos = family_config(cfg(arch=arch), tok_bos)
        assert (with_bos.eos_token_id, with_bos.bos_token_id, with_bos.pad_token_id) == (eos, 5, pad), arch
    assert GPT2Config().eos_token_id == 50256  # what a fresh config would have kept


def test_untied_embeddings(tok):
    model = build_model(cfg(tie_embeddings=False), tok, seed=0)
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    tied = build_model(cfg(), tok, seed=0)
    assert tied.lm_head.weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()


def test_gpt2_builds_with_the_tokenizer_vocabulary(tok):
    model = build_model(cfg(arch="gpt2", dropout=0.1), tok, seed=0)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.transformer.wpe.num_embeddings == 32
    assert len(model.transformer.h) == 1
    assert model.transformer.h[0].attn.attn_dropout.p == 0.1
    ids = torch.tensor([tok.encode("It is a truth universally acknowledged")])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_extra_keys_reach_the_config(tok):
    config = family_config(cfg(arch="gpt2", extra={"n_inner": 40, "activation_function": "relu"}), tok)
    assert (config.n_inner, config.activation_function) == (40, "relu")
    model = build_model(cfg(arch="gpt2", extra={"n_inner": 40}), tok, seed=0)
    assert model.transformer.h[0].mlp.c_fc.weight.shape[-1] == 40


def test_llama_builds_and_runs(tok):
    model_cfg = cfg(arch="llama", n_embd=32, n_head=4, n_kv_head=2, context_length=16)
    config = family_config(model_cfg, tok)
    assert isinstance(config, LlamaConfig)
    assert config.num_hidden_layers == 1
    assert config.hidden_size == 32
    assert config.num_attention_heads == 4
    assert config.num_key_value_heads == 2
    assert config.max_position_embeddings == 16
    assert config.head_dim == 8
    assert config.vocab_size == len(tok)
    model = build_model(model_cfg, tok, seed=0)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == 32 and attn.k_proj.out_features == 2 * 8
    ids = torch.tensor([tok.encode("Mr. Bennet replied that he had not.")[:16]] * 2)
    logits = model(ids).logits
    assert logits.shape == (2, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_llama_without_n_kv_head_uses_n_head(tok):
    assert family_config(cfg(arch="llama", n_head=4), tok).num_key_value_heads == 4


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_arch_lists_the_closest_known(tok):
    with pytest.raises(ConfigError) as info:
        family_config(cfg(arch="lama"), tok)
    message = str(info.value)
    assert "model.arch 'lama'" in message
    assert "did you mean 'llama'" in message
    known = re.search(r"Known \(closest first\): (.*)", message).group(1)
    assert known.split(", ")[0] == "llama"


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"n_embd": 30, "n_head": 4}, r"model\.n_head 4 must divide model\.n_embd 30"),
        ({"arch": "llama", "n_head": 4, "n_kv_head": 3}, r"model\.n_kv_head 3 must divide model\.n_head 4"),
        ({"dropout": 1.0}, r"model\.dropout must be in \[0, 1\), got 1\.0"),
        ({"dropout": -0.1}, r"model\.dropout must be in \[0, 1\), got -0\.1"),
        ({"n_layer": 0}, r"model\.n_layer must be at least 1"),
        ({"context_length": 0}, r"model\.context_length must be at least 1"),
    ],
)
def test_invalid_sizes_are_config_errors(tok, kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        family_config(cfg(**kw), tok)


@pytest.mark.parametrize(("arch", "valid"), [("gpt2", "n_inner"), ("llama", "intermediate_size")])
def test_unknown_extra_key_names_the_valid_keys(tok, arch, valid):
    with pytest.raises(ConfigError) as info:
        family_config(cfg(arch=arch, n_head=2, extra={"n_iner": 64}), tok)
    message = str(info.value)
    assert f"model.extra.n_iner is not a {arch} config key" in message
    assert "Valid keys:" in message and valid in message.split("Valid keys:")[1]


def test_unknown_extra_key_suggests_the_close_one(tok):
    with pytest.raises(ConfigError, match="did you mean 'n_inner'"):
        family_config(cfg(arch="gpt2", extra={"n_iner": 64}), tok)


# --- pretrained weights ---------------------------------------------------------------------------


@pytest.fixture
def pretrained_dir(tmp_path, tok):
    torch.manual_seed(11)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2))
    model.save_pretrained(str(tmp_path / "pretrained"))
    return tmp_path / "pretrained", state(model)


def test_from_pretrained_local_dir(pretrained_dir, tok):
    path, weights = pretrained_dir
    model = build_model(cfg(from_pretrained=str(path), context_length=32), tok, seed=0)
    loaded = state(model)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    # special ids are the tokenizer's, not the saved config's GPT-2 defaults
    assert (model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id) == (3, 3, 4)


def test_from_pretrained_context_longer_than_its_positions(pretrained_dir, tok):
    path, _ = pretrained_dir
    with pytest.raises(ConfigError, match=r"model\.context_length 64 exceeds the 32 positions") as info:
        build_model(cfg(from_pretrained=str(path), context_length=64), tok, seed=0)
    assert "at most 32" in str(info.value) and str(path) in str(info.value)


def test_from_pretrained_smaller_vocabulary_is_resized(tmp_path, tok):
    GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        str(tmp_path / "small")
    )
    model = build_model(cfg(from_pretrained=str(tmp_path / "small")), tok, seed=0)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    ids = torch.tensor([[tok.pad_token_id, len(tok) - 1]])
    assert model(ids).logits.shape[-1] == len(tok)


def test_from_pretrained_missing_dir(tmp_path, tok):
    with pytest.raises(ConfigError, match=r"Cannot load model\.from_pretrained"):
        build_model(cfg(from_pretrained=str(tmp_path / "nothing-here")), tok, seed=0)


# --- seeds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_seed_fixes_the_initial_weights(tok, arch):
    model_cfg = cfg(arch=arch)
    a = state(build_model(model_cfg, tok, seed=5))
    torch.rand(10)  # global RNG use in between does not matter: the seed is set before building
    b = state(build_model(model_cfg, tok, seed=5))
    c = state(build_model(model_cfg, tok, seed=6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    differ = [k for k in a if a[k].numel() > 1 and not torch.equal(a[k], c[k])]
    assert any("embed" in k or "wte" in k for k in differ)
    assert len(differ) >= len(a) // 3


# --- the stage in a recipe run -------------------------------------------------------------------


def test_model_stage_in_a_recipe_run(corpus_file, tmp_path, capsys):
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus_file, max_steps=1, eval_every=None, save_every=None))
    out = tmp_path / "run"
    recipe.run(out)
    printed = capsys.readouterr().out

    info = json.loads((out / "model" / ".llmforge.json").read_text())["info"]
    stats = json.loads((out / "data" / "stats.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    params = sum(p.numel() for p in model.parameters())
    assert info["arch"] == MODEL_DEFAULTS["arch"] == "qwen3"  # the default family (docs/models.md)
    assert info["parameters"] == params
    assert info["train_tokens"] == stats["blocks"]["train"]["tokens"]
    assert info["tokens_per_parameter"] == round(info["train_tokens"] / params, 4)

    flat = " ".join(printed.split())
    assert f"qwen3 with {params / 1e6:.2f}M parameters" in flat
    assert f"{info['train_tokens']:,} training tokens" in flat
    assert f"{info['tokens_per_parameter']:.2f} tokens/parameter" in flat

    # model/ holds the initial weights built from the recipe's seed, and the run's tokenizer
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    assert len(tok) == model.config.vocab_size == 400
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    fresh = state(build_model(recipe.model, tok, seed=recipe.train.seed))
    saved = state(model)
    assert all(torch.equal(fresh[k], saved[k]) for k in fresh)


def test_continued_pretraining_starts_at_the_bases_own_loss_with_its_own_tokenizer(tmp_path, corpus_file, corpus_text):
    """model.from_pretrained without a tokenizer block: the weights' own tokenizer, and the first logged loss
    is the base model's loss on the new text, to 1e-4: its weights, not a fresh initialisation."""
    from rich.console import Console

    from chat_helpers import tiny_base
    from llmforge.data.blocks import open_blocks

    base = tiny_base(tmp_path / "base", corpus_text, arch="llama", positions=64)
    spec = tiny_recipe_dict(corpus_file, max_steps=1, eval_every=None, save_every=None, document_aware=False)
    del spec["tokenizer"]
    spec["model"] = {"from_pretrained": str(base), "context_length": 32}
    out = tmp_path / "run"
    Recipe.from_dict(spec).run(out, until="blocks", console=Console(quiet=True))
    blocks = open_blocks(out / "data" / "blocks")["train"]
    spec["train"]["batch_size"] = len(blocks)  # one batch of every block: the first loss is over all of them
    run = Recipe.from_dict(spec).run(out, console=Console(quiet=True))
    own = AutoTokenizer.from_pretrained(str(base))
    assert AutoTokenizer.from_pretrained(str(out / "tokenizer")).get_vocab() == own.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        direct = model(input_ids=ids, labels=ids).loss.item()
    first = next(r["loss"] for r in run.metrics() if "loss" in r)
    assert first == pytest.approx(direct, abs=1e-4)
    assert AutoModelForCausalLM.from_pretrained(str(run.model_dir)).config.vocab_size == len(own)


def test_a_python_recipe_with_pretrained_weights_takes_their_tokenizer(tmp_path):
    """The same default in Python as in YAML: no tokenizer given, model.from_pretrained -> its own tokenizer;
    one given (or None for a stage that is off) is kept."""
    from llmforge.config.schema import DataConfig, ModelConfig, TokenizerConfig

    weights = ModelConfig(from_pretrained=str(tmp_path / "base"))
    assert Recipe(model=weights).tokenizer == TokenizerConfig(path=str(tmp_path / "base"))
    assert Recipe().tokenizer == TokenizerConfig() and type(Recipe().tokenizer) is TokenizerConfig
    own = TokenizerConfig(vocab_size=512)
    assert Recipe(model=weights, tokenizer=own).tokenizer is own
    assert Recipe(model=weights, data=None).tokenizer == TokenizerConfig()  # no data: nothing is pretrained on
    assert Recipe(model=weights, tokenizer=None).tokenizer is None
    assert Recipe.from_dict({"model": {"from_pretrained": str(tmp_path / "base")}}).tokenizer.path == str(
        tmp_path / "base"
    )
    assert type(Recipe.from_dict({}).tokenizer) is TokenizerConfig and DataConfig() == Recipe().data
