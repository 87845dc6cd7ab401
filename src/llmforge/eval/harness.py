"""Evaluation: lm-eval benchmarks and perplexity of a finished model, and the table that compares models.

`evaluate(model_or_dir, tasks=["mmlu", "hellaswag"])` asks each benchmark plugin which lm-eval tasks
to run (lm-eval's own on the hub, or the same task definitions over local files), scores them with
lm-eval's `simple_evaluate` on an `HFLM` around the model, and adds perplexity on the run's validation
blocks (prepared exactly like the training data) and on a text file. llmforge scores nothing itself.

A benchmark plugin registers a `Benchmark` (see `llmforge.plugin.hookspecs.register_benchmarks`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from llmforge import rundir
from llmforge.data.blocks import open_blocks
from llmforge.errors import ConfigError, DataError, LlmforgeError, RunDirError, first_line
from llmforge.eval.perplexity import example_perplexity, perplexity
from llmforge.models.loading import load_model_dir, max_positions
from llmforge.plugin.manager import get_plugins
from llmforge.plugin.types import Benchmark, TaskSet


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def lm_eval_tasks_dir() -> Path:
    """The folder of lm-eval's installed task YAMLs."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


# What each perplexity row is measured on, said in the table ("perplexity on ...").
ON_PRETRAINING = "the pretraining validation blocks"
ON_FINETUNE = "the fine-tune validation examples' loss-carrying tokens"


# --- evaluate -----------------------------------------------------------------------------------------


def evaluate(
    model_or_dir: Any,
    tasks: Sequence[str] = ("mmlu", "hellaswag"),
    data_dir: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    text: str | Path | None = None,
    *,
    tokenizer: Any = None,
    perplexity: bool = True,
    blocks: Any = None,
    examples: Any = None,
    document_aware: bool = True,
    workdir: str | Path | None = None,
    plugins: Any = None,
    console: Any = None,
) -> dict[str, Any]:
    """Benchmarks (through lm-eval) and perplexity of a model; returns the full results.

    `model_or_dir` is an HF model dir, an llmforge run dir (its fine-tuned model if it has one, else
    train/final), or a model object (then pass `tokenizer`). `tasks` are benchmark plugin names.
    `data_dir` holds local benchmark files (`DATA_DIR/mmlu/...`, `DATA_DIR/hellaswag/...`).
    Perplexity is computed on `blocks` (packed validation blocks), or on the run's validation blocks
    when the model dir belongs to an llmforge run, on `examples` (fine-tuning validation rows: the loss
    on their loss-carrying tokens, labelled "finetune validation perplexity"), and on the text file
    `text` when given.
    `workdir` keeps the generated lm-eval task folders (a temporary folder when None).

    The result holds `table` (label -> value: MMLU and its categories, HellaSwag acc/acc_norm,
    perplexities), `n` (label -> what the value rests on: the questions a benchmark row scored, summed
    over a group's subtasks, or the tokens a perplexity predicted), `measured_on` (perplexity label ->
    the text it was measured on), `perplexity`, `benchmarks` (where each one's data came from) and
    `lm_eval` (lm-eval's full output).
    """
    _check_args(limit, num_fewshot, batch_size)
    if text is not None and not Path(text).is_file():
        raise DataError(f"Text file '{text}' does not exist.")
    plugins = plugins or get_plugins()
    data_path = _data_dir(data_dir)
    benchmarks = {name: plugins.registries["benchmark"].get(name) for name in dict.fromkeys(tasks)}
    model_dir, run_dir = locate(model_or_dir) if isinstance(model_or_dir, (str, Path)) else (None, None)
    if blocks is None and perplexity and run_dir is not None:
        blocks, document_aware = _run_validation(run_dir)
    label = str(model_or_dir) if model_dir is not None else getattr(model_or_dir, "name_or_path", "") or "model"
    if not benchmarks and text is None and not (perplexity and (blocks is not None or examples is not None)):
        raise ConfigError(
            f"Nothing to evaluate for {label}: name benchmarks (--tasks mmlu,hellaswag), a text file (--text), "
            "or a model inside an llmforge run (for validation perplexity)."
        )
    with _workdir(workdir) as work:
        tasksets = {name: _resolve(name, b, data_path, work) for name, b in benchmarks.items()}
        model, tok = _load(model_dir, tokenizer) if model_dir is not None else _in_memory(model_or_dir, tokenizer)
        result: dict[str, Any] = {
            "model": label,
            "table": {},
            "n": {},
            "measured_on": {},
            "benchmarks": {n: {"tasks": t.tasks, "source": t.source} for n, t in tasksets.items()},
            "perplexity": {},
            "seconds": {},
        }
        if tasksets:
            started = time.perf_counter()
            if console is not None:
                for name, ts in tasksets.items():
                    console.print(f"  {name}: lm-eval {', '.join(ts.tasks)} ({ts.source})")
            output = run_lm_eval(model, tok, tasksets, benchmarks, limit, num_fewshot, batch_size)
            result["seconds"]["benchmarks"] = round(time.perf_counter() - started, 2)
            for name, bench in benchmarks.items():
                result["table"].update(benchmark_rows(bench, tasksets[name], output))
                result["n"].update(benchmark_counts(bench, tasksets[name], output))
            result["lm_eval"] = output
        started = time.perf_counter()
        measured: list[tuple[str, str, str, dict[str, Any]]] = []  # (perplexity key, table row, measured on, result)
        if perplexity and blocks is not None:
            ppl = _perplexity(model, blocks, batch_size, _eos_id(model, tok), document_aware)
            measured.append(("validation", "validation perplexity", ON_PRETRAINING, ppl))
        if perplexity and examples is not None:
            ppl = _example_perplexity(model, examples, tok, batch_size, document_aware)
            measured.append(("finetune validation", "finetune validation perplexity", ON_FINETUNE, ppl))
        if text is not None:
            ppl = text_perplexity(model, tok, text, batch_size)
            measured.append(("text", f"perplexity of {Path(text).name}", Path(text).name, ppl))
        for key, row, on, ppl in measured:
            result["perplexity"][key] = {**ppl, "measured_on": on}
            result["table"][row] = ppl["perplexity"]
            result["n"][row] = ppl["tokens"]
            result["measured_on"][row] = on
        if result["perplexity"]:
            result["seconds"]["perplexity"] = round(time.perf_counter() - started, 2)
    return result


