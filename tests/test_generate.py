"""Text generation from a model dir: load(), greedy and sampled decoding, limits and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmforge.errors import ConfigError
from llmforge.models.loading import load_model_dir as load
from llmforge.tools.generate import generate

EOS, PAD = "<|endoftext|>", "<|pad|>"
POSITIONS = 32
PROMPT = "Mr. Bennet said"


def train_tokenizer(corpus_text: str) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([p for p in corpus_text.split("\n\n") if p.strip()][:100], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=PAD)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus_text) -> Path:
    path = tmp_path_factory.mktemp("generate") / "model"
    tok = train_tokenizer(corpus_text)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=POSITIONS,
        n_embd=32,
        n_layer=1,
        n_head=2,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load(model_dir)


class Spy:
    """Wraps model.generate to record the ids it was given and returned."""

    def __init__(self, model) -> None:
        self.model = model
        self.original = model.generate
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        self.calls.append((kwargs["input_ids"].clone(), out.clone()))
        return out

    def new_ids(self) -> list[int]:
        prompt, out = self.calls[-1]
        return out[0, prompt.shape[1] :].tolist()


@pytest.fixture
def spy(loaded, monkeypatch):
    model, _ = loaded
    recorder = Spy(model)
    monkeypatch.setattr(model, "generate", recorder)
    return recorder


def manual_greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            new.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new


def prompt_of(tok, n_tokens: int) -> str:
    """A prompt that encodes to exactly `n_tokens` tokens."""
    text = " the" * n_tokens
    assert len(tok.encode(text, add_special_tokens=False)) == n_tokens
    return text


# --- load -----------------------------------------------------------------------------------------


def test_load_returns_an_eval_model_and_its_tokenizer(loaded):
    model, tok = loaded
    assert not model.training
    assert model.config.n_positions == POSITIONS
    assert len(tok) == model.config.vocab_size == 300
    assert tok.eos_token == EOS and tok.pad_token == PAD
    assert len(tok.encode(PROMPT)) + 12 <= POSITIONS  # the tests below are not cut short by the position cap


def test_load_dir_without_config_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json") as info:
        load(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(ConfigError, match="no config.json"):
        load(tmp_path / "does-not-exist")


def test_load_dir_with_a_config_but_no_weights_is_a_config_error(tmp_path, model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ConfigError, match=r"Cannot load the model in '.*broken'"):
        load(broken)


# --- greedy -----------------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_is_the_argmax_continuation(loaded, spy):
    model, tok = loaded
    first = generate(model, tok, PROMPT, max_new_tokens=10, greedy=True, repetition_penalty=1.0)
    ids = spy.new_ids()
    torch.manual_seed(1234)  # the global RNG state does not matter for greedy decoding
    second = generate(model, tok, PROMPT, max_new_tokens=10, greedy=True, repetition_penalty=1.0)
    assert first == second
    assert ids == spy.new_ids() == manual_greedy(model, tok, PROMPT, 10)
    assert first == tok.decode(ids, skip_special_tokens=True)


def test_prompt_is_not_in_the_output(loaded, spy):
    model, tok = loaded
    text = generate(model, tok, PROMPT, max_new_tokens=6, greedy=True)
    prompt_ids, out = spy.calls[-1]
    assert prompt_ids[0].tolist() == tok.encode(PROMPT, add_special_tokens=False)
    assert out[0, : prompt_ids.shape[1]].tolist() == prompt_ids[0].tolist()
    assert text == tok.decode(out[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    assert PROMPT not in text


# --- sampling -----------------------------------------------------------------------------------------


def test_sampling_with_a_seed_is_reproducible(loaded, spy):
    model, tok = loaded
    a = generate(model, tok, PROMPT, max_new_tokens=12, seed=1)
    a_ids = spy.new_ids()
    torch.rand(100)  # global RNG use in between does not change a seeded sample
    b = generate(model, tok, PROMPT, max_new_tokens=12, seed=1)
    assert (a, a_ids) == (b, spy.new_ids())
    c = generate(model, tok, PROMPT, max_new_tokens=12, seed=2)
    assert spy.new_ids() != a_ids
    assert isinstance(c, str)


@pytest.mark.parametrize("temperature", [0, 0.0])
def test_zero_temperature_is_greedy_decoding(loaded, spy, temperature):
    model, tok = loaded
    greedy = generate(model, tok, PROMPT, max_new_tokens=8, greedy=True)
    greedy_ids = spy.new_ids()
    assert generate(model, tok, PROMPT, max_new_tokens=8, temperature=temperature, seed=5) == greedy
    assert spy.new_ids() == greedy_ids
    torch.manual_seed(99)  # no randomness is involved
    assert generate(model, tok, PROMPT, max_new_tokens=8, temperature=temperature) == greedy


def test_negative_temperature_is_a_config_error(loaded):
    model, tok = loaded
    with pytest.raises(ConfigError, match="temperature must be positive to sample, or 0 for greedy decoding"):
        generate(model, tok, PROMPT, temperature=-0.5)
    # greedy decoding ignores the temperature
    assert isinstance(generate(model, tok, PROMPT, max_new_tokens=2, temperature=-0.5, greedy=True), str)


def test_max_new_tokens_below_one_is_a_config_error(loaded):
    model, tok = loaded
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        generate(model, tok, PROMPT, max_new_tokens=0)


# --- lengths ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("n", [1, 3, 9])
def test_max_new_tokens_bounds_the_new_tokens(loaded, spy, greedy, n):
    model, tok = loaded
    generate(model, tok, "Elizabeth", max_new_tokens=n, greedy=greedy, seed=0)
    new = spy.new_ids()
    assert 1 <= len(new) <= n
    if len(new) < n:  # only an end-of-text token stops generation early
        assert new[-1] == tok.eos_token_id


def test_prompt_near_the_position_limit_caps_new_tokens(loaded, spy):
    model, tok = loaded
    for length in (POSITIONS - 2, POSITIONS - 1, POSITIONS):
        text = generate(model, tok, prompt_of(tok, length), max_new_tokens=20, greedy=True)
        assert isinstance(text, str)
        prompt_ids, out = spy.calls[-1]
        assert prompt_ids.shape[1] == length
        assert 1 <= out.shape[1] - length <= max(1, POSITIONS - length)


def test_prompt_longer_than_the_positions_is_not_an_index_error(loaded, spy):
    # A prompt beyond the model's positions must give a clear llmforge error (or be cut to fit),
    # not an IndexError from the position embedding.
    model, tok = loaded
    prompt = prompt_of(tok, POSITIONS + 5)
    try:
        text = generate(model, tok, prompt, max_new_tokens=4, greedy=True)
    except ConfigError as exc:
        assert str(POSITIONS) in str(exc)
    else:
        assert isinstance(text, str)
        assert spy.calls[-1][1].shape[1] <= POSITIONS + 1


def test_empty_prompt_starts_from_end_of_text(loaded, spy):
    model, tok = loaded
    text = generate(model, tok, "", max_new_tokens=3, greedy=True)
    assert isinstance(text, str)
    prompt_ids, _ = spy.calls[-1]
    assert prompt_ids.tolist() == [[tok.eos_token_id]]


def test_generate_with_a_llama_model(tmp_path, corpus_text):
    tok = train_tokenizer(corpus_text)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=POSITIONS,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(tmp_path / "llama"))
    tok.save_pretrained(str(tmp_path / "llama"))
    model, loaded_tok = load(tmp_path / "llama")
    greedy = [generate(model, loaded_tok, PROMPT, max_new_tokens=5, greedy=True) for _ in range(2)]
    assert greedy[0] == greedy[1]
    # the position cap also reads max_position_embeddings
    assert isinstance(generate(model, loaded_tok, prompt_of(loaded_tok, POSITIONS - 1), max_new_tokens=20), str)


# --- the command line -------------------------------------------------------------------------------


def cli_output(capsys, *argv: str) -> str:
    from llmforge.cli import main

    capsys.readouterr()
    assert main(["generate", *argv]) == 0
    return capsys.readouterr().out


def test_cli_temperature_zero_is_greedy(model_dir, capsys):
    args = (str(model_dir), PROMPT, "--max-new-tokens", "8")
    greedy = cli_output(capsys, *args, "--greedy")
    assert greedy.startswith(PROMPT) and len(greedy.strip()) > len(PROMPT)
    for seed in ("1", "2"):
        assert cli_output(capsys, *args, "--temperature", "0", "--seed", seed) == greedy


def _finished(src: Path, final: Path) -> None:
    """`src` copied to `final` as a complete artefact (with its manifest), as a stage leaves it."""
    import shutil

    from llmforge import rundir

    shutil.copytree(src, final)
    rundir.write_manifest(final, "test")


def test_cli_generate_on_a_run_dir_uses_its_latest_finished_model(tmp_path, model_dir, loaded, capsys, monkeypatch):
    import llmforge.models.loading

    run = tmp_path / "runs" / "first"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: first\n")
    _finished(model_dir, run / "train" / "final")
    _finished(model_dir, run / "finetune" / "final")
    seen: list[Path] = []

    def recording(path):
        seen.append(Path(path))
        return loaded

    monkeypatch.setattr(llmforge.models.loading, "load_model_dir", recording)
    cli_output(capsys, str(run), PROMPT, "--max-new-tokens", "2", "--greedy")
    assert seen[-1] == run / "finetune" / "final"  # as llmforge.Run(run).model_dir and llmforge eval
    (run / "finetune" / "final" / "config.json").write_text("{}")  # no longer complete
    cli_output(capsys, str(run), PROMPT, "--max-new-tokens", "2", "--greedy")
    assert seen[-1] == run / "train" / "final"
    (run / "train" / "final" / ".llmforge.json").unlink()

    from llmforge.cli import main

    assert main(["generate", str(run), PROMPT]) == 2
    err = capsys.readouterr().err
    assert "no finished model" in err and "finetune/final or train/final" in err
    assert len(seen) == 2
