"""Model families: the recipe's sizes per family, presets, errors, and every family through the same path.

The same promises for each verified family (llmforge.models.families.FAMILIES): packed documents do not see
each other, the fused loss equals the model's own, and the tiny recipe trains, resumes exactly, saves a
plain HF dir, generates and evaluates.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from test_model import make_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, CohereConfig

from conftest import packed_document_logits, tiny_recipe_dict
from llmforge import Recipe
from llmforge.cli import main as cli_main
from llmforge.config.schema import ModelConfig
from llmforge.data.batches import PackedCollator, document_leak
from llmforge.errors import ConfigError
from llmforge.models.build import build_model, check_document_aware, family_config
from llmforge.models.families import FAMILIES, apply_preset, mlp_width
from llmforge.plugin.manager import get_plugins
from llmforge.training.trainer import FUSED_LOSS_FAMILIES, chunked_causal_lm_loss, fused_loss_supported

ARCHS = sorted(FAMILIES)
SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data" / "benchmarks"
EOS = 3  # make_tokenizer's <|endoftext|>


@pytest.fixture(scope="module")
def tok(corpus_text):
    return make_tokenizer(corpus_text, with_bos=False)


def tiny(arch: str, **kw: object) -> ModelConfig:
    """Two layers (a leak across documents needs a second layer to show in every family), 4 heads of 8."""
    gqa = {"n_kv_head": 2} if FAMILIES[arch].kv_heads else {}
    return ModelConfig(**{"arch": arch, "n_layer": 2, "n_embd": 32, "n_head": 4, "context_length": 32, **gqa, **kw})


def build(arch: str, tok, attn: str = "sdpa", **kw: object) -> torch.nn.Module:
    return build_model(tiny(arch, attn_implementation=attn, **kw), tok, seed=0).eval()


# --- the translation, per family -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_recipe_sizes_become_the_family_keys(tok, arch):
    family = FAMILIES[arch]
    gqa = {"n_kv_head": 2} if family.kv_heads else {}
    cfg = ModelConfig(
        arch=arch, n_layer=3, n_embd=64, n_head=4, context_length=24, dropout=0.125, tie_embeddings=False, **gqa
    )
    config = family_config(cfg, tok)
    assert config.model_type == arch
    # transformers' standard names read every family's own keys (attribute_map)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 64, 4)
    assert config.max_position_embeddings == 24
    assert config.tie_word_embeddings is False
    assert all(getattr(config, key) == 0.125 for key in family.dropout) and family.dropout
    if family.kv_heads:
        assert config.num_key_value_heads == 2
    assert getattr(config, "head_dim", None) in (None, 16)  # n_embd / n_head, never the class default
    if family.mlp:
        assert getattr(config, family.mlp) == {8 / 3: 192, 4.0: 256}[family.mlp_ratio]  # x 64 rounded up
    assert config.vocab_size == len(tok)
    assert (config.eos_token_id, config.bos_token_id, config.pad_token_id) == (EOS, EOS, 4)

    model = AutoModelForCausalLM.from_config(config)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    # the MLP's down projection reads the MLP width (GPT-2's Conv1D stores its weight as in x out)
    weights = [m.weight for m in model.modules() if getattr(m, "weight", None) is not None and m.weight.ndim == 2]
    inputs = {w.shape[0 if arch == "gpt2" else 1] for w in weights}
    assert {192, 256} & inputs == {4 * 64 if arch == "gpt2" else getattr(config, family.mlp)}


def test_mlp_width_rule():
    # 8/3 x n_embd for a gated MLP (Llama's rule, multiple of 64): the weights of GPT-2's 4 x n_embd MLP
    assert [mlp_width(n, 8 / 3) for n in (32, 64, 384, 576, 768, 1024, 2048)] == [
        128,
        192,
        1024,
        1536,
        2048,
        2752,
        5504,
    ]
    assert [mlp_width(n, 4.0) for n in (32, 48, 768)] == [128, 192, 3072]


def test_another_transformers_family_is_built_through_standard_keys(tok, capsys):
    model = build_model(ModelConfig(arch="starcoder2", n_layer=1, n_embd=32, n_head=4, n_kv_head=2), tok, seed=0)
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("starcoder2", 1, 32)
    assert model.config.num_key_value_heads == 2 and model.config.max_position_embeddings == 256
    assert model.config.intermediate_size == 128  # starcoder2's own ratio (4x) applied to n_embd
    assert "has not verified 'starcoder2'" in " ".join(capsys.readouterr().out.split())


# --- presets ----------------------------------------------------------------------------------------


def test_builtin_presets_come_from_the_models_plugin():
    registry = get_plugins().registries["model_preset"]
    builtin = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-1b", "gpt2-xl", "llama-124m", "smollm-135m"}
    assert builtin <= set(registry.names())
    assert {registry.owner(name) for name in builtin} == {"models"}


@pytest.mark.parametrize(
    ("preset", "shape", "millions"),
    [
        ("gpt2", ("gpt2", 12, 768, 12, None, 1024), 124.44),
        ("gpt2-medium", ("gpt2", 24, 1024, 16, None, 1024), 354.82),
        ("gpt2-1b", ("gpt2", 36, 1536, 24, None, 1024), 1098.71),
        ("llama-124m", ("llama", 12, 768, 12, 4, 1024), 124.73),
    ],
)
def test_preset_shapes_and_parameter_counts(preset, shape, millions):
    class GPT2Vocabulary:  # the counts people quote are with GPT-2's tokenizer
        eos_token_id, bos_token_id, pad_token_id = 50256, None, None

        def __len__(self):
            return 50257

    cfg = Recipe.from_dict({"model": {"preset": preset}}).model
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.context_length) == shape
    with torch.device("meta"):  # no memory for a billion parameters
        model = AutoModelForCausalLM.from_config(family_config(cfg, GPT2Vocabulary()))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_explicit_keys_win_over_the_preset():
    recipe = Recipe.from_dict(
        {"model": {"preset": "llama-124m", "n_layer": 6, "context_length": 256, "extra": {"rms_norm_eps": 1e-5}}}
    )
    m = recipe.model
    assert (m.arch, m.n_layer, m.n_embd, m.n_head, m.n_kv_head, m.context_length) == ("llama", 6, 768, 12, 4, 256)
    assert m.extra == {"intermediate_size": 2432, "rms_norm_eps": 1e-5}  # the preset's extra under the recipe's
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())).model == m  # recipe.yaml reloads to the same

    # another family keeps the sizes but not the preset's family-specific keys (gpt2 has no GQA)
    other = Recipe.from_dict({"model": {"preset": "llama-124m", "arch": "gpt2"}}).model
    assert (other.arch, other.n_layer, other.n_embd, other.n_kv_head, other.extra) == ("gpt2", 12, 768, None, {})


def test_model_config_outside_a_recipe_takes_its_preset(tok):
    cfg = ModelConfig(preset="gpt2", n_layer=1, n_embd=32, n_head=2, context_length=16)
    assert cfg.arch is None  # unset until the preset is applied
    model = build_model(cfg, tok, seed=0)
    assert model.config.model_type == "gpt2" and model.config.n_positions == 16
    assert ModelConfig().arch == "qwen3" and ModelConfig().n_layer == 4  # no preset: the plain defaults


def test_a_plugin_in_the_recipe_adds_a_preset(tmp_path, monkeypatch):
    (tmp_path / "my_presets_plugin.py").write_text(
        textwrap.dedent(
            """
            from llmforge import hookimpl
            from llmforge.models.families import ModelPreset

            @hookimpl
            def register_model_presets(register):
                rope = {"rope_type": "default", "rope_theta": 1e6}
                register("qwen-mini", ModelPreset("qwen3", 2, 64, 4, 128, n_kv_head=2, extra={"rope_parameters": rope}))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = Recipe.from_dict({"plugins": ["my_presets_plugin"], "model": {"preset": "qwen-mini"}}).model
    assert (m.arch, m.n_layer, m.n_embd, m.n_head, m.n_kv_head, m.context_length) == ("qwen3", 2, 64, 4, 2, 128)
    assert m.extra == {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}


