"""The bad-input suite: each case ends in one LlmforgeError naming the culprit and the fix, exit code 2
at the command line, no traceback, and no artefact in the run dir changed or half-written."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import tiny_recipe_dict
from llmforge.cli import main

ARTEFACTS = ("data/documents", "data/blocks", "tokenizer", "model", "train/final")


@dataclass
class Case:
    id: str
    prepare: Callable[[Path, dict], list[str]]  # (tmp dir, recipe mapping) -> CLI argv
    expect: tuple[str, ...]  # substrings of the one-line error


def _recipe_file(tmp: Path, mapping: dict) -> str:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def _run(tmp: Path, mapping: dict, *extra: str) -> list[str]:
    return ["run", _recipe_file(tmp, mapping), "--out", str(tmp / "run"), *extra]


def _with(section: str, **values):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        mapping[section].update(values)
        return _run(tmp, mapping)

    return prepare


def _data_file(name: str, content: bytes | str, **data):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        mapping["data"] = {"path": str(path), "val_fraction": 0.1, **data}
        return _run(tmp, mapping)

    return prepare


def _parquet(columns: dict, **data):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), tmp / "d.parquet")
        mapping["data"] = {"source": "parquet", "path": str(tmp / "d.parquet"), **data}
        return _run(tmp, mapping)

    return prepare


def _raw_recipe(text: str | bytes):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        (tmp / "recipe.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", str(tmp / "recipe.yaml"), "--out", str(tmp / "run")]

    return prepare


def _data_file_as_recipe(name: str, content: bytes | str):
    """A data file given to `llmforge run` where the recipe goes (a path relative to the test's cwd)."""

    def prepare(tmp: Path, mapping: dict) -> list[str]:
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["run", name, "--out", str(tmp / "run")]

    return prepare


def _parquet_as_recipe(tmp: Path, mapping: dict) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), tmp / "mydata.parquet")
    return ["run", "mydata.parquet", "--out", str(tmp / "run")]


def _plugin(source: str):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        name = f"bad_plugin_{abs(hash(source)) % 10**8}"  # one module name per case: plugins load once
        (tmp / f"{name}.py").write_text(textwrap.dedent(source))
        mapping["plugins"] = [name]
        return _run(tmp, mapping)

    return prepare


def _dir_without_text(tmp: Path, mapping: dict) -> list[str]:
    (tmp / "d").mkdir()
    (tmp / "d" / "x.csv").write_text("a")
    mapping["data"]["path"] = str(tmp / "d")
    return _run(tmp, mapping)


def _symlink_loop(tmp: Path, mapping: dict) -> list[str]:
    (tmp / "loop_a").symlink_to(tmp / "loop_b")
    (tmp / "loop_b").symlink_to(tmp / "loop_a")
    mapping["data"]["path"] = str(tmp / "loop_a")
    return _run(tmp, mapping)


def _model_dir(damage: str):
    """A saved tiny model dir, damaged, given to `llmforge generate`."""

    def prepare(tmp: Path, mapping: dict) -> list[str]:
        from transformers import GPT2Config, GPT2LMHeadModel

        d = tmp / "model"
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=16)).save_pretrained(d)
        weights = d / "model.safetensors"
        if damage == "truncated":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
        elif damage == "no-config":
            (d / "config.json").unlink()
        elif damage == "bad-config":
            (d / "config.json").write_text("{ not json")
        return ["generate", str(d), "hello"]

    return prepare


