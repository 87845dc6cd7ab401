"""The finetune stage end to end: through a recipe, alone on any model dir, from the CLI; resume, early
stopping, packing, length policies, show-example and the bad inputs it must explain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import llmforge
from chat_helpers import INSTRUCT, registry, tiny_base, tiny_tokenizer, write_jsonl
from conftest import tiny_recipe_dict
from llmforge import Recipe, Run
from llmforge.chat.conversations import install_template
from llmforge.chat.examples import build_examples, summary_lines
from llmforge.cli import main
from llmforge.config.schema import FinetuneConfig
from llmforge.data.batches import ExampleCollator, document_leak
from llmforge.errors import ConfigError
from llmforge.models.loading import load_model_dir as load
from llmforge.plugin.manager import get_plugins
from llmforge.tools.generate import chat
from llmforge.tools.show_example import show_example

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
QUIET = Console(file=open(os.devnull, "w"), width=120)  # noqa: SIM115 - lives as long as the tests
ALPACA = INSTRUCT / "alpaca.jsonl"


def finetune_block(**changes) -> dict:
    block = {
        "path": str(ALPACA),
        "format": "alpaca",
        "max_examples": 48,
        "max_steps": 6,
        "batch_size": 8,
        "lr": 3e-3,
        "eval_every": 3,
        "save_every": 3,
        "log_every": 1,
        "seed": 5,
    }
    return {**block, **changes}


def metric_steps(out: Path, stage: str) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r.get("stage") == stage and "loss" in r]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_text) -> Path:
    return tiny_base(tmp_path_factory.mktemp("finetune") / "base", corpus_text, width=64, positions=128)


# --- through a recipe ----------------------------------------------------------------------------


def test_recipe_pretrains_then_finetunes_resumes_exactly_and_skips_when_done(tmp_path, corpus_file, capsys):
    mapping = tiny_recipe_dict(corpus_file)
    mapping["model"]["context_length"] = 96
    mapping["finetune"] = finetune_block(neftune_alpha=5.0)
    recipe = Recipe.from_dict(mapping)
    out = tmp_path / "run"
    run = recipe.run(out)
    final = out / "finetune" / "final"
    for artefact in ("train/final", "finetune/data", "finetune/final"):
        assert (out / artefact / ".llmforge.json").is_file(), artefact
    info = json.loads((final / ".llmforge.json").read_text())["info"]
    assert info["steps"] == 6 and info["base"] == str((out / "train" / "final").resolve())
    assert info["end_of_turn"] == "<|im_end|>" and 0 < info["loss_share"] < 0.5
    assert metric_steps(out, "finetune") == [1, 2, 3, 4, 5, 6]
    assert run.model_dir == final
    printed = capsys.readouterr().out
    assert "48 rows -> 48 examples (43 train, 5 validation)" in printed
    assert "loss on" in printed and "mask 'assistant_only'" in printed

    # the dir works with plain transformers: its tokenizer formats chats, generation stops at <|im_end|>
    tok = AutoTokenizer.from_pretrained(final)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    generator = pipeline("text-generation", model=str(final))
    assert generator.model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    assert isinstance(generator(prompt, max_new_tokens=4, do_sample=False)[0]["generated_text"], str)
    assert isinstance(run.generate("Who wrote Persuasion?", chat=True, max_new_tokens=4, seed=0), str)

    # unchanged: nothing reruns
    recipe.run(out)
    assert capsys.readouterr().out.count("up to date") == 6  # data, tokenizer, blocks, model, train, finetune

    # interrupted after checkpoint-3 (its later checkpoint and the final dir gone): resumes, same weights
    reference = load_file(final / "model.safetensors")
    shutil.rmtree(final)
    shutil.rmtree(out / "finetune" / "checkpoints" / "checkpoint-6")
    recipe.run(out)
    assert "resuming from checkpoint-3 (step 3)" in capsys.readouterr().out
    resumed = load_file(final / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert metric_steps(out, "finetune") == [1, 2, 3, 4, 5, 6]  # no step repeated or skipped


def write_finetune_only(tmp_path: Path, base: Path, **changes) -> Path:
    """A recipe with only a finetune block, its base and data given relative to the recipe file."""
    (tmp_path / "models").mkdir(exist_ok=True)
    if not (tmp_path / "models" / "base").exists():
        shutil.copytree(base, tmp_path / "models" / "base")
    data = tmp_path / "data" / "qa.jsonl"
    if not data.exists():
        data.parent.mkdir(exist_ok=True)
        shutil.copy(ALPACA, data)
    block = finetune_block(**{"base": "models/base", "path": "data/qa.jsonl", **changes})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "chat", "finetune": block}))
    return path


def test_a_family_without_sdpa_fine_tunes_with_its_eager_attention(tmp_path, corpus_text, capsys):
    """Gemma 2 (soft-capped logits, sliding windows) has no SDPA kernel in transformers: eager, said once."""
    base = tiny_base(tmp_path / "gemma2", corpus_text, arch="gemma2", positions=128)
    recipe = write_finetune_only(
        tmp_path, base, max_examples=24, max_steps=2, eval_every=None, save_every=None, packing=True, max_length=128
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "gemma2 has no SDPA attention in transformers: its eager attention runs instead" in printed
    model = AutoModelForCausalLM.from_pretrained(out / "finetune" / "final")  # plain transformers
    assert model.config.model_type == "gemma2" and model.config.final_logit_softcapping == 30.0
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert logits.abs().max() <= 30.0  # the soft cap holds after fine-tuning
    assert not document_leak(model.train(), model.config.eos_token_id)  # packed examples stay apart in eager


def test_finetune_only_recipe_trains_a_model_that_stops_at_its_end_of_turn(tmp_path, base, capsys):
    recipe = write_finetune_only(
        tmp_path,
        base,
        max_examples=64,
        max_steps=120,
        batch_size=16,
        lr=4e-3,
        eval_every=None,
        save_every=None,
        log_every=40,
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "finetune" in printed and "data " not in printed and "train " not in printed
    assert not any((out / stage).exists() for stage in ("data", "tokenizer", "model", "train"))  # finetune only
    final = out / "finetune" / "final"
    model, tok = load(final)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    rows = [json.loads(line) for line in ALPACA.read_text().splitlines()[:64]]
    for row in rows[:6]:
        reply = chat(model, tok, row["instruction"], max_new_tokens=24, greedy=True)
        assert reply.stopped and reply.tokens < 24, (row, reply)  # it learnt to end its turn
        assert "<|im_end|>" not in reply.text
    message = [{"role": "user", "content": rows[0]["instruction"]}]
    ids = tok.apply_chat_template(message, add_generation_prompt=True, return_dict=True)["input_ids"]
    generated = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids) :].tolist()
    assert generated[-1] == im_end and im_end not in generated[:-1]

    # the real command line, in its own process
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "llmforge.cli", "generate", str(final), rows[1]["instruction"], "--chat", "--greedy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "no end-of-turn token" not in done.stderr
    assert "<|im_start|>" not in done.stdout and "user" not in done.stdout


def test_python_entry_point_fine_tunes_any_model_dir(tmp_path, base):
    run = llmforge.finetune(base, finetune_block(chat_template="minimal", max_steps=2), tmp_path / "run", QUIET)
    assert isinstance(run, Run) and run.model_dir == tmp_path / "run" / "finetune" / "final"
    tok = AutoTokenizer.from_pretrained(run.model_dir)
    assert len(tok) == 400  # minimal adds no token
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False).startswith(
        "<|endoftext|>user\n"
    )
    assert not (tmp_path / "run" / "train").exists()


# --- early stopping, packing, lengths ------------------------------------------------------------


def test_early_stopping_keeps_the_best_checkpoint_with_packing_and_neftune(tmp_path, base):
    cfg = finetune_block(
        max_examples=None, max_steps=60, eval_every=2, save_every=None, early_stopping=1, lr=3e-2, packing=True
    )
    cfg["neftune_alpha"] = 5.0
    cfg["divergence_factor"] = None  # a loud learning rate on purpose: validation loss must rise
    out = tmp_path / "run"
    llmforge.finetune(base, cfg, out, QUIET)
    info = json.loads((out / "finetune" / "final" / ".llmforge.json").read_text())["info"]
    evals = {
        r["step"]: r["eval_loss"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "eval_loss" in r
    }
    assert info["stopped_early"] and info["steps"] < 60
    assert info["best_step"] == min(evals, key=evals.get)
    assert info["val_loss"] == pytest.approx(min(evals.values()))
    best = out / "finetune" / "checkpoints" / f"checkpoint-{info['best_step']}"
    assert (best / ".llmforge.json").is_file()  # kept through rotation
    a, b = load_file(best / "model.safetensors"), load_file(out / "finetune" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the final model is the best one
    stats = json.loads((out / "finetune" / "data" / ".llmforge.json").read_text())["info"]
    assert stats["train"]["rows"] < stats["train"]["examples"]  # packed


@pytest.fixture(scope="module")
def chatml_tok(corpus_text):
    tok = tiny_tokenizer(corpus_text)
    return tok, install_template(tok, "chatml", registry("chat_template").get("chatml"))


def examples(tok_installed, limit: int, **cfg):
    tok, installed = tok_installed
    config = FinetuneConfig(**{**finetune_block(), **cfg})
    return build_examples(config, tok, installed, get_plugins(), limit, QUIET)


def test_length_policies_filter_or_truncate_and_count(chatml_tok):
    _, full = examples(chatml_tok, 128)
    assert full["length"]["filtered"] == 0
    longest = full["length"]["longest"]
    splits, stats = examples(chatml_tok, longest - 4)
    assert stats["length"]["filtered"] > 0 and stats["examples"] == 48 - stats["length"]["filtered"]
    splits, stats = examples(chatml_tok, longest - 4, length_policy="truncate")
    assert stats["length"]["truncated"] > 0 and stats["examples"] == 48
    assert max(len(r) for split in splits.values() for r in split["input_ids"]) == longest - 4


def test_packing_keeps_masks_and_positions_per_example(chatml_tok):
    plain, _ = examples(chatml_tok, 128)
    packed, stats = examples(chatml_tok, 128, packing=True)
    assert stats["train"]["rows"] < stats["train"]["examples"] == len(plain["train"])
    by_row = {
        r[0]: (ids, labels)
        for r, ids, labels in zip(*(plain["train"][c] for c in ("rows", "input_ids", "labels")), strict=True)
    }
    for row in packed["train"]:
        assert len(row["input_ids"]) <= 128
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert len(starts) == len(row["rows"])
        ends = starts[1:] + [len(row["input_ids"])]
        for source, start, end in zip(row["rows"], starts, ends, strict=True):
            assert row["position_ids"][start:end] == list(range(end - start))
            assert (row["input_ids"][start:end], row["labels"][start:end]) == by_row[source]  # mask unchanged
            assert row["labels"][start] == -100  # no example is trained to follow the previous one

    collate = ExampleCollator(pad_id=1, fill_id=0)
    batch = collate([packed["train"][0], packed["train"][-1]])
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask: per-example attention
    single = collate([plain["train"][0], plain["train"][1]])
    assert set(single) == {"input_ids", "labels", "attention_mask"}
    pad = single["attention_mask"] == 0
    assert torch.all(single["labels"][pad] == -100) and torch.all(single["input_ids"][pad] == 1)


# --- show-example --------------------------------------------------------------------------------


def test_show_example_highlights_the_tokens_that_carry_loss(tmp_path, base):
    recipe = Recipe.from_yaml(write_finetune_only(tmp_path, base))
    console = Console(record=True, width=100, force_terminal=True, color_system="truecolor")
    example = show_example(recipe, 2, console)
    text = console.export_text(clear=False, styles=False)
    assert "row 3 of" in text and "(--index 2)" in text and "loss mask 'assistant_only'" in text
    assert f"{len(example.input_ids)} tokens, {example.loss_tokens} carry loss" in text
    assert "<|im_start|>assistant↵" in text and "In Pride and Prejudice.<|im_end|>" in text
    styled = console.export_text(styles=True)
    assert "\x1b[2m" in styled  # the prompt is dimmed
    trained = "".join(example.rendered.text[s:e] for (s, e), k in zip(example.offsets, example.loss, strict=True) if k)
    assert trained == "In Pride and Prejudice.<|im_end|>"


def test_show_example_cli_and_its_errors(tmp_path, base, capsys):
    recipe = write_finetune_only(tmp_path, base)
    assert main(["show-example", str(recipe), "--index", "0"]) == 0
    assert "carry loss" in capsys.readouterr().out
    assert main(["show-example", str(recipe), "--index", "222"]) == 2
    assert "--index 222 is out of range" in capsys.readouterr().err


# --- bad input: one clear error, nothing half-written ---------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "dolly"}, r"Row 1 of '.*qa.jsonl' does not match format 'dolly': it has no field 'response'"),
        (
            {"chat_template": "chatlm"},
            r"finetune.chat_template: no chat template named 'chatlm' \(did you mean 'chatml'\?\). Known: chatml",
        ),
        (
            {"max_length": 20, "length_policy": "error"},
            r"Row 1 of .* renders to \d+ tokens, more than finetune.max_length 20",
        ),
        (
            {"lora": {"target_modules": ["q_proj"]}},
            r"\['q_proj'\] name\(s\) no module .* c_attn, c_fc, c_proj, lm_head",
        ),
        (
            {"loss_mask": "completion_only", "format": "messages", "path": str(INSTRUCT / "chat.jsonl")},
            "needs one prompt",
        ),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, base, capsys, changes, message):
    recipe = write_finetune_only(tmp_path, base, **changes)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmforge error:") and "Traceback" not in err
    assert __import__("re").search(message, " ".join(err.split())), err
    assert not (out / "finetune").exists()


def test_a_finetune_only_recipe_needs_a_base():
    with pytest.raises(ConfigError, match="has a finetune block and no pretraining blocks: set finetune.base"):
        Recipe.from_dict({"name": "x", "finetune": {"path": "qa.jsonl"}})
    recipe = Recipe.from_dict({"name": "x", "finetune": {"path": "qa.jsonl", "base": "models/base"}})
    assert (recipe.data, recipe.tokenizer, recipe.model, recipe.train) == (None, None, None, None)
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe  # the run dir's recipe.yaml reads back


def test_the_stage_reports_the_rows_it_drops(tmp_path, chatml_tok):
    rows = [json.loads(line) for line in ALPACA.read_text().splitlines()[:10]]
    rows += [{"instruction": "Q?", "output": ""}, {"instruction": " ", "output": "A."}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    _, stats = examples(chatml_tok, 128, path=str(path), max_examples=None)
    lines = summary_lines(stats, FinetuneConfig())
    assert lines[0].startswith("12 rows -> 10 examples (9 train, 1 validation)")
    assert "dropped 2 row(s) with empty turn: rows 11, 12" in lines
    assert stats["dropped"]["by_kind"] == {"empty turn": 2}
