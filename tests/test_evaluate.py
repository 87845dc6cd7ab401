"""Evaluation: lm-eval scores equal the lm_eval command line's, offline data rules, perplexity, the stage."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lm_eval.tasks
import pytest
import torch
import yaml
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CORPUS, REPO, tiny_recipe_dict
from llmforge import Recipe, evaluate
from llmforge.errors import ConfigError, DataError, PluginError
from llmforge.eval.harness import TaskSet, table_rows
from llmforge.models.loading import max_positions
from llmforge.plugin.manager import get_plugins

SAMPLES = REPO / "examples" / "data" / "benchmarks"
LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def eval_recipe(root: Path, **evaluate_block) -> dict:
    """The tiny test recipe with room for a benchmark prompt (lm-eval needs the answer to fit)."""
    corpus = root / "corpus" / "book.txt"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text((CORPUS / "pride_and_prejudice.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    recipe = tiny_recipe_dict(corpus, max_steps=4, eval_every=None, save_every=None)
    recipe["model"]["context_length"] = 128
    if evaluate_block:
        recipe["evaluate"] = evaluate_block
    return recipe


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    Recipe.from_dict(eval_recipe(root)).run(root / "run", console=Console(quiet=True))
    return root / "run"


def handwritten_include(folder: Path) -> Path:
    """lm-eval task YAMLs written by hand the way STACK.md found to work: include the installed task
    file, override only the dataset. Independent of llmforge_bench's generated ones."""
    folder.mkdir()
    for subject in sorted((SAMPLES / "mmlu").iterdir()):
        files = {split: str(subject / f"{split}.jsonl") for split in ("test", "dev")}
        config = {
            "include": str(LM_EVAL_TASKS / "mmlu" / "default" / f"mmlu_{subject.name}.yaml"),
            "task": f"mmlu_{subject.name}",
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
        }
        (folder / f"mmlu_{subject.name}.yaml").write_text(yaml.safe_dump(config))
    files = {split: str(SAMPLES / "hellaswag" / f"{split}.jsonl") for split in ("train", "validation")}
    config = {
        "include": str(LM_EVAL_TASKS / "hellaswag" / "hellaswag.yaml"),
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
    }
    (folder / "hellaswag.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_scores_equal_the_lm_eval_command_line(run_dir, tmp_path):
    model_dir = run_dir / "train" / "final"
    ours = evaluate(model_dir, tasks=["mmlu", "hellaswag"], data_dir=SAMPLES, num_fewshot=1, batch_size=8)

    done = subprocess.run(
        [
            *[sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir}"],
            *["--include_path", str(handwritten_include(tmp_path / "include")), "--tasks", "mmlu,hellaswag"],
            *["--num_fewshot", "1", "--batch_size", "8", "--output_path", str(tmp_path / "lm_eval")],
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())["results"]

    table = ours["table"]
    assert table["MMLU"] == theirs["mmlu"]["acc,none"]
    assert table["MMLU humanities"] == theirs["mmlu_humanities"]["acc,none"]
    assert table["MMLU social sciences"] == theirs["mmlu_social_sciences"]["acc,none"]
    assert table["MMLU STEM"] == theirs["mmlu_stem"]["acc,none"]
    assert table["MMLU other"] == theirs["mmlu_other"]["acc,none"]
    assert table["HellaSwag acc"] == theirs["hellaswag"]["acc,none"]
    assert table["HellaSwag acc_norm"] == theirs["hellaswag"]["acc_norm,none"]
    # every subject and group, every metric, and the number of scored examples
    assert (
        set(ours["lm_eval"]["results"])
        == set(theirs)
        == {
            "mmlu",
            "mmlu_humanities",
            "mmlu_social_sciences",
            "mmlu_stem",
            "mmlu_other",
            *(f"mmlu_{s.name}" for s in (SAMPLES / "mmlu").iterdir()),
            "hellaswag",
        }
    )
    for task, metrics in theirs.items():
        for key, value in metrics.items():
            if key.startswith(("acc,", "acc_norm,", "sample_len")):
                assert ours["lm_eval"]["results"][task][key] == value, (task, key)
            elif "_stderr," in key:  # a group's pooled stderr sums its subjects in another order: last-bit noise
                assert ours["lm_eval"]["results"][task][key] == pytest.approx(value, rel=1e-12), (task, key)
    assert ours["lm_eval"]["results"]["hellaswag"]["sample_len"] == 30
    # each row's n: the questions it rests on (a group's, summed over its subjects), as lm-eval counts them
    rows = {"MMLU": "mmlu", "MMLU humanities": "mmlu_humanities", "MMLU social sciences": "mmlu_social_sciences"}
    rows.update({"MMLU STEM": "mmlu_stem", "MMLU other": "mmlu_other", "HellaSwag acc": "hellaswag"})
    for row, task in rows.items():
        assert ours["n"][row] == theirs[task]["sample_len"], row
    assert ours["n"]["HellaSwag acc_norm"] == 30
    assert ours["n"]["MMLU"] == sum(ours["n"][f"MMLU {c}"] for c in ("humanities", "social sciences", "STEM", "other"))
    assert ours["lm_eval"]["n-shot"]["mmlu_astronomy"] == 1
    # a model inside a run also gets the validation perplexity, computed as in training
    trained = json.loads((model_dir / ".llmforge.json").read_text())["info"]
    assert ours["perplexity"]["validation"]["loss"] == pytest.approx(trained["val_loss"], rel=1e-4)
    assert table["validation perplexity"] == pytest.approx(math.exp(trained["val_loss"]), rel=1e-4)
    assert ours["n"]["validation perplexity"] == ours["perplexity"]["validation"]["tokens"]
    assert ours["measured_on"] == {"validation perplexity": "the pretraining validation blocks"}
    assert ours["benchmarks"]["mmlu"]["source"] == f"local files in {SAMPLES / 'mmlu'}"


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """Offline, with a Hugging Face cache that holds nothing."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return tmp_path


def test_offline_without_data_is_one_clear_error(run_dir, empty_hf_cache):
    with pytest.raises(DataError) as err:
        evaluate(run_dir, tasks=["mmlu"])
    message = str(err.value)
    assert "offline" in message and "cais/mmlu" in message and "no --data-dir" in message
    assert "DATA_DIR/mmlu/" in message and "SUBJECT/test.jsonl" in message and "SUBJECT/dev.jsonl" in message
    assert "question, subject, choices[4], answer" in message and "--data-dir DATA_DIR" in message
    assert "\n" not in message

    data_dir = empty_hf_cache / "benchmarks"
    (data_dir / "mmlu").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        evaluate(run_dir, tasks=["hellaswag"], data_dir=data_dir)
    message = str(err.value)
    assert f"{data_dir / 'hellaswag'} does not exist" in message
    assert "validation.jsonl" in message and "train.jsonl" in message and "DATA_DIR/hellaswag/" in message


def test_offline_with_a_cached_dataset_runs_lm_evals_own_task(empty_hf_cache):
    (empty_hf_cache / "hub" / "datasets--Rowan--hellaswag").mkdir(parents=True)
    bench = get_plugins().registries["benchmark"].get("hellaswag")
    taskset = bench.resolve(None, empty_hf_cache / "work")
    assert taskset == TaskSet(["hellaswag"], [LM_EVAL_TASKS / "hellaswag"], False, "Rowan/hellaswag from the HF cache")


def test_local_files_with_a_mistake_are_named(run_dir, tmp_path):
    subject = tmp_path / "data" / "mmlu" / "astronomy"
    subject.mkdir(parents=True)
    (subject / "test.jsonl").write_text((SAMPLES / "mmlu" / "astronomy" / "test.jsonl").read_text())
    with pytest.raises(DataError, match=r"astronomy has no dev\.jsonl"):
        evaluate(run_dir, tasks=["mmlu"], data_dir=tmp_path / "data")

    (subject / "dev.jsonl").write_text('{"question": "q", "options": ["a", "b", "c", "d"], "answer": 0}\n')
    (subject / "test.jsonl").write_text('{"question": "q", "options": ["a", "b", "c", "d"], "answer": 0}\n')
    with pytest.raises(DataError, match=r"test\.jsonl has no choices field \(it has answer, options, question\)"):
        evaluate(run_dir, tasks=["mmlu"], data_dir=tmp_path / "data")

    subject.rename(subject.parent / "astronomyy")
    with pytest.raises(DataError, match="is not an MMLU subject \\(did you mean 'astronomy'\\?\\)"):
        evaluate(run_dir, tasks=["mmlu"], data_dir=tmp_path / "data")

    with pytest.raises(PluginError, match="No benchmark named 'helaswag'. Known \\(closest first\\): hellaswag"):
        evaluate(run_dir, tasks=["helaswag"])
    with pytest.raises(DataError, match="does not exist"):
        evaluate(run_dir, tasks=["mmlu"], data_dir=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="Nothing to evaluate"):
        evaluate(run_dir, tasks=[], perplexity=False)


def test_partial_mmlu_and_ctx_only_hellaswag(run_dir, tmp_path):
    """Local MMLU with one category scores that category only (the others are absent, not fetched);
    HellaSwag rows with only `ctx` give the same scores as the same rows with ctx_a and ctx_b."""
    data = tmp_path / "data"
    (data / "mmlu").mkdir(parents=True)
    (data / "mmlu" / "astronomy").symlink_to(SAMPLES / "mmlu" / "astronomy")
    (data / "hellaswag").mkdir()
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (SAMPLES / "hellaswag" / f"{split}.jsonl").read_text().splitlines()]
        with open(data / "hellaswag" / f"{split}.jsonl", "w") as fh:
            for row in rows:
                ctx = f"{row.pop('ctx_a')} {row.pop('ctx_b').capitalize()}"
                fh.write(json.dumps({**row, "ctx": ctx}) + "\n")
    partial = evaluate(run_dir, tasks=["mmlu", "hellaswag"], data_dir=data, perplexity=False)
    full = evaluate(run_dir, tasks=["mmlu", "hellaswag"], data_dir=SAMPLES, perplexity=False)

    assert (
        partial["table"]["MMLU"]
        == partial["table"]["MMLU STEM"]
        == full["lm_eval"]["results"]["mmlu_astronomy"]["acc,none"]
    )
    assert partial["table"]["MMLU humanities"] is None and partial["table"]["MMLU other"] is None
    assert partial["table"]["HellaSwag acc"] == full["table"]["HellaSwag acc"]
    assert partial["table"]["HellaSwag acc_norm"] == full["table"]["HellaSwag acc_norm"]
    assert "validation perplexity" not in partial["table"]
    astronomy = len((SAMPLES / "mmlu" / "astronomy" / "test.jsonl").read_text().splitlines())
    assert partial["n"]["MMLU"] == partial["n"]["MMLU STEM"] == astronomy  # the one subject's questions
    assert full["n"]["MMLU STEM"] > astronomy
    assert partial["n"]["MMLU humanities"] is None  # no result, no count


def test_text_perplexity_equals_an_independent_computation(run_dir, tmp_path):
    text = (CORPUS / "persuasion.txt").read_text(encoding="utf-8")[:4000]
    path = tmp_path / "sample.txt"
    path.write_text(text, encoding="utf-8")
    result = evaluate(run_dir / "train" / "final", tasks=[], text=path, perplexity=False)

    model_dir = run_dir / "train" / "final"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    T = max_positions(model.config)
    assert len(ids) > 3 * T  # several windows and a shorter last one
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), T):
            window = torch.tensor([ids[start : start + T]])
            logits = model(window).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
    ppl = result["perplexity"]["text"]
    assert ppl["tokens"] == count
    assert ppl["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert result["table"] == {"perplexity of sample.txt": pytest.approx(math.exp(nll / count), rel=1e-5)}
    assert result["n"] == {"perplexity of sample.txt": count}


def test_each_perplexity_says_what_it_is_measured_on(run_dir, tmp_path):
    """Pretraining validation blocks, fine-tune examples' loss-carrying tokens, a text file: three rows
    that say which, with the tokens each rests on."""
    model_dir = run_dir / "train" / "final"
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("It is a truth universally acknowledged, that a single man", add_special_tokens=False)["input_ids"]
    examples = [{"input_ids": ids, "labels": [-100] * 4 + ids[4:]}]  # a prompt of 4 tokens, then the answer
    text = tmp_path / "letters.txt"
    text.write_text((CORPUS / "persuasion.txt").read_text(encoding="utf-8")[:1500], encoding="utf-8")
    result = evaluate(model_dir, tasks=[], examples=examples, text=text)

    assert result["measured_on"] == {
        "validation perplexity": "the pretraining validation blocks",
        "finetune validation perplexity": "the fine-tune validation examples' loss-carrying tokens",
        "perplexity of letters.txt": "letters.txt",
    }
    assert result["n"]["finetune validation perplexity"] == len(ids) - 4  # the answer's tokens only
    assert result["n"]["validation perplexity"] == result["perplexity"]["validation"]["tokens"] > 0
    assert (
        result["perplexity"]["finetune validation"]["measured_on"]
        == result["measured_on"]["finetune validation perplexity"]
    )
    header, rows = table_rows([result])
    assert header == ["metric", "n", str(model_dir)]
    assert [row[:2] for row in rows] == [
        ["perplexity on the pretraining validation blocks", f"{result['n']['validation perplexity']:,} tokens"],
        ["perplexity on the fine-tune validation examples' loss-carrying tokens", f"{len(ids) - 4} tokens"],
        ["perplexity on letters.txt", f"{result['n']['perplexity of letters.txt']:,} tokens"],
    ]


def test_comparison_rows_have_n_and_a_difference_column():
    on = {"validation perplexity": "the pretraining validation blocks"}
    base = {
        "model": "base",
        "table": {"MMLU": 0.25, "MMLU STEM": None, "MMLU social sciences": 0.5, "validation perplexity": 300.0},
        "n": {"MMLU": 30, "MMLU STEM": None, "MMLU social sciences": 7, "validation perplexity": 26924},
        "measured_on": on,
    }
    tuned = {
        "model": "tuned",
        "table": {"MMLU": 0.3125, "MMLU STEM": 0.5, "MMLU social sciences": 0.25, "validation perplexity": 250.5},
        "n": {"MMLU": 30, "MMLU STEM": 12, "MMLU social sciences": 8, "validation perplexity": 26924},
        "measured_on": on,
    }
    header, rows = table_rows([base, tuned])
    assert header == ["metric", "n", "base", "tuned", "difference"]
    assert rows == [
        ["MMLU", "30", "0.2500", "0.3125", "+0.0625"],
        ["MMLU STEM", "- / 12", "-", "0.5000", "-"],
        ["MMLU social sciences", "7 / 8", "0.5000", "0.2500", "-0.2500"],  # each model's count where they differ
        ["perplexity on the pretraining validation blocks", "26,924 tokens", "300.00", "250.50", "-49.50"],
    ]
    header, rows = table_rows([base])
    assert header == ["metric", "n", "base"] and rows[0] == ["MMLU", "30", "0.2500"]
    # results written before rows carried n (or by hand) still make a table
    header, rows = table_rows([{"model": "old", "table": {"validation perplexity": 300.0}}])
    assert rows == [["validation perplexity", "-", "300.00"]]


def test_evaluate_stage_scores_the_in_memory_model_and_writes_results(tmp_path, monkeypatch, capsys):
    import llmforge.stages.evaluate

    recipe = Recipe.from_dict(
        eval_recipe(tmp_path, benchmarks=["mmlu", "hellaswag"], data_dir=str(SAMPLES), limit=3, batch_size=4)
    )
    out = tmp_path / "run"

    def no_reload(*args, **kwargs):
        raise AssertionError("the evaluate stage reloaded the model it had in memory")

    monkeypatch.setattr(llmforge.stages.evaluate, "load_model_dir", no_reload)
    recipe.run(out)
    monkeypatch.undo()
    printed = capsys.readouterr().out
    assert "evaluation of train/final" in printed and "HellaSwag acc_norm" in printed

    results = json.loads((out / "eval" / "results.json").read_text())
    assert (out / "eval" / ".llmforge.json").is_file()
    table = results["table"]
    assert list(table) == [
        "MMLU",
        "MMLU humanities",
        "MMLU social sciences",
        "MMLU STEM",
        "MMLU other",
        "HellaSwag acc",
        "HellaSwag acc_norm",
        "validation perplexity",
    ]
    assert all(0.0 <= table[k] <= 1.0 for k in list(table)[:-1])
    assert results["lm_eval"]["results"]["hellaswag"]["sample_len"] == 3  # evaluate.limit
    assert results["lm_eval"]["results"]["mmlu"]["sample_len"] == 3 * 6  # 3 per subject, 6 subjects
    assert results["n"]["MMLU"] == 18 and results["n"]["HellaSwag acc_norm"] == 3  # results.json carries n
    assert results["n"]["validation perplexity"] == results["perplexity"]["validation"]["tokens"]
    assert "perplexity on the pretraining validation blocks" in printed
    trained = json.loads((out / "train" / "final" / ".llmforge.json").read_text())["info"]
    assert results["perplexity"]["validation"]["loss"] == pytest.approx(trained["val_loss"], rel=1e-4)
    markdown = (out / "eval" / "results.md").read_text()
    assert "| MMLU social sciences | 3 |" in markdown and f"--include_path {out / 'eval' / 'tasks'}" in markdown
    assert (out / "eval" / "tasks" / "mmlu" / "mmlu_astronomy.yaml").is_file()

    # a rerun skips it; --only evaluate loads the saved model once and gets the same numbers
    recipe.run(out)
    assert capsys.readouterr().out.count("up to date") == 6
    recipe.run(out, only="evaluate")
    again = json.loads((out / "eval" / "results.json").read_text())
    assert again["table"] == table

    recipe.evaluate.model = "finetune"
    with pytest.raises(ConfigError, match="no finetune stage"):
        recipe.run(out)


def test_the_run_summary_says_what_its_perplexity_is_measured_on():
    from llmforge.stages.evaluate import describe

    out = {
        "model": "finetune/final",
        "table": {"MMLU": 0.25, "finetune validation perplexity": 44.5},
        "measured_on": {"finetune validation perplexity": "the fine-tune validation examples' loss-carrying tokens"},
    }
    assert describe(out) == (
        "finetune/final: MMLU 0.250, perplexity on the fine-tune validation examples' loss-carrying tokens 44.50"
    )


def test_a_fine_tune_is_evaluated_beside_the_model_it_started_from(tmp_path, corpus_text):
    """The evaluate stage of a finetune recipe scores the base too: one table, base | finetune/final |
    difference, and the base's score is the untouched base's (with the template's rows drawn as training
    drew them)."""
    from rich.console import Console

    from chat_helpers import INSTRUCT, tiny_base

    base = tiny_base(tmp_path / "base", corpus_text)
    finetune = {"base": str(base), "path": str(INSTRUCT / "alpaca.jsonl"), "max_examples": 40, "max_steps": 6}
    finetune.update(batch_size=8, lr=1e-2, log_every=3)
    console = Console(record=True, width=200)
    out = tmp_path / "run"
    Recipe.from_dict({"finetune": finetune, "evaluate": {"perplexity": True}}).run(out, console=console)
    result = json.loads((out / "eval" / "results.json").read_text())
    label = "finetune validation perplexity"
    after, before = result["table"][label], result["base"]["table"][label]
    assert before > after  # six steps on the answers lower their perplexity
    assert result["base"]["model_dir"] == str(base.resolve())
    table = (out / "eval" / "results.md").read_text()
    assert table.splitlines()[0] == "| metric | n | base | finetune/final | difference |"
    assert f"{after - before:+.2f}" in table
    printed = console.export_text()
    assert "the base too, for the table" in printed and "difference" in printed
    Recipe.from_dict({"finetune": finetune, "evaluate": {"perplexity": True, "base": False}}).run(out, console=console)
    assert "base" not in json.loads((out / "eval" / "results.json").read_text())  # and the stage reran for it