def test_preset_errors():
    with pytest.raises(
        ConfigError, match=r"model\.preset: No model preset named 'gpt-2'\. Known \(closest first\): gpt2,"
    ):
        Recipe.from_dict({"model": {"preset": "gpt-2"}})
    with pytest.raises(
        ConfigError, match="model.preset 'gpt2' and model.from_pretrained 'some/dir' exclude each other"
    ):
        apply_preset(ModelConfig(preset="gpt2", from_pretrained="some/dir"), get_plugins())


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"arch": "lama"},
            "model.arch 'lama' is not a transformers model_type (did you mean 'llama'?). Known (closest first): llama,",
        ),
        ({"arch": "t5"}, "model.arch 't5' has no causal-LM model in transformers"),
        ({"n_embd": 100, "n_head": 8}, "model.n_head 8 must divide model.n_embd 100"),
        ({"arch": "qwen3", "n_head": 4, "n_kv_head": 3}, "model.n_kv_head 3 must divide model.n_head 4"),
        ({"arch": "gpt2", "n_kv_head": 2}, "model.n_kv_head: gpt2 has no grouped-query attention"),
        (
            {"arch": "llama", "extra": {"hidden_size": 64}},
            "model.extra.hidden_size is what model.n_embd sets for llama",
        ),
        ({"arch": "gpt2", "extra": {"hidden_size": 64}}, "model.extra.hidden_size is what model.n_embd sets for gpt2"),
        ({"arch": "mistral", "extra": {"max_position_embeddings": 8}}, "is what model.context_length sets"),
        ({"arch": "qwen2", "extra": {"eos_token_id": 0}}, "model.extra.eos_token_id comes from the tokenizer"),
        ({"arch": "qwen2", "extra": {"intermediat_size": 64}}, "did you mean 'intermediate_size'?). Valid keys:"),
        ({"arch": "llama", "extra": {"rope_theta": 5e5}}, "rotary settings live in rope_parameters, e.g. model.extra"),
    ],
)
def test_bad_model_blocks_fail_when_the_recipe_loads(model, message):
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"model": model})
    assert message in str(info.value)