def run_lm_eval(
    model: Any,
    tok: Any,
    tasksets: dict[str, TaskSet],
    benchmarks: dict[str, Benchmark],
    limit: int | None,
    num_fewshot: int | None,
    batch_size: int,
) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on an HFLM around the model; its output made JSON-safe."""
    import datasets
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    names = list(dict.fromkeys(t for ts in tasksets.values() for t in ts.tasks))
    paths = [str(p) for ts in tasksets.values() for p in ts.include_paths]
    with _quiet_lm_eval():
        manager = TaskManager(
            include_path=list(dict.fromkeys(paths)) or None,
            include_defaults=any(ts.builtin for ts in tasksets.values()),
        )
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            raise LlmforgeError(
                f"lm-eval knows no task named {', '.join(unknown)} (asked for by benchmark "
                f"{', '.join(b for b, ts in tasksets.items() if set(ts.tasks) & set(unknown))}). "
                "Check the plugin's task names and its include_path."
            )
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
        try:
            output = simple_evaluate(
                model=lm,
                tasks=names,
                num_fewshot=num_fewshot,
                batch_size=batch_size,
                limit=limit,
                task_manager=manager,
                log_samples=False,
            )
        except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
            hints = " ".join(b.data_help for b in benchmarks.values() if b.data_help)
            raise DataError(f"lm-eval could not load a benchmark's data: {first_line(exc)}. {hints}".strip()) from exc
        except AssertionError as exc:
            if _raised_in(exc, "_loglikelihood_tokens"):
                raise LlmforgeError(
                    f"An answer of a benchmark is longer than the model's context ({lm.max_length} tokens), so "
                    "lm-eval cannot score it. Evaluate a model with a longer context_length."
                ) from exc
            raise
    return json.loads(json.dumps(output, default=handle_non_serializable))


def benchmark_rows(bench: Benchmark, taskset: TaskSet, output: dict[str, Any]) -> dict[str, float | None]:
    """The benchmark's table rows, read from lm-eval's results (None where a row has no result)."""
    results = _lm_eval_results(output)
    table = {}
    for label, task, metric in _rows(bench, taskset, results):
        key = metric if "," in metric else f"{metric},none"
        value = results.get(task, {}).get(key)
        table[label] = float(value) if isinstance(value, (int, float)) else None
    return table


def benchmark_counts(bench: Benchmark, taskset: TaskSet, output: dict[str, Any]) -> dict[str, int | None]:
    """How many questions each of the benchmark's rows rests on (a group's: its subtasks' summed; None
    where a row has no result)."""
    results = _lm_eval_results(output)
    values = benchmark_rows(bench, taskset, output)
    return {
        label: sample_count(task, output) if values.get(label) is not None else None
        for label, task, _ in _rows(bench, taskset, results)
    }


def sample_count(task: str, output: dict[str, Any], seen: frozenset[str] = frozenset()) -> int | None:
    """The examples lm-eval scored for a task (after --limit), or for a group the sum over its subtasks."""
    counts = output.get("n-samples", {})
    if isinstance(counts.get(task), dict) and isinstance(counts[task].get("effective"), int):
        return counts[task]["effective"]
    subtasks = [t for t in output.get("group_subtasks", {}).get(task, []) if t not in seen and t != task]
    parts = [sample_count(t, output, seen | {task}) for t in subtasks]
    if any(p is not None for p in parts):
        return sum(p for p in parts if p is not None)
    length = _lm_eval_results(output).get(task, {}).get("sample_len")
    return length if isinstance(length, int) else None


def _lm_eval_results(output: dict[str, Any]) -> dict[str, Any]:
    return {**output.get("results", {}), **output.get("groups", {})}


def _rows(bench: Benchmark, taskset: TaskSet, results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, task, metric) of each row: the plugin's, else every metric of each of its tasks."""
    return list(bench.rows) or [
        (f"{task} {key.split(',')[0]}", task, key)
        for task in taskset.tasks
        for key, value in results.get(task, {}).items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    ]


