"""LoRA through peft (llmforge/models/lora.py): targets, new-token rows, merge, adapters saved beside their base."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from peft import PeftModel
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import llmforge
from chat_helpers import INSTRUCT, tiny_base
from llmforge.config.schema import FinetuneConfig, LoraConfig
from llmforge.errors import ConfigError
from llmforge.models.loading import load_model_dir as load
from llmforge.models.lora import apply_lora, parameter_counts, target_modules

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def gpt2(vocab: int = 300) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=1, n_head=2))


def llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


def test_the_default_targets_every_linear_layer_but_the_head():
    assert target_modules(gpt2(), LoraConfig()) == "all-linear"
    assert target_modules(gpt2(), LoraConfig(target_modules=["c_fc"])) == ["c_fc"]
    for model, expected in [
        (gpt2(), {"c_attn", "c_proj", "c_fc"}),  # Conv1D, transposed: peft is told fan_in_fan_out
        (llama(False), {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ]:
        adapted = apply_lora(model, LoraConfig(r=2))
        wrapped = {name.rsplit(".", 1)[-1] for name, m in adapted.named_modules() if hasattr(m, "lora_A")}
        assert wrapped == expected  # and never lm_head, tied or not


def test_trainable_parameters_are_the_adapters():
    model = apply_lora(gpt2(), LoraConfig(r=4))
    trainable, total = parameter_counts(model)
    # r * (in + out) per adapted matrix: c_attn 32->96, attn.c_proj 32->32, c_fc 32->128, mlp.c_proj 128->32
    assert trainable == 4 * (32 + 96) + 4 * (32 + 32) + 4 * (32 + 128) + 4 * (128 + 32) == 2048
    assert total == sum(p.numel() for p in gpt2().parameters()) + trainable


def test_dora_and_rslora_are_peft_switches():
    plain = apply_lora(llama(True), LoraConfig(r=4, alpha=8))
    both = apply_lora(llama(True), LoraConfig(r=4, alpha=8, dora=True, rslora=True))
    config = both.peft_config["default"]
    assert config.use_dora and config.use_rslora and not plain.peft_config["default"].use_dora
    q = both.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 2)  # alpha / sqrt(r), not alpha / r
    assert "default" in q.lora_magnitude_vector  # DoRA's magnitude per output row
    assert parameter_counts(both)[0] == parameter_counts(plain)[0] + sum(
        m.out_features
        for name, m in llama(True).named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name
    )


def test_an_empty_target_list_is_an_error():
    with pytest.raises(ConfigError, match="target_modules is empty: leave it out"):
        apply_lora(gpt2(), LoraConfig(target_modules=[]))


def test_missing_target_module_lists_the_models_modules():
    with pytest.raises(ConfigError) as info:
        apply_lora(gpt2(), LoraConfig(target_modules=["q_proj", "c_attn"]))
    msg = str(info.value)
    assert "finetune.lora.target_modules ['q_proj'] name(s) no module of this gpt2 model." in msg
    assert "Its modules that LoRA can adapt: c_attn, c_fc, c_proj, lm_head, wpe, wte." in msg


def test_merge_gives_a_plain_model_with_the_same_outputs(tmp_path):
    model = apply_lora(gpt2(), LoraConfig(r=4, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter
    ids = torch.randint(0, 300, (1, 10))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        assert type(merged) is GPT2LMHeadModel
        merged.save_pretrained(tmp_path)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_new_token_rows_train_and_old_rows_stay(tied):
    base = llama(tied)
    base.resize_token_embeddings(302, mean_resizing=False)
    before_in = base.get_input_embeddings().weight.detach().clone()
    before_out = base.get_output_embeddings().weight.detach().clone()
    model = apply_lora(base, LoraConfig(r=4), new_token_ids=[300, 301])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[1, 2, 300, 301, 3]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    merged = model.merge_and_unload()
    after_in, after_out = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert torch.equal(after_in[:300], before_in[:300])
    assert not torch.allclose(after_in[300:], before_in[300:])
    assert torch.equal(after_out[:300], before_out[:300])
    assert not torch.allclose(after_out[300:], before_out[300:])  # the model can learn to write them


# --- through the finetune stage ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_text):
    return tiny_base(tmp_path_factory.mktemp("lora") / "base", corpus_text)


def finetune_config(lora: dict | None = None, **train) -> FinetuneConfig:
    keys = {"max_examples": 40, "max_steps": 4, "batch_size": 8, "lr": 1e-2, "log_every": 2, **train}
    return FinetuneConfig(path=str(INSTRUCT / "alpaca.jsonl"), lora=LoraConfig(r=4, alpha=8, **(lora or {})), **keys)


def finetune(base, out, **lora):
    cfg = finetune_config(lora)
    console = Console(record=True, width=200)
    llmforge.finetune(base, cfg, out, console=console)
    return console.export_text()


def test_gradient_checkpointing_recomputes_the_blocks_and_trains_the_same(base, tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    calls = []
    original = modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    logs = []
    for on in (False, True):
        cfg = finetune_config({"dropout": 0.0}, max_steps=3, log_every=1, gradient_checkpointing=on)
        run = llmforge.finetune(base, cfg, tmp_path / f"run-{on}", console=Console(quiet=True))
        logs.append([r for r in run.metrics() if "loss" in r])
        assert bool(calls) is on  # the block (one layer) ran through torch's checkpoint only when asked
    for a, b in zip(*logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(
            b["grad_norm"], rel=1e-4
        )


def test_finetune_with_lora_merged_writes_a_plain_dir(base, tmp_path):
    printed = finetune(base, tmp_path / "run")
    assert "training 2,112 of" in printed and "LoRA r=4 on c_attn, c_fc, c_proj + 2 new token rows" in printed
    final = tmp_path / "run" / "finetune" / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.get_input_embeddings().num_embeddings == len(tok) == 402
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]


def test_finetune_with_lora_not_merged_saves_the_adapter_naming_its_base(base, tmp_path):
    finetune(base, tmp_path / "run", merge=False)
    final = tmp_path / "run" / "finetune" / "final"
    assert not (final / "config.json").exists()
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base.resolve())
    ids = torch.tensor([[5, 6, 400, 401, 7]])
    model, tok = load(final)  # llmforge: base + resized rows + adapter
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    # the same with peft alone, as docs/finetuning.md tells a user
    plain = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"])
    plain.resize_token_embeddings(len(AutoTokenizer.from_pretrained(final)))
    plain = PeftModel.from_pretrained(plain, final).eval()
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, ours, atol=1e-5)
    assert model.generation_config.eos_token_id == [401, tok.eos_token_id]


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory, corpus_text):
    """4-bit layers quantize blocks of 64 inputs: a base at least that wide."""
    return tiny_base(tmp_path_factory.mktemp("qlora") / "base", corpus_text, width=64)


def test_qlora_trains_adapters_on_a_4bit_base_and_merges_them_in_full_precision(wide_base, tmp_path):
    base = wide_base
    printed = finetune(base, tmp_path / "merged", quantize="nf4")
    assert "LoRA r=4 on c_attn, c_fc, c_proj of a nf4 4-bit base + 2 new token rows" in printed
    assert "merging the adapters into the base loaded again in full precision" in printed
    final = tmp_path / "merged" / "finetune" / "final"
    assert "quantization_config" not in json.loads((final / "config.json").read_text())  # a plain dir
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    # the same training saving only its adapter: base in full precision + adapter gives the merged model
    finetune(base, tmp_path / "adapter", quantize="nf4", merge=False)
    unmerged, _ = load(tmp_path / "adapter" / "finetune" / "final")
    original = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        out = merged(input_ids=ids).logits
        assert torch.allclose(out, unmerged(input_ids=ids).logits, atol=1e-4)
        assert not torch.allclose(out[..., :400], original(input_ids=ids).logits, atol=1e-3)  # it learnt


def test_qlora_without_bitsandbytes_says_what_is_needed(monkeypatch):
    import sys

    from llmforge.models.lora import quantization

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match=r"finetune.lora.quantize needs bitsandbytes \(pip install"):
        quantization(LoraConfig(quantize="nf4"), torch.float32, torch.device("cpu"))
    assert quantization(LoraConfig(), torch.float32, torch.device("cpu")) == {}


def test_an_adapter_of_a_pinned_hub_base_keeps_the_pin(tmp_path):
    from llmforge.models.lora import load_adapter_model

    model = apply_lora(gpt2(), LoraConfig(r=2), base="openai-community/gpt2@e7da7f2")
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["revision"] == "e7da7f2" and "@" not in str(saved["base_model_name_or_path"])
    saved["base_model_name_or_path"] = "openai-community/gpt2"  # as a hub base names itself
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(saved))
    with pytest.raises(
        ConfigError, match=r"'openai-community/gpt2@e7da7f2' is not a local directory.*--revision e7da7f2"
    ):
        load_adapter_model(tmp_path / "adapter", None)


def test_lora_in_bf16_keeps_the_frozen_base_in_bf16_and_merges_into_it_in_full_precision(base, tmp_path):
    cfg = finetune_config({"dropout": 0.0}, precision="bf16")
    console = Console(record=True, width=200)
    llmforge.finetune(base, cfg, tmp_path / "merged", console=console)
    printed = console.export_text()
    assert "frozen weights kept in bf16" in printed and "merging the adapters into the base loaded again" in printed
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "finetune" / "final").eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    adapter = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, merge=False))
    llmforge.finetune(base, adapter, tmp_path / "adapter", console=Console(quiet=True))
    unmerged, _ = load(tmp_path / "adapter" / "finetune" / "final")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, atol=1e-5)


def test_bitsandbytes_optional_cpu_kernel_warning_is_not_printed(caplog):
    import logging

    import llmforge  # noqa: F401  (installs the filter)

    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "offline")
        ops.warning("a real bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["a real bitsandbytes warning"]