def test_cli_exits_2_with_the_key_named(tmp_path, corpus_file, capsys):
    recipe = tiny_recipe_dict(corpus_file)
    for model, message in [
        ({"arch": "mistrall"}, "model.arch 'mistrall' is not a transformers model_type (did you mean 'mistral'?)"),
        (
            {"n_embd": 30, "n_head": 4},
            "model.n_head 4 must divide model.n_embd 30 (each head gets n_embd / n_head dimensions). "
            "Head counts that do: 2, 3, 5.",
        ),
    ]:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**recipe, "model": {**recipe["model"], **model}}))
        assert cli_main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
        assert message in " ".join(capsys.readouterr().err.split())
        assert not (tmp_path / "run").exists()  # refused before any stage ran


def test_odd_rotary_width_is_refused():
    with pytest.raises(ConfigError, match=r"llama rotates 5 of each head's 5 dimensions \(n_embd / n_head\), an odd"):
        Recipe.from_dict({"model": {"arch": "llama", "n_embd": 20, "n_head": 4}})
    with pytest.raises(
        ConfigError, match=r"gpt_neox rotates 3 of each head's 12 dimensions \(n_embd / n_head x 0.25\)"
    ):
        Recipe.from_dict({"model": {"arch": "gpt_neox", "n_embd": 48, "n_head": 4}})


def test_context_longer_than_pretrained_positions(tmp_path, tok):
    family_config(tiny("qwen3"), tok)  # a from-scratch family takes any context: positions come from it
    build(arch="qwen3", tok=tok).save_pretrained(str(tmp_path / "qwen3"))
    with pytest.raises(ConfigError, match=r"model\.context_length 64 exceeds the 32 positions of"):
        build_model(ModelConfig(from_pretrained=str(tmp_path / "qwen3"), context_length=64), tok, seed=0)


def test_trust_remote_code_is_said_through_the_console(tmp_path, tok, capsys):
    build(arch="llama", tok=tok).save_pretrained(str(tmp_path / "m"))
    build_model(ModelConfig(from_pretrained=str(tmp_path / "m"), context_length=32), tok, seed=0)
    assert "trust_remote_code" not in capsys.readouterr().out
    build_model(
        ModelConfig(from_pretrained=str(tmp_path / "m"), context_length=32, trust_remote_code=True), tok, seed=0
    )
    assert "trust_remote_code is on" in capsys.readouterr().out


# --- document-aware packing and the fused loss, per family ---------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_a_packed_document_sees_only_itself(tok, arch):
    doc1, doc2 = [11, 12, 13, 14, EOS], [21, 22, 23, 24, 25, 26, EOS]
    for attn in ("sdpa", "eager"):
        model = build(arch, tok, attn)
        in_row, by_itself, leaky = packed_document_logits(model, doc1, doc2, EOS)
        assert torch.allclose(in_row, by_itself, atol=1e-5), attn
        assert not torch.allclose(leaky, by_itself, atol=1e-3), attn
        assert not document_leak(model, EOS)