def _tokenizer_dir(damage: str):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        d = tmp / "tok"
        d.mkdir()
        if damage == "truncated":
            (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "voc')
            (d / "tokenizer_config.json").write_text("{}")
        mapping["tokenizer"] = {"train": False, "path": str(d)}
        return _run(tmp, mapping)

    return prepare


def _out_dir(kind: str):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        out = tmp / "run"
        if kind == "file":
            out.write_text("not a dir")
        elif kind == "other-files":
            out.mkdir()
            (out / "notes.txt").write_text("mine")
        elif kind == "other-recipe":
            out.mkdir()
            (out / "recipe.yaml").write_text("name: another-run\n")
        return _run(tmp, mapping)

    return prepare


def _args(*argv: str):
    def prepare(tmp: Path, mapping: dict) -> list[str]:
        return [a.replace("{recipe}", _recipe_file(tmp, mapping)).replace("{out}", str(tmp / "run")) for a in argv]

    return prepare


CASES = [
    # recipe files and values
    Case(
        "recipe-missing",
        lambda t, m: ["run", str(t / "nope.yaml"), "--out", str(t / "run")],
        ("nope.yaml", "does not exist"),
    ),
    Case("recipe-not-yaml", _raw_recipe("data: [unclosed\n"), ("not valid YAML",)),
    Case("recipe-is-a-list", _raw_recipe("- data\n- train\n"), ("must be a YAML mapping", "not a list")),
    Case(
        "recipe-not-utf8",
        _raw_recipe(b"name: caf\xe9\n"),
        ("Cannot read recipe file", "recipe.yaml"),
    ),
    Case(
        "parquet-file-as-recipe",
        _parquet_as_recipe,
        (
            "'mydata.parquet' is a data file, not a recipe: a recipe is a YAML file like",
            "{data: {source: parquet, path: mydata.parquet}",
        ),
    ),
    Case(
        "csv-file-as-recipe",
        _data_file_as_recipe("rows.csv", "text,label\nhello,1\n"),
        ("'rows.csv' is a data file, not a recipe", "{data: {source: csv, path: rows.csv}"),
    ),
    Case(
        "jsonl-file-as-recipe",
        _data_file_as_recipe("rows.jsonl", '{"text": "a"}\n{"text": "b"}\n'),
        ("'rows.jsonl' is a data file, not a recipe", "{data: {source: jsonl, path: rows.jsonl}"),
    ),
    Case(
        "one-line-jsonl-file-as-recipe",
        _data_file_as_recipe("one.jsonl", '{"text": "a"}\n'),
        ("'one.jsonl' is a data file, not a recipe", "{data: {source: jsonl, path: one.jsonl}"),
    ),
    Case(
        "text-file-as-recipe",
        _data_file_as_recipe("book.txt", "It is a truth universally acknowledged.\n"),
        ("'book.txt' is a data file, not a recipe", "{data: {source: text, path: book.txt}"),
    ),
    Case(
        "binary-file-as-recipe",
        _data_file_as_recipe("shard.arrow", b"\xff\xff\xff\xff\x00ARROW1\x00\x00\x81\x9c"),
        ("'shard.arrow' is a data file, not a recipe", "path: shard.arrow", "llmforge plugins"),
    ),
    Case("top-level-typo", lambda t, m: _run(t, {**m, "trian": {}}), ("'trian'", "did you mean 'train'")),
    Case("stage-key-typo", _with("train", lrr=0.1), ("train.lrr", "did you mean 'lr'")),
    Case("wrong-type-int", _with("train", max_steps="ten"), ("train.max_steps", "an integer", "'ten'")),
    Case("wrong-type-bool", _with("data", streaming="yes"), ("data.streaming", "true or false")),
    Case("wrong-literal", _with("train", schedule="cosin"), ("train.schedule", "'cosine'")),
    Case("negative-lr", _with("train", lr=-1.0), ("train.lr must be positive",)),
    Case("zero-batch", _with("train", batch_size=0), ("train.batch_size must be at least 1",)),
    Case("val-fraction-out-of-range", _with("data", val_fraction=1.5), ("data.val_fraction", "between 0 and 1")),
    Case("n-head-does-not-divide", _with("model", n_head=5), ("model.n_head 5", "model.n_embd 32")),
    Case("unknown-arch", _with("model", arch="gtp2"), ("model.arch 'gtp2'", "did you mean 'gpt2'")),
    Case("dropout-out-of-range", _with("model", dropout=1.5), ("model.dropout",)),
    Case("vocab-too-small", _with("tokenizer", vocab_size=100), ("tokenizer.vocab_size 100", "256 byte")),
    Case("eos-not-special", _with("tokenizer", eos_token="</s>"), ("tokenizer.eos_token", "special_tokens")),
    Case(
        "early-stopping-without-eval",
        _with("train", early_stopping=2, eval_every=None),
        ("early_stopping needs train.eval_every",),
    ),
    Case("fp16-on-cpu", _with("train", precision="fp16"), ("fp16 needs a CUDA GPU",)),
    # command-line arguments
    Case(
        "set-without-equals",
        _args("run", "{recipe}", "--out", "{out}", "--set", "train.max_steps"),
        ("--set", "stage.key=value") if False else ("Override 'train.max_steps'", "stage.key=value"),
    ),
    Case("set-bad-yaml", _args("run", "{recipe}", "--out", "{out}", "--set", "train.lr=[1"), ("not valid YAML",)),
    Case(
        "only-unknown-stage",
        _args("run", "{recipe}", "--out", "{out}", "--only", "trian"),
        ("--only 'trian'", "did you mean 'train'"),
    ),
    Case(
        "only-before-earlier-stages",
        _args("run", "{recipe}", "--out", "{out}", "--only", "train"),
        ("needs the 'data' stage", "Run the whole recipe first"),
    ),
    # data files
    Case(
        "data-path-missing",
        _with("data", path="/nonexistent/corpus.txt"),
        ("/nonexistent/corpus.txt", "does not exist"),
    ),
    Case("empty-file", _data_file("empty.txt", b""), ("empty.txt", "no non-empty document")),
    Case("whitespace-file", _data_file("blank.txt", "  \n\n \t\n"), ("blank.txt", "no non-empty document")),
    Case(
        "dir-without-text-files",
        _dir_without_text,
        ("holds no", ".txt"),
    ),
    Case("glob-matches-nothing", _with("data", path="/tmp/llmforge-none-*/*.txt"), ("matches no file",)),
    Case(
        "non-utf8",
        _data_file("latin.txt", "caf\xe9 noir\n\nsecond".encode("latin-1")),
        ("latin.txt", "byte 3", "data.encoding"),
    ),
    Case(
        "binary-file",
        _data_file("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"),
        ("image.txt", "not valid utf-8"),
    ),
    Case("unknown-encoding", _data_file("ok.txt", "fine text", encoding="utf-99"), ("utf-99", "not a known")),
    Case(
        "jsonl-truncated-line",
        _data_file("d.jsonl", '{"text": "a"}\n{"text": "b', source="jsonl"),
        ("d.jsonl", "line 2", "not valid JSON"),
    ),
    Case(
        "jsonl-huge-truncated-line",
        _data_file("h.jsonl", '{"text": "' + "x" * 2_000_000, source="jsonl"),
        ("h.jsonl", "line 1"),
    ),
    Case(
        "jsonl-source-on-a-csv-file",
        _data_file("rows.csv", "text,label\nhello,1\n", source="jsonl"),
        ("rows.csv", "line 1", "'rows.csv' looks like CSV: set data.source: csv"),
    ),
    Case(
        "csv-source-on-a-parquet-file",
        _data_file("rows.parquet", b"PAR1\x15\x04\x15\x10\xff\xfe\x00PAR1", source="csv"),
        ("rows.parquet", "'rows.parquet' looks like Parquet: set data.source: parquet"),
    ),
    Case(
        "jsonl-row-not-object",
        _data_file("l.jsonl", '{"text": "a"}\n[1, 2]\n', source="jsonl"),
        ("l.jsonl", "line 2", "not an object"),
    ),
    Case(
        "jsonl-missing-field",
        _data_file("m.jsonl", '{"body": "a"}\n', source="jsonl"),
        ("m.jsonl", "no field 'text'", "body"),
    ),
    Case("jsonl-wrong-type", _data_file("w.jsonl", '{"text": 12}\n', source="jsonl"), ("w.jsonl", "int", "not text")),
    Case("json-not-array", _data_file("o.json", '{"rows": 1}', source="json"), ("o.json", "JSON array")),
    Case(
        "csv-missing-column", _data_file("c.csv", "body\nhello\n", source="csv"), ("c.csv", "no column 'text'", "body")
    ),
    Case("csv-empty", _data_file("e.csv", "", source="csv"), ("e.csv", "empty")),
    Case("parquet-missing-column", _parquet({"body": ["a", "b"]}), ("no column 'text'", "body")),
    Case("parquet-wrong-type", _parquet({"text": [1, 2]}), ("not text",)),
    Case(
        "parquet-truncated",
        _data_file("t.parquet", b"PAR1\x00\x01\x02", source="parquet"),
        ("t.parquet", "not a readable Parquet file"),
    ),
    Case("symlink-loop", _symlink_loop, ("loop_a",)),
    Case("unknown-source", _with("data", source="jsnol"), ("No data source named 'jsnol'", "jsonl")),
    Case(
        "hub-offline",
        _with("data", source="hub", name="nobody/no-such-dataset", path=None),
        ("nobody/no-such-dataset",),
    ),
    Case(
        "context-longer-than-split",
        _with("model", context_length=100_000),
        ("fewer than one block", "model.context_length"),
    ),
    # tokenizers
    Case(
        "tokenizer-path-missing",
        lambda t, m: _run(t, {**m, "tokenizer": {"train": False, "path": "/no/tok"}}),
        ("tokenizer.path '/no/tok' does not exist",),
    ),
    Case("tokenizer-dir-empty", _tokenizer_dir("empty"), ("Cannot load tokenizer.path",)),
    Case("tokenizer-json-truncated", _tokenizer_dir("truncated"), ("Cannot load tokenizer.path",)),
    # model dirs
    Case("model-safetensors-truncated", _model_dir("truncated"), ("Cannot load the model", "model")),
    Case("model-dir-without-config", _model_dir("no-config"), ("not a model directory", "config.json")),
    Case("model-config-not-json", _model_dir("bad-config"), ("Cannot load the model",)),
    Case("from-pretrained-missing", _with("model", from_pretrained="/no/model"), ("/no/model",)),
    Case(
        "generate-negative-temperature",
        lambda t, m: _model_dir("none")(t, m) + ["--temperature", "-0.5"],
        ("temperature must be positive", "0 for greedy", "-0.5"),
    ),
    # plugins
    Case(
        "plugin-module-missing",
        lambda t, m: _run(t, {**m, "plugins": ["no_such_plugin_mod"]}),
        ("Plugin 'no_such_plugin_mod'", "failed to import"),
    ),
    Case(
        "plugin-raises-on-import",
        _plugin("raise RuntimeError('broken on purpose')\n"),
        ("bad_plugin_", "broken on purpose"),
    ),
    Case(
        "plugin-raises-in-register",
        _plugin("""
        from llmforge import hookimpl
        @hookimpl
        def register_data_sources(register):
            raise ValueError('cannot register')
        """),
        ("bad_plugin_", "register_data_sources", "cannot register"),
    ),
    Case(
        "plugin-hook-typo",
        _plugin("""
        from llmforge import hookimpl
        @hookimpl
        def on_stage_begin(stage, run_dir):
            pass
        """),
        ("bad_plugin_", "unknown hook"),
    ),
    Case(
        "plugin-raises-in-lifecycle",
        _plugin("""
        from llmforge import hookimpl
        @hookimpl
        def on_stage_start(stage, run_dir):
            raise RuntimeError('no thanks')
        """),
        ("bad_plugin_", "on_stage_start", "no thanks"),
    ),
    # output dirs
    Case("out-is-a-file", _out_dir("file"), ("exists and is not a directory",)),
    Case("out-holds-other-files", _out_dir("other-files"), ("not empty and holds no llmforge run",)),
    Case("out-holds-another-recipe", _out_dir("other-recipe"), ("another-run", "Choose another --out")),
]


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    if not directory.is_dir():
        return {}
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, corpus_file, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    mapping = tiny_recipe_dict(corpus_file, max_steps=2)
    argv = case.prepare(tmp_path, mapping)
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()  # what preparing the case printed
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit code {code}\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in out + err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmforge error:"), err
    message = lines[0]
    for expected in case.expect:
        assert expected.lower() in message.lower(), f"{expected!r} not in {message!r}"
    after = _snapshot(tmp_path / "run")
    assert {k: v for k, v in after.items() if k in before} == before, "a file in the run dir changed"
    for artefact in ARTEFACTS:
        assert not (tmp_path / "run" / artefact).exists() or (tmp_path / "run" / artefact / ".llmforge.json").exists()
    leftovers = [p for p in (tmp_path / "run").rglob("*") if ".tmp-" in p.name] if (tmp_path / "run").is_dir() else []
    assert not leftovers, leftovers


def test_the_suite_is_large_enough():
    assert len(CASES) >= 40


def test_bad_input_after_a_finished_run_changes_nothing(tmp_path, corpus_file, capsys):
    """A corrupted corpus on rerun: the data stage fails, every existing artefact stays as it was."""
    mapping = tiny_recipe_dict(corpus_file, max_steps=2)
    recipe = _recipe_file(tmp_path, mapping)
    assert main(["run", recipe, "--out", str(tmp_path / "run")]) == 0
    before = _snapshot(tmp_path / "run")
    corpus_file.write_bytes(b"\xff\xfe broken")
    capsys.readouterr()
    assert main(["run", recipe, "--out", str(tmp_path / "run")]) == 2
    assert "book.txt" in capsys.readouterr().err
    assert _snapshot(tmp_path / "run") == before
    assert json.loads((tmp_path / "run" / "train" / "final" / ".llmforge.json").read_text())["fingerprint"]
    shutil.rmtree(tmp_path / "run")
    assert not os.path.exists(tmp_path / "run")
