"""The Python API end to end on a tiny model: stages, skipping, the run directory, Run methods."""

import json
import math

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from conftest import tiny_recipe_dict
from llmforge import Recipe, Run
from llmforge.errors import ConfigError, RunDirError


def test_tiny_recipe_runs_end_to_end(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    run = tiny_recipe.run(out)
    assert isinstance(run, Run)
    for artefact in ("data/documents", "data/blocks", "tokenizer", "model", "train/final"):
        assert (out / artefact / ".llmforge.json").is_file(), artefact
    stats = json.loads((out / "data" / "stats.json").read_text())
    blocks = stats["blocks"]
    assert blocks["train"]["blocks"] == blocks["train"]["tokens"] // 32
    assert blocks["train"]["dropped_tokens"] == blocks["train"]["tokens"] % 32
    assert stats["documents"]["train"]["documents"] > stats["documents"]["validation"]["documents"] > 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["model"]["n_embd"] == 32

    # the finished model is a plain HF dir with the tokenizer's special ids
    model = AutoModelForCausalLM.from_pretrained(out / "train" / "final")
    tok = AutoTokenizer.from_pretrained(out / "train" / "final")
    assert model.config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    text = pipeline("text-generation", model=str(out / "train" / "final"))("Elizabeth", max_new_tokens=5)
    assert text[0]["generated_text"].startswith("Elizabeth")

    # metrics: one line per logged step, steps 1..6 once each
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if "loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_second"] > 0 for r in rows if "loss" in r and r["step"] > 1)

    # perplexity recomputed from the saved model equals the Trainer's validation loss
    final = json.loads((out / "train" / "final" / ".llmforge.json").read_text())["info"]
    ppl = run.perplexity()
    assert ppl["loss"] == pytest.approx(final["val_loss"], rel=1e-4)
    assert ppl["perplexity"] == pytest.approx(math.exp(final["val_loss"]), rel=1e-4)
    assert final["val_loss"] < math.log(400)  # better than uniform over the 400-token vocabulary

    sample = run.generate("Mr. Darcy", max_new_tokens=8, seed=1)
    assert isinstance(sample, str) and sample
    greedy = [run.generate("Mr. Darcy", max_new_tokens=8, greedy=True) for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_rerun_skips_finished_stages_and_reruns_changed_ones(tiny_recipe, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_recipe.run(out)
    tokenizer_mtime = (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    capsys.readouterr()
    tiny_recipe.run(out)
    printed = capsys.readouterr().out
    assert printed.count("up to date") == 5  # data, tokenizer, blocks, model, train
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tokenizer_mtime

    # a train-only change reruns only train, resuming from the complete checkpoint at step 6
    tiny_recipe.train.max_steps = 9
    tiny_recipe.run(out)
    printed = capsys.readouterr().out
    assert printed.count("up to date") == 4
    assert "training train on from checkpoint-6 (step 6) to step 9: max_steps 6 -> 9" in printed
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tokenizer_mtime
    steps = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    assert steps == list(range(1, 10))


def test_out_dir_of_another_recipe_is_refused(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("name: something-else\n")
    with pytest.raises(RunDirError, match="something-else"):
        tiny_recipe.run(out)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "recipe.yaml"]
    assert (out / "recipe.yaml").read_text() == "name: something-else\n"


def test_only_needs_earlier_stages(tiny_recipe, tmp_path):
    with pytest.raises(RunDirError, match="Run the whole recipe first"):
        tiny_recipe.run(tmp_path / "run", only="train")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        tiny_recipe.run(tmp_path / "run", only="trian")


def test_context_length_beyond_corpus_is_a_clear_error(corpus_file, tmp_path):
    recipe = Recipe.from_dict(tiny_recipe_dict(corpus_file))
    recipe.model.context_length = 100_000
    with pytest.raises(Exception, match="context_length"):
        recipe.run(tmp_path / "run")
    assert not (tmp_path / "run" / "data" / "blocks").exists()


@pytest.mark.parametrize(
    ("block", "key", "value", "expected"),
    [
        ("data", "source", "parquett", "data.source: no data source named 'parquett' (did you mean 'parquet'?)"),
        ("finetune", "chat_template", "chatm", "finetune.chat_template: no chat template named 'chatm' (did you mean"),
        ("finetune", "loss_mask", "assistant", "finetune.loss_mask: no loss mask named 'assistant'"),
        ("finetune", "source", "jsnl", "finetune.source: no data source named 'jsnl' (did you mean 'jsonl'?)"),
        ("evaluate", "benchmarks", ["mmlu", "hellaswg"], "evaluate.benchmarks: no benchmark named 'hellaswg'"),
    ],
)
def test_every_plugin_name_is_checked_when_the_recipe_loads(corpus_file, block, key, value, expected):
    mapping = tiny_recipe_dict(corpus_file)
    mapping.setdefault(block, {})
    mapping["finetune"] = mapping.get("finetune") or {"path": str(corpus_file)}
    mapping[block][key] = value
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict(mapping)
    assert expected in str(info.value) and "`llmforge plugins` shows what is installed" in str(info.value)
