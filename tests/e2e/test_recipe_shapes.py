"""Every recipe shape works, driven through the command line as a user would: `llmforge run RECIPE --out DIR`.

The shapes: pretraining only; pretraining then fine-tuning; fine-tuning only, of a GPT-2, of a Llama and of a
tokenizer that brings its own chat template (bases written here with plain transformers, not llmforge); and
streaming pretraining. Each runs without an evaluate block and with one of three: validation perplexity alone,
benchmarks (the bundled sample files) alone, and both. Tiny models, a few steps: seconds per case.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import REPO, stream_recipe_dict, tiny_recipe_dict

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "COLUMNS": "200",
}
ALPACA = REPO / "examples" / "data" / "instruct" / "alpaca.jsonl"
SAMPLES = REPO / "examples" / "data" / "benchmarks"
LIMIT = 2  # benchmark examples per task
CONTEXT = 128  # room for a HellaSwag ending: lm-eval cannot score an answer longer than the context

# A template of the base tokenizer's own (used with finetune.chat_template: tokenizer): each message appended,
# every turn ended by the tokenizer's EOS, the assistant's text marked for return_assistant_tokens_mask.
OWN_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '### ' + m['role'] + ':\\n' -}}"
    "{%- if m['role'] == 'assistant' -%}"
    "{% generation %}{{- m['content'] + eos_token -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- m['content'] + eos_token -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### assistant:\\n' -}}{%- endif -%}"
)

MMLU_ROWS = ["MMLU", "MMLU humanities", "MMLU social sciences", "MMLU STEM", "MMLU other"]
HELLASWAG_ROWS = ["HellaSwag acc", "HellaSwag acc_norm"]
PRETRAIN_PERPLEXITY = "validation perplexity"  # the pretraining validation blocks
FINETUNE_PERPLEXITY = "finetune validation perplexity"  # the fine-tune validation examples, loss-carrying tokens

# evaluate variants: (id, evaluate block or None)
EVALUATE = {
    "no-eval": None,
    "ppl": {"perplexity": True, "batch_size": 8},
    "bench": {
        "perplexity": False,
        "benchmarks": ["hellaswag"],
        "data_dir": str(SAMPLES),
        "limit": LIMIT,
        "batch_size": 8,
    },
    "ppl+bench": {
        "perplexity": True,
        "benchmarks": ["mmlu", "hellaswag"],
        "data_dir": str(SAMPLES),
        "limit": LIMIT,
        "batch_size": 8,
    },
}
SHAPES = ["pretrain", "pretrain+finetune", "finetune-gpt2", "finetune-llama", "finetune-own-template"]


def llmforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmforge.cli", *args], capture_output=True, text=True, env=ENV, timeout=600
    )


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


# --- base model dirs, written with plain transformers and tokenizers ---------------------------------------


def bpe_tokenizer(text: str, eos: str, bos: str, pad: str, vocab_size: int = 400) -> Any:
    """A byte-level BPE trained with `tokenizers` on `text`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(dict.fromkeys([eos, bos, pad])),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(paragraphs(text), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, bos_token=bos, pad_token=pad)