# --- perplexity -----------------------------------------------------------------------------------------


def text_perplexity(model: Any, tok: Any, path: str | Path, batch_size: int = 8) -> dict[str, Any]:
    """Loss and perplexity on a text file, read as one document (its tokens then EOS, as in training),
    in consecutive windows of the model's context length (the last one may be shorter)."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"Text file '{path}' does not exist.") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"'{path}' is not valid UTF-8 (byte {exc.start}). Convert it to UTF-8.") from exc
    ids = list(tok(content, add_special_tokens=False, verbose=False)["input_ids"])
    eos = _eos_id(model, tok)
    if eos is not None:
        ids.append(eos)
    if len(ids) < 2:
        raise DataError(f"'{path}' holds too little text to measure perplexity (fewer than 2 tokens).")
    T = context_length(model, tok)
    full = len(ids) // T
    parts = [[{"input_ids": ids[i * T : (i + 1) * T]} for i in range(full)]]
    if len(ids) - full * T >= 2:
        parts.append([{"input_ids": ids[full * T :]}])
    total = count = 0.0
    for rows in parts:
        if rows:
            ppl = _perplexity(model, rows, batch_size, eos, document_aware=True)
            total += ppl["loss"] * ppl["tokens"]
            count += ppl["tokens"]
    loss = total / count
    return {"file": str(path), "loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": int(count)}


def context_length(model: Any, tok: Any) -> int:
    """The model's positions, else the tokenizer's model_max_length, else 1024."""
    positions = max_positions(getattr(model, "config", None))
    if positions is not None:
        return positions
    value = getattr(tok, "model_max_length", None)
    return value if isinstance(value, int) and 1 < value < 1_000_000 else 1024


def _perplexity(model: Any, blocks: Any, batch_size: int, eos_id: int | None, document_aware: bool) -> dict:
    return perplexity(model, blocks, batch_size=batch_size, eos_id=eos_id, document_aware=document_aware)


def _example_perplexity(model: Any, examples: Any, tok: Any, batch_size: int, document_aware: bool) -> dict:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return example_perplexity(model, examples, pad, tok.eos_token_id, batch_size, document_aware)


def _eos_id(model: Any, tok: Any) -> int | None:
    eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos if eos is not None else getattr(tok, "eos_token_id", None)


# --- models and run directories ------------------------------------------------------------------------


def locate(path: str | Path) -> tuple[Path, Path | None]:
    """(model dir, run dir or None): a run dir means its latest finished model (finetune/final if
    complete, else train/final); a model dir inside a run (train/final, model/, a checkpoint) keeps
    its run, whose validation blocks then give the perplexity."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"'{p}' does not exist. Pass an HF model dir or an llmforge run dir.")
    if rundir.is_run(p):
        latest = rundir.latest_model(p)
        if latest is None:
            raise RunDirError(
                f"{p} is an llmforge run without a finished model (finetune/final or train/final). "
                "Run the recipe first."
            )
        return latest, p
    if p.name in rundir.MODEL_STAGES and rundir.is_run(p.parent) and (p / "final").is_dir():
        return p / "final", p.parent
    return p, next((a for a in list(p.resolve().parents)[:3] if rundir.is_run(a)), None)