def test_a_family_that_ignores_restarting_positions_is_caught(tok):
    """OPT's positions come from the attention mask: the model stage refuses to pack documents for it."""
    cfg = ModelConfig(arch="opt", n_layer=2, n_embd=32, n_head=4, context_length=32)
    model = build_model(cfg, tok, seed=0)
    assert document_leak(model, EOS)
    with pytest.raises(ConfigError, match=r"model\.arch 'opt' \(opt\) does not keep packed documents apart"):
        check_document_aware(model, EOS, cfg)


def _loss_and_grads(model, batch, fused: bool):
    model.zero_grad()
    if fused:
        loss = chunked_causal_lm_loss(model, batch, (batch["labels"][:, 1:] != -100).sum())
    else:  # no cache, as Trainer runs it: with one, transformers would attend across the packed documents
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _packed_batch():
    rows = [{"input_ids": [5, 6, 7, EOS, 8, 9, 10, 11, 12, EOS, 13, 14]}, {"input_ids": list(range(20, 32))}]
    return PackedCollator(EOS)(rows)


@pytest.mark.parametrize("arch", sorted(FUSED_LOSS_FAMILIES))
def test_fused_loss_equals_the_models_own(tok, arch):
    model = build(arch, tok).train()  # dropout 0: both passes see the same network
    assert fused_loss_supported(model)
    batch = _packed_batch()
    ours, our_grads = _loss_and_grads(model, batch, fused=True)
    theirs, their_grads = _loss_and_grads(model, batch, fused=False)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert our_grads.keys() == their_grads.keys()
    for name in their_grads:
        assert torch.allclose(our_grads[name], their_grads[name], atol=1e-6, rtol=1e-4), name


def test_a_scaled_head_is_not_fused(tok):
    """Cohere multiplies its logits by logit_scale: the fused loss would be wrong, and it is not used."""
    torch.manual_seed(0)
    config = CohereConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    model = AutoModelForCausalLM.from_config(config).train()
    assert not fused_loss_supported(model)
    batch = _packed_batch()
    assert _loss_and_grads(model, batch, fused=True)[0].item() != pytest.approx(
        _loss_and_grads(model, batch, fused=False)[0].item(), rel=1e-3
    )


# --- the tiny recipe, per family ----------------------------------------------------------------------


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_recipe_per_family(corpus_file, tmp_path, arch):
    """Pack, train with the fused loss, resume exactly, save plain HF, generate and evaluate: one family."""
    recipe = tiny_recipe_dict(corpus_file, max_steps=4, save_every=2, eval_every=None, log_every=1)
    recipe["model"] = {
        "arch": arch,
        "n_layer": 1,
        "n_embd": 32,
        "n_head": 2,
        "context_length": 64,
    }  # room for HellaSwag
    if FAMILIES[arch].kv_heads:
        recipe["model"]["n_kv_head"] = 1
    recipe["evaluate"] = {"perplexity": True, "benchmarks": ["hellaswag"], "data_dir": str(SAMPLES), "limit": 2}
    out = tmp_path / "run"
    Recipe.from_dict(recipe).run(out)
    final = out / "train" / "final"
    trained = _weights(AutoModelForCausalLM.from_pretrained(str(final)))

    # resume: as if killed after checkpoint-2, the rerun trains steps 3-4 again to the same weights
    shutil.rmtree(final)
    shutil.rmtree(out / "train" / "checkpoints" / "checkpoint-4")
    Recipe.from_dict(recipe).run(out)
    model = AutoModelForCausalLM.from_pretrained(str(final))  # plain HF: no llmforge needed
    resumed = _weights(model)
    assert all(torch.equal(trained[k], resumed[k]) for k in trained), arch
    assert model.config.model_type == arch

    tok = AutoTokenizer.from_pretrained(str(final))
    assert model.config.eos_token_id == tok.eos_token_id and model.config.vocab_size == len(tok)
    prompt = tok("Elizabeth said", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1] and tok.decode(generated[0]).startswith("Elizabeth said")

    info = json.loads((final / ".llmforge.json").read_text())["info"]
    logged = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert logged[-1]["loss"] < logged[0]["loss"]  # it learns
    results = json.loads((out / "eval" / "results.json").read_text())  # the evaluate stage: perplexity and lm-eval
    assert results["perplexity"]["validation"]["loss"] == pytest.approx(info["val_loss"], rel=1e-4)
    assert results["lm_eval"]["results"]["hellaswag"]["sample_len"] == 2
    assert 0.0 <= results["table"]["HellaSwag acc_norm"] <= 1.0