def save_base(path: Path, model: Any, tok: Any) -> Path:
    """Save model and tokenizer side by side, and check that plain transformers loads them back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    loaded_tok = AutoTokenizer.from_pretrained(str(path))
    loaded = AutoModelForCausalLM.from_pretrained(str(path))
    assert loaded_tok.is_fast and loaded_tok.eos_token == tok.eos_token and loaded_tok.pad_token == tok.pad_token
    assert loaded_tok.chat_template == tok.chat_template
    ids = loaded_tok("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert loaded(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
    return path


def gpt2_base(path: Path, text: str, chat_template: str | None = None) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = bpe_tokenizer(text, eos="<|endoftext|>", bos="<|endoftext|>", pad="<|pad|>")
    if chat_template is not None:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return save_base(path, GPT2LMHeadModel(config), tok)


def llama_base(path: Path, text: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer(text, eos="</s>", bos="<s>", pad="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return save_base(path, LlamaForCausalLM(config), tok)


@pytest.fixture(scope="module")
def bases(tmp_path_factory, corpus_text) -> dict[str, Path]:
    """The fine-tune-only bases, written once for the module: {shape: model dir}."""
    root = tmp_path_factory.mktemp("bases")
    return {
        "finetune-gpt2": gpt2_base(root / "gpt2", corpus_text),
        "finetune-llama": llama_base(root / "llama", corpus_text),
        "finetune-own-template": gpt2_base(root / "own-template", corpus_text, chat_template=OWN_TEMPLATE),
    }


# --- recipes --------------------------------------------------------------------------------------------


def finetune_block(**changes: Any) -> dict[str, Any]:
    block = {
        "source": "jsonl",
        "path": str(ALPACA),
        "format": "alpaca",
        "max_examples": 24,
        "val_fraction": 0.1,
        "max_steps": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "log_every": 1,
        "seed": 5,
    }
    return {**block, **changes}


def pretrain_recipe(corpus: Path) -> dict[str, Any]:
    recipe = tiny_recipe_dict(corpus, max_steps=3, eval_every=None, save_every=None)
    recipe["model"]["context_length"] = CONTEXT
    return recipe


def shape_recipe(shape: str, corpus: Path, bases: dict[str, Path]) -> dict[str, Any]:
    if shape == "pretrain":
        return {**pretrain_recipe(corpus), "name": "shape-pretrain"}
    if shape == "pretrain+finetune":
        return {**pretrain_recipe(corpus), "name": "shape-pretrain-finetune", "finetune": finetune_block()}
    block = finetune_block(base=str(bases[shape]))
    if shape == "finetune-own-template":
        block["chat_template"] = "tokenizer"  # keep the base tokenizer's own template
    return {"name": f"shape-{shape}", "finetune": block}


def run_recipe(tmp_path: Path, recipe: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "run"
    done = llmforge("run", str(path), "--out", str(out))
    assert done.returncode == 0, f"exit code {done.returncode}\n--- stderr ---\n{done.stderr[-6000:]}\n" + (
        f"--- stdout ---\n{done.stdout[-3000:]}"
    )
    return out


def assert_final_model(final: Path) -> None:
    assert (final / ".llmforge.json").is_file(), f"{final} is not a complete model dir"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()


def assert_results(out: Path, evaluate: dict[str, Any] | None, model: str, perplexity_label: str) -> dict:
    """eval/results.json holds the rows the evaluate block asks for, and no perplexity row when it is off."""
    if evaluate is None:
        assert not (out / "eval").exists()
        return {}
    path = out / "eval" / "results.json"
    assert path.is_file(), f"no {path}"
    results = json.loads(path.read_text())
    table = results["table"]
    assert results["model"] == model
    expected: list[str] = []
    if "mmlu" in evaluate.get("benchmarks", []):
        expected += MMLU_ROWS
    if "hellaswag" in evaluate.get("benchmarks", []):
        expected += HELLASWAG_ROWS
        assert results["lm_eval"]["results"]["hellaswag"]["sample_len"] == LIMIT  # evaluate.limit
    for label in expected:
        assert label in table, f"no row {label!r} in {sorted(table)}"
        assert table[label] is not None and 0.0 <= table[label] <= 1.0, (label, table[label])
    perplexity_rows = [label for label in table if "perplexity" in label]
    if evaluate["perplexity"]:
        assert perplexity_label in table, f"no row {perplexity_label!r} in {sorted(table)}"
        value = table[perplexity_label]
        assert value is not None and math.isfinite(value) and value > 1.0, (perplexity_label, value)
    else:
        assert perplexity_rows == [], f"perplexity: false, yet the table has {perplexity_rows}"
    if not evaluate.get("benchmarks"):
        assert set(table) == set(perplexity_rows), f"no benchmarks asked for, yet the table has {sorted(table)}"
    return results


# --- the matrix -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evaluate", list(EVALUATE.values()), ids=list(EVALUATE))
@pytest.mark.parametrize("shape", SHAPES)
def test_recipe_shape_runs_from_the_command_line(tmp_path, corpus_file, bases, shape, evaluate):
    recipe = shape_recipe(shape, corpus_file, bases)
    if evaluate is not None:
        recipe["evaluate"] = dict(evaluate)
    out = run_recipe(tmp_path, recipe)

    finetunes = "finetune" in recipe
    pretrains = "train" in recipe
    if pretrains:
        assert_final_model(out / "train" / "final")
    else:  # fine-tune only: no pretraining stage ran
        assert not any((out / stage).exists() for stage in ("data", "tokenizer", "model", "train"))
    if finetunes:
        assert_final_model(out / "finetune" / "final")
    model = "finetune/final" if finetunes else "train/final"
    label = PRETRAIN_PERPLEXITY if pretrains else FINETUNE_PERPLEXITY
    results = assert_results(out, evaluate, model, label)

    if shape == "finetune-own-template":  # the base tokenizer's own template is the one the model keeps
        from transformers import AutoTokenizer

        assert AutoTokenizer.from_pretrained(str(out / "finetune" / "final")).chat_template == OWN_TEMPLATE
    if results and not pretrains and evaluate["perplexity"]:
        # the perplexity of the fine-tune validation examples on their loss-carrying tokens: what the
        # fine-tune's own evaluation measured (one batch holds every validation example)
        info = json.loads((out / "finetune" / "final" / ".llmforge.json").read_text())["info"]
        assert info["validation_examples"] <= recipe["finetune"]["batch_size"]
        assert results["table"][FINETUNE_PERPLEXITY] == pytest.approx(math.exp(info["val_loss"]), rel=1e-3)


@pytest.mark.parametrize("evaluate", [v for k, v in EVALUATE.items() if v is not None], ids=list(EVALUATE)[1:])
def test_streaming_pretraining_with_evaluate(tmp_path, corpus_text, evaluate):
    recipe = stream_recipe_dict(tmp_path, paragraphs(corpus_text), max_steps=3, eval_every=None, save_every=None)
    recipe["name"] = "shape-streaming"
    recipe["model"]["context_length"] = CONTEXT
    recipe["evaluate"] = dict(evaluate)
    out = run_recipe(tmp_path, recipe)

    assert_final_model(out / "train" / "final")
    assert_results(out, evaluate, "train/final", PRETRAIN_PERPLEXITY)