def _load(model_dir: Path, tokenizer: Any) -> tuple[Any, Any]:
    """The model (on the GPU when there is one) and its tokenizer, loaded once."""
    import torch

    model, tok = load_model_dir(model_dir)
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer if tokenizer is not None else tok


def _in_memory(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if tokenizer is None:
        raise ConfigError("evaluate() of a model object needs its tokenizer: evaluate(model, tokenizer=tok, ...).")
    model.eval()
    return model, tokenizer


def _run_validation(run_dir: Path) -> tuple[Any, bool]:
    """The run's packed validation blocks and whether training was document-aware (None if absent)."""
    blocks_dir = run_dir / "data" / "blocks"
    if not rundir.is_complete(blocks_dir):
        return None, True
    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        recipe = {}
    document_aware = bool((recipe.get("train") or {}).get("document_aware", True))
    return open_blocks(blocks_dir)["validation"], document_aware  # built here, or a token store's shards


# --- results: the table, results.json, results.md ------------------------------------------------------


def table_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table: what each row is, what it rests on (n: questions, or the
    tokens a perplexity predicted), one column per model, a difference column for two."""
    labels = list(dict.fromkeys(label for r in results for label in r["table"]))
    header = ["metric", "n", *column_names([r["model"] for r in results])]
    if len(results) == 2:
        header.append("difference")
    rows = []
    for label in labels:
        values = [r["table"].get(label) for r in results]
        row = [row_name(label, results), row_count(label, results), *(_fmt(label, v) for v in values)]
        if len(results) == 2:
            a, b = values
            row.append(_fmt(label, b - a, signed=True) if a is not None and b is not None else "-")
        rows.append(row)
    return header, rows


def row_name(label: str, results: list[dict[str, Any]]) -> str:
    """A perplexity row says what it is measured on; a benchmark row is its label."""
    on = next((r["measured_on"][label] for r in results if label in r.get("measured_on", {})), None)
    return f"perplexity on {on}" if on else label


def row_count(label: str, results: list[dict[str, Any]]) -> str:
    """The n of a row: one number when every model's rests on the same count, else each model's."""
    counts = [r.get("n", {}).get(label) for r in results]
    if all(c is None for c in counts):
        return "-"
    unit = " tokens" if any(label in r.get("measured_on", {}) for r in results) else ""
    if len(set(counts)) == 1:
        return f"{counts[0]:,}{unit}"
    return " / ".join("-" if c is None else f"{c:,}" for c in counts) + unit


def column_names(models: list[str]) -> list[str]:
    """Model names without the folder they share (runs/x/train/final, runs/x/finetune/final -> train/final, ...)."""
    if len(models) < 2 or len(set(models)) < len(models):
        return models
    try:
        common = os.path.commonpath(models)
    except ValueError:  # absolute and relative paths mixed
        return models
    if not common or common in models:
        return models
    return [os.path.relpath(m, common) for m in models]


def rich_table(results: list[dict[str, Any]], title: str = "llmforge eval") -> Any:
    from rich.table import Table

    header, rows = table_rows(results)
    models = [r["model"] for r in results]
    shared = os.path.commonpath(models) if column_names(models) != models else None
    table = Table(title=title, caption=f"models in {shared}" if shared else None)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def markdown(results: list[dict[str, Any]], include_path: Path | None = None) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [
        f"- {name}: lm-eval {', '.join(info['tasks'])} over {info['source']}"
        for r in results
        for name, info in r.get("benchmarks", {}).items()
    ]
    models = [r["model"] for r in results]
    if column_names(models) != models:
        notes.insert(0, f"- models in {os.path.commonpath(models)}")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(dict.fromkeys(notes)) + "\n"
    if include_path is not None and any(r.get("benchmarks") for r in results):
        tasks = ",".join(dict.fromkeys(t for r in results for b in r["benchmarks"].values() for t in b["tasks"]))
        text += (
            f"\nThe same scores from lm-eval alone: `lm_eval --model hf --model_args pretrained=MODEL_DIR "
            f"--include_path {include_path} --tasks {tasks}`\n"
        )
    return text


def write_results(out: str | Path, results: list[dict[str, Any]], include_path: Path | None = None) -> None:
    """results.json (everything, one entry per model) and results.md (the table), written atomically."""
    out = Path(out)
    rundir.write_json(out / "results.json", results[0] if len(results) == 1 else {"models": results})
    rundir.write_text(out / "results.md", markdown(results, include_path))


def _fmt(label: str, value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    digits = 2 if "perplexity" in label else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


# --- helpers ----------------------------------------------------------------------------------------------


def _check_args(limit: int | None, num_fewshot: int | None, batch_size: int) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1 (examples per task), got {limit}.")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be 0 or more, got {num_fewshot}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")


def _data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(
            f"Benchmark data dir '{path}' does not exist. It holds one folder per benchmark "
            "(mmlu/, hellaswag/); see examples/data/benchmarks for the layout."
        )
    return path.resolve()


def _resolve(name: str, bench: Any, data_dir: Path | None, workdir: Path) -> TaskSet:
    taskset = bench.resolve(data_dir, workdir)
    if not isinstance(taskset, TaskSet) or not taskset.tasks:
        raise LlmforgeError(f"Benchmark '{name}' resolved to no lm-eval task; its plugin must return a TaskSet.")
    return taskset


@contextlib.contextmanager
def _workdir(workdir: str | Path | None) -> Iterator[Path]:
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="llmforge-eval-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval inside llmforge's output: errors only, no progress bars, no git error.

    lm-eval logs every task override and a warning for in-memory models, and transformers warns about
    prompts that lm-eval truncates on purpose: both keep errors only. lm-eval draws tqdm bars (one per
    task while it builds the prompts, then per request kind) that would land inside rich's output: its
    modules get a tqdm that draws nothing. It records the git commit of the working directory by running
    `git describe`, whose "fatal: not a git repository" goes straight to the terminal outside a checkout:
    the same commit is read with git's error captured. All of it is undone on the way out.
    """
    import lm_eval.evaluator
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("lm_eval")
    level, hf_level = logger.level, hf_logging.get_verbosity()
    logger.setLevel(max(level, logging.ERROR))
    hf_logging.set_verbosity(max(hf_level, hf_logging.ERROR))
    swaps: list[tuple[Any, str, Any]] = [(module, "tqdm", _silent_tqdm) for module in _lm_eval_modules_with_tqdm()]
    if hasattr(lm_eval.evaluator, "get_git_commit_hash"):
        swaps.append((lm_eval.evaluator, "get_git_commit_hash", _git_commit_quietly))
    originals = [getattr(module, name) for module, name, _ in swaps]
    for module, name, replacement in swaps:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for (module, name, _), original in zip(swaps, originals, strict=True):
            setattr(module, name, original)
        logger.setLevel(level)
        hf_logging.set_verbosity(hf_level)


def _lm_eval_modules_with_tqdm() -> list[Any]:
    """lm-eval's loaded modules that draw progress with a module-level `tqdm` (task, model, metrics)."""
    import tqdm

    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "lm_eval" or name.startswith("lm_eval."))
        and isinstance(getattr(module, "tqdm", None), type)
        and issubclass(module.tqdm, tqdm.tqdm)
    ]


def _silent_tqdm(*args: Any, **kwargs: Any) -> Any:
    """tqdm as lm-eval calls it, counting but drawing nothing (whatever `disable` the caller passed)."""
    import tqdm

    return tqdm.tqdm(*args, **{**kwargs, "disable": True})


def _git_commit_quietly() -> str | None:
    """What lm-eval records as `git_hash`: `git describe --always` in the working directory, its error
    captured; else the commit read from a .git folder there, as lm-eval does without git; else None."""
    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is not None and done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    try:
        from lm_eval.loggers.utils import get_commit_from_path

        return get_commit_from_path(os.getcwd())
    except Exception:  # a folder that is not a checkout, or an lm-eval without the helper
        return None


def _raised_in(exc: BaseException, function: str) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == function
