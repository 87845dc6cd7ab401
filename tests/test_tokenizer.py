"""The tokenizer stage: a trained byte-level BPE tokenizer, its errors, and loading an existing one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pytest
from rich.console import Console
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from conftest import tiny_recipe_dict
from llmforge import Recipe
from llmforge.config.schema import TokenizerConfig
from llmforge.data.tokenizer import load_pretrained_tokenizer as load_pretrained
from llmforge.errors import ConfigError
from llmforge.plugin.manager import get_plugins
from llmforge.stages import data, tokenizer
from llmforge.stages.context import Context

EOS, PAD = "<|endoftext|>", "<|pad|>"
UNICODE = "Héllo wörld — 日本語 🙂 naïve\n\ttabs  and  spaces, a , b . c 's don't \x00\x7f\u2028 end "


def quiet() -> Console:
    return Console(quiet=True)


def recipe_for(corpus: Path, **tok: object) -> Recipe:
    mapping = tiny_recipe_dict(corpus, max_steps=1, eval_every=None, save_every=None)
    mapping["tokenizer"] = {"vocab_size": 400, **tok}
    return Recipe.from_dict(mapping)


def run_tokenizer_stage(recipe: Recipe, out: Path) -> PreTrainedTokenizerFast:
    """The data and tokenizer stages only, called the way Recipe.run calls them."""
    datasets.disable_progress_bars()
    ctx = Context(out, recipe, get_plugins(recipe.plugins), quiet())
    for stage in (data, tokenizer):
        name = stage.__name__.rsplit(".", 1)[-1]
        ctx.fingerprints[name] = stage.fingerprint(ctx)
        ctx.outputs[name] = stage.run(ctx)
    return AutoTokenizer.from_pretrained(str(out / "tokenizer"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_text):
    """A full tiny run; its trained tokenizer and run dir."""
    root = tmp_path_factory.mktemp("tok-run")
    corpus = root / "book.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    out = root / "run"
    recipe_for(corpus).run(out, console=quiet())
    return out, AutoTokenizer.from_pretrained(str(out / "tokenizer"))


def byte_level_bpe(texts: list[str], specials: list[str], vocab_size: int = 300) -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return bpe


def save_tokenizer(path: Path, corpus_text: str, specials: list[str], **tokens: str) -> Path:
    """A fast tokenizer dir built here (no hub), with only the special tokens given as keywords."""
    lines = [p for p in corpus_text.split("\n\n") if p.strip()][:80]
    fast = PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(lines, specials), **tokens)
    fast.save_pretrained(str(path))
    return path


# --- the trained tokenizer -------------------------------------------------------------------------


def test_trained_vocab_size_is_the_setting(trained):
    out, tok = trained
    assert len(tok) == 400
    assert tok.vocab_size == 400
    info = json.loads((out / "tokenizer" / ".llmforge.json").read_text())["info"]
    assert info == {"vocab_size": 400, "eos_token": EOS, "pad_token": PAD, "trained": True}
    assert tok.model_max_length == 32  # the recipe's context_length


def test_special_tokens_eos_bos_pad(trained):
    _, tok = trained
    assert tok.eos_token == EOS and tok.bos_token == EOS
    assert tok.pad_token == PAD
    assert tok.eos_token_id == tok.bos_token_id == tok.convert_tokens_to_ids(EOS)
    assert tok.pad_token_id == tok.convert_tokens_to_ids(PAD)
    assert tok.pad_token_id != tok.eos_token_id
    assert {tok.eos_token_id, tok.pad_token_id} <= set(range(len(tok)))


def test_special_tokens_are_single_ids(trained):
    _, tok = trained
    assert tok.encode(EOS, add_special_tokens=False) == [tok.eos_token_id]
    assert tok.encode(PAD, add_special_tokens=False) == [tok.pad_token_id]
    ids = tok.encode(f"Mr. Darcy{EOS}Elizabeth", add_special_tokens=False)
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "Mr. DarcyElizabeth"
    # plain text never produces a special id
    plain = tok.encode("It is a truth universally acknowledged <|endoftext", add_special_tokens=False)
    assert tok.eos_token_id not in plain and tok.pad_token_id not in plain


def test_encoding_adds_no_special_tokens_by_default(trained):
    _, tok = trained
    assert tok("Elizabeth")["input_ids"] == tok.encode("Elizabeth", add_special_tokens=False)


@pytest.mark.parametrize("text", [UNICODE, "", " leading space", "Mr. Bennet\r\n\r\nsaid \u00a0nothing."])
def test_byte_level_round_trip(trained, text):
    _, tok = trained
    ids = tok.encode(text, add_special_tokens=False)
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_text_outside_the_corpus_is_bytes_not_unknown(trained):
    _, tok = trained
    ids = tok.encode("日本", add_special_tokens=False)
    assert len(ids) >= 2  # no merges for these bytes: one id per byte (or pairs), never an unknown token
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_extra_special_token_is_one_id(corpus_file, tmp_path):
    recipe = recipe_for(corpus_file, special_tokens=[EOS, PAD, "<|sep|>"])
    tok = run_tokenizer_stage(recipe, tmp_path / "run")
    assert len(tok) == 400
    sep = tok.convert_tokens_to_ids("<|sep|>")
    assert sep not in (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
    assert tok.encode("a<|sep|>b", add_special_tokens=False).count(sep) == 1


# --- configuration errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "patterns"),
    [
        ({"vocab_size": 258}, [r"tokenizer\.vocab_size 258", r"need 258", r"above 258"]),
        ({"vocab_size": 100}, [r"tokenizer\.vocab_size 100", r"above"]),
        (
            {"vocab_size": 259, "special_tokens": [EOS, PAD, "<|a|>"]},
            [r"tokenizer\.vocab_size 259", r"3 special tokens need 259"],
        ),
        (
            {"special_tokens": [PAD]},
            [r"tokenizer\.eos_token '<\|endoftext\|>'", r"tokenizer\.special_tokens", "add it"],
        ),
        (
            {"special_tokens": [EOS]},
            [r"tokenizer\.pad_token '<\|pad\|>'", r"tokenizer\.special_tokens", "add it", "equal to eos_token"],
        ),
        ({"path": "some/dir", "train": True}, [r"tokenizer\.path", r"tokenizer\.train: true", "leave train out"]),
        ({"train": False}, [r"tokenizer\.train is false", r"tokenizer\.path is empty", "name a tokenizer dir"]),
    ],
)
def test_config_errors_name_the_key_and_the_fix(corpus_file, tmp_path, settings, patterns):
    recipe = recipe_for(corpus_file, **settings)
    with pytest.raises(ConfigError) as info:
        recipe.run(tmp_path / "run", console=quiet())
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))
    assert not (tmp_path / "run" / "tokenizer").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]


def test_vocab_size_just_above_the_minimum_trains(corpus_file, tmp_path):
    tok = run_tokenizer_stage(recipe_for(corpus_file, vocab_size=259), tmp_path / "run")
    assert len(tok) == 259


def test_tokenizer_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(ConfigError, match=r"tokenizer\.path") as info:
        load_pretrained(TokenizerConfig(train=False, path=str(missing)))
    assert str(missing) in str(info.value)


def test_tokenizer_path_that_does_not_exist_says_so(tmp_path):
    # The message should say the path is missing, not relay the hub client's repo-id validation
    # ("Repo id must be in the form ... Use `repo_type` argument"), which suggests the wrong fix.
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(ConfigError) as info:
        load_pretrained(TokenizerConfig(train=False, path=str(missing)))
    message = str(info.value)
    assert "does not exist" in message or "not found" in message, message
    assert "repo_type" not in message


def test_tokenizer_path_to_a_dir_without_a_tokenizer(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"Cannot load tokenizer\.path '.*empty'"):
        load_pretrained(TokenizerConfig(train=False, path=str(tmp_path / "empty")))


# --- loading an existing tokenizer ----------------------------------------------------------------


@pytest.mark.parametrize("train", [False, None], ids=["train-false", "path-alone"])
def test_load_a_previous_runs_tokenizer(trained, corpus_file, tmp_path, train):
    previous, tok_a = trained
    settings = {"train": False} if train is False else {}
    recipe = recipe_for(corpus_file, path=str(previous / "tokenizer"), **settings)
    out = tmp_path / "run"
    recipe.run(out, console=quiet())
    tok_b = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok_b.get_vocab() == tok_a.get_vocab()
    assert (tok_b.eos_token, tok_b.pad_token) == (EOS, PAD)
    assert tok_b.encode(UNICODE, add_special_tokens=False) == tok_a.encode(UNICODE, add_special_tokens=False)
    info = json.loads((out / "tokenizer" / ".llmforge.json").read_text())["info"]
    assert info["trained"] is False and info["vocab_size"] == 400
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.config.pad_token_id == tok_a.pad_token_id
    assert model.config.eos_token_id == tok_a.eos_token_id


def test_loaded_tokenizer_without_pad_gets_a_new_pad_token(tmp_path, corpus_text):
    path = save_tokenizer(tmp_path / "nopad", corpus_text, [EOS], eos_token=EOS)
    before = AutoTokenizer.from_pretrained(str(path))
    assert before.pad_token is None
    tok = load_pretrained(TokenizerConfig(train=False, path=str(path)))
    assert tok.pad_token == PAD
    assert len(tok) == len(before) + 1
    assert tok.pad_token_id == len(before)  # a new id, not an existing real token
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.encode(PAD, add_special_tokens=False) == [tok.pad_token_id]


def test_loaded_tokenizer_pads_with_eos_only_when_asked(tmp_path, corpus_text):
    path = save_tokenizer(tmp_path / "nopad", corpus_text, [EOS], eos_token=EOS)
    n = len(AutoTokenizer.from_pretrained(str(path)))
    tok = load_pretrained(TokenizerConfig(train=False, path=str(path), pad_token=EOS))
    assert tok.pad_token == EOS
    assert tok.pad_token_id == tok.eos_token_id
    assert len(tok) == n
    unset = load_pretrained(TokenizerConfig(train=False, path=str(path), pad_token=None))
    assert unset.pad_token is None and len(unset) == n


def test_loaded_tokenizer_keeps_its_own_pad(tmp_path, corpus_text):
    path = save_tokenizer(tmp_path / "own", corpus_text, [EOS, "[PAD]"], eos_token=EOS, pad_token="[PAD]")
    tok = load_pretrained(TokenizerConfig(train=False, path=str(path)))
    assert tok.pad_token == "[PAD]"
    assert PAD not in tok.get_vocab()


def test_loaded_tokenizer_without_eos_gets_the_configured_one(tmp_path, corpus_text):
    declared = save_tokenizer(tmp_path / "in-vocab", corpus_text, [EOS])  # in the vocab, not declared
    tok = load_pretrained(TokenizerConfig(train=False, path=str(declared)))
    assert tok.eos_token == EOS
    assert tok.eos_token_id == AutoTokenizer.from_pretrained(str(declared)).convert_tokens_to_ids(EOS)

    absent = save_tokenizer(tmp_path / "absent", corpus_text, [])
    n = len(AutoTokenizer.from_pretrained(str(absent)))
    tok = load_pretrained(TokenizerConfig(train=False, path=str(absent)))
    assert tok.eos_token == EOS
    assert tok.eos_token_id == n and tok.pad_token_id == n + 1
    assert tok.encode(EOS, add_special_tokens=False) == [tok.eos_token_id]


def test_loaded_tokenizer_without_pad_through_a_recipe(tmp_path, corpus_file, corpus_text):
    path = save_tokenizer(tmp_path / "nopad", corpus_text, [EOS], eos_token=EOS)
    n = len(AutoTokenizer.from_pretrained(str(path)))
    out = tmp_path / "run"
    recipe_for(corpus_file, train=False, path=str(path)).run(out, console=quiet())
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert (tok.pad_token, tok.pad_token_id, len(tok)) == (PAD, n, n + 1)
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert model.config.pad_token_id == n != model.config.eos_token_id
    assert model.get_input_embeddings().num_embeddings == n + 1
