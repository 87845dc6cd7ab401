"""The built-in data sources (plugins/llmforge_sources): what they read and how they report bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import llmforge_sources as src
from llmforge.config.schema import DataConfig
from llmforge.errors import DataError


def texts(ds: datasets.Dataset, column: str = "text") -> list:
    return ds[column]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def data_error(load, **config) -> str:
    with pytest.raises(DataError) as info:
        load(DataConfig(**config))
    return str(info.value)


# --- text -----------------------------------------------------------------------------------------


def test_text_single_file(tmp_path):
    f = write(tmp_path / "a.txt", "Hello world.\n\nSecond para.\n")
    ds = src.load_text(DataConfig(path=str(f)))
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["text"]
    assert texts(ds) == ["Hello world.\n\nSecond para.\n"]


def test_text_directory_is_recursive_sorted_and_filtered_by_suffix(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a.md", "A")
    write(tmp_path / "deep" / "er" / "c.text", "C")
    write(tmp_path / "deep" / "D.TXT", "D")
    write(tmp_path / "skip.json", '{"text": "no"}')
    write(tmp_path / "deep" / "skip.csv", "text\nno\n")
    ds = src.load_text(DataConfig(path=str(tmp_path)))
    assert texts(ds) == ["A", "B", "D", "C"]  # a.md, b.txt, deep/D.TXT, deep/er/c.text


def test_text_glob(tmp_path):
    write(tmp_path / "one.txt", "1")
    write(tmp_path / "two.txt", "2")
    write(tmp_path / "three.md", "3")
    write(tmp_path / "sub" / "four.txt", "4")
    assert texts(src.load_text(DataConfig(path=str(tmp_path / "*.txt")))) == ["1", "2"]
    assert texts(src.load_text(DataConfig(path=str(tmp_path / "**" / "*.txt")))) == ["1", "4", "2"]
    assert texts(src.load_text(DataConfig(path=str(tmp_path / "t????.md")))) == ["3"]


def test_text_list_of_paths_keeps_order(tmp_path):
    a = write(tmp_path / "a.txt", "A")
    d = tmp_path / "dir"
    write(d / "x.txt", "X")
    write(d / "y.txt", "Y")
    write(tmp_path / "g1.txt", "G")
    ds = src.load_text(DataConfig(path=[str(d), str(a), str(tmp_path / "g*.txt")]))
    assert texts(ds) == ["X", "Y", "A", "G"]


def test_text_file_with_other_suffix_named_directly(tmp_path):
    f = write(tmp_path / "corpus.dat", "raw")
    assert texts(src.load_text(DataConfig(path=str(f)))) == ["raw"]


def test_text_documents_paragraph(tmp_path):
    f = write(tmp_path / "a.txt", "  First para,\nline two.  \n\nSecond.\n\n\nThird.\n")
    ds = src.load_text(DataConfig(path=str(f), documents="paragraph"))
    assert texts(ds) == ["First para,\nline two.", "Second.", "Third."]


def test_text_documents_line(tmp_path):
    f = write(tmp_path / "a.txt", "one\ntwo\n\nfour")
    ds = src.load_text(DataConfig(path=str(f), documents="line"))
    assert texts(ds) == ["one", "two", "", "four"]  # empty documents are dropped later by the data stage


def test_text_crlf_normalised(tmp_path):
    f = tmp_path / "win.txt"
    f.write_bytes(b"Para one\r\nstill one.\r\n\r\nPara two.\r\n")
    assert texts(src.load_text(DataConfig(path=str(f)))) == ["Para one\nstill one.\n\nPara two.\n"]
    assert texts(src.load_text(DataConfig(path=str(f), documents="paragraph"))) == [
        "Para one\nstill one.",
        "Para two.",
    ]
    assert texts(src.load_text(DataConfig(path=str(f), documents="line"))) == [
        "Para one",
        "still one.",
        "",
        "Para two.",
        "",
    ]


def test_text_custom_column_and_encoding(tmp_path):
    f = write(tmp_path / "latin.txt", "café", encoding="latin-1")
    ds = src.load_text(DataConfig(path=str(f), encoding="latin-1", text_column="body"))
    assert ds.column_names == ["body"]
    assert texts(ds, "body") == ["café"]


def test_text_unicode_is_preserved(tmp_path):
    f = write(tmp_path / "u.txt", "naïve — 日本語 🙂")
    assert texts(src.load_text(DataConfig(path=str(f)))) == ["naïve — 日本語 🙂"]


def test_text_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "home.txt", "H")
    assert texts(src.load_text(DataConfig(path="~/home.txt"))) == ["H"]


# --- path errors ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    msg = data_error(src.load_text, path=str(missing))
    assert msg == f"data.path '{missing}' does not exist."  # absolute: no claim about where it was resolved from
    msg = data_error(src.load_text, path="nope-relative.txt")
    assert f"(a relative path, taken from the current directory {Path.cwd()})" in msg


def test_missing_path_in_list(tmp_path):
    ok = write(tmp_path / "ok.txt", "x")
    missing = tmp_path / "gone.txt"
    msg = data_error(src.load_text, path=[str(ok), str(missing)])
    assert f"'{missing}' does not exist" in msg


@pytest.mark.parametrize("path", [None, "", []])
def test_no_path(path):
    msg = data_error(src.load_jsonl, source="jsonl", path=path)
    assert msg == "data.path is required for source 'jsonl': name a file, directory or glob."


def test_directory_without_matching_files(tmp_path):
    write(tmp_path / "notes.json", "{}")
    write(tmp_path / "sub" / "data.csv", "text\nx\n")
    msg = data_error(src.load_text, path=str(tmp_path))
    assert f"Directory '{tmp_path}' holds no .md/.text/.txt file." in msg
    assert "use a glob such as 'dir/**/*.ext'" in msg


def test_directory_without_matching_files_for_jsonl(tmp_path):
    write(tmp_path / "a.txt", "x")
    msg = data_error(src.load_jsonl, path=str(tmp_path))
    assert f"Directory '{tmp_path}' holds no .jsonl/.ndjson file." in msg


def test_glob_matching_nothing(tmp_path):
    write(tmp_path / "a.txt", "x")
    pattern = str(tmp_path / "*.md")
    msg = data_error(src.load_text, path=pattern)
    assert msg == f"data.path glob '{pattern}' matches no file. Check the pattern and directory."


def test_glob_matching_only_directories(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    msg = data_error(src.load_text, path=str(tmp_path / "*.txt"))
    assert "matches no file" in msg


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes(b"Hello caf\xe9 au lait")
    msg = data_error(src.load_text, path=str(f))
    assert f"'{f}' is not valid utf-8: byte 9 (b'\\xe9')." in msg
    assert "set data.encoding" in msg and "iconv" in msg


def test_non_utf8_in_second_file_names_that_file(tmp_path):
    write(tmp_path / "a.txt", "fine")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ok\n\xff")
    msg = data_error(src.load_text, path=str(tmp_path))
    assert f"'{bad}' is not valid utf-8: byte 3" in msg


def test_unknown_encoding(tmp_path):
    f = write(tmp_path / "a.txt", "x")
    msg = data_error(src.load_text, path=str(f), encoding="klingon-8")
    assert msg == "data.encoding 'klingon-8' is not a known text encoding."


def test_unreadable_file_is_data_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    f = write(tmp_path / "secret.txt", "x")
    f.chmod(0)
    try:
        msg = data_error(src.load_text, path=str(f))
    finally:
        f.chmod(0o644)
    assert f"Cannot read '{f}'" in msg and "permissions" in msg


# --- jsonl ----------------------------------------------------------------------------------------


def test_jsonl_reads_text_field_only(tmp_path):
    f = write_jsonl(
        tmp_path / "a.jsonl",
        [{"text": "one", "id": 1}, {"text": "two", "meta": {"x": [1]}}, {"text": None, "id": "3"}],
    )
    ds = src.load_jsonl(DataConfig(source="jsonl", path=str(f)))
    assert ds.column_names == ["text"]
    assert texts(ds) == ["one", "two", None]


def test_jsonl_blank_lines_crlf_and_directory(tmp_path):
    write(tmp_path / "d" / "a.jsonl", '{"body": "A1"}\r\n\r\n   \n{"body": "A2"}')
    write_jsonl(tmp_path / "d" / "b.ndjson", [{"body": "B"}])
    write(tmp_path / "d" / "ignored.txt", "x")
    ds = src.load_jsonl(DataConfig(source="jsonl", path=str(tmp_path / "d"), text_column="body"))
    assert texts(ds, "body") == ["A1", "A2", "B"]


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    doc = "before\u2028after\u2029para\x85nel\x1cfs"
    f = write(tmp_path / "u.jsonl", json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    assert texts(src.load_jsonl(DataConfig(source="jsonl", path=str(f)))) == [doc]


def test_jsonl_empty_file_gives_no_rows(tmp_path):
    f = write(tmp_path / "empty.jsonl", "\n\n")
    assert len(src.load_jsonl(DataConfig(source="jsonl", path=str(f)))) == 0


def test_jsonl_invalid_line_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": "broken"\n')
    msg = data_error(src.load_jsonl, source="jsonl", path=str(f))
    assert f"'{f}' line 3 is not valid JSON" in msg
    assert "Each line of a JSON Lines file must be one JSON object." in msg


def test_jsonl_line_that_is_not_an_object(tmp_path):
    f = write(tmp_path / "list.jsonl", '{"text": "ok"}\n["text", "x"]\n')
    msg = data_error(src.load_jsonl, source="jsonl", path=str(f))
    assert msg == f"'{f}' line 2 is a JSON list, not an object."


def test_jsonl_missing_text_field_names_file_line_and_fields(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "fine"}])
    bad = write(tmp_path / "d" / "b.jsonl", '{"text": "ok"}\n\n{"content": "x", "id": 3}\n')
    msg = data_error(src.load_jsonl, source="jsonl", path=str(tmp_path / "d"))
    assert f"'{bad}' line 3 has no field 'text' (data.text_column)." in msg
    assert "Its fields: content, id." in msg


def test_jsonl_non_text_value(tmp_path):
    f = write_jsonl(tmp_path / "n.jsonl", [{"text": "ok"}, {"text": 42}])
    msg = data_error(src.load_jsonl, source="jsonl", path=str(f))
    assert f"'{f}' line 2: 'text' is a int ('42'), not text." in msg
    assert "data.text_column" in msg


def test_jsonl_non_utf8(tmp_path):
    f = tmp_path / "l.jsonl"
    f.write_bytes(b'{"text": "\xe9"}\n')
    msg = data_error(src.load_jsonl, source="jsonl", path=str(f))
    assert f"'{f}' is not valid utf-8: byte 10" in msg


# --- json -----------------------------------------------------------------------------------------


def test_json_array(tmp_path):
    f = write(tmp_path / "a.json", json.dumps([{"text": "x", "n": 1}, {"text": "y"}]))
    ds = src.load_json(DataConfig(source="json", path=str(f)))
    assert ds.column_names == ["text"] and texts(ds) == ["x", "y"]


def test_json_options_field(tmp_path):
    f = write(tmp_path / "wrapped.json", json.dumps({"version": 2, "data": [{"t": "a"}, {"t": "b"}]}))
    ds = src.load_json(DataConfig(source="json", path=str(f), text_column="t", options={"field": "data"}))
    assert texts(ds, "t") == ["a", "b"]


def test_json_several_files(tmp_path):
    write(tmp_path / "j" / "1.json", json.dumps([{"text": "one"}]))
    write(tmp_path / "j" / "2.json", json.dumps([{"text": "two"}, {"text": "three"}]))
    assert texts(src.load_json(DataConfig(source="json", path=str(tmp_path / "j")))) == ["one", "two", "three"]


def test_json_object_without_field_option(tmp_path):
    f = write(tmp_path / "obj.json", json.dumps({"data": [{"text": "a"}]}))
    msg = data_error(src.load_json, source="json", path=str(f))
    assert f"'{f}' must hold a JSON array of objects" in msg
    assert "set data.options.field" in msg


def test_json_missing_options_field(tmp_path):
    f = write(tmp_path / "obj.json", json.dumps({"rows": []}))
    msg = data_error(src.load_json, source="json", path=str(f), options={"field": "data"})
    assert msg == f"'{f}' has no top-level field 'data' (data.options.field)."


def test_json_invalid(tmp_path):
    f = write(tmp_path / "bad.json", '[\n  {"text": "a"},\n  {"text": }\n]')
    msg = data_error(src.load_json, source="json", path=str(f))
    assert msg.startswith(f"'{f}' is not valid JSON:")
    assert "at line 3." in msg


def test_json_row_not_an_object(tmp_path):
    f = write(tmp_path / "a.json", json.dumps([{"text": "a"}, "just a string"]))
    msg = data_error(src.load_json, source="json", path=str(f))
    assert msg == f"Row 2 of '{f}' is a str, not an object."


def test_json_missing_text_field_names_row_and_fields(tmp_path):
    write(tmp_path / "j" / "1.json", json.dumps([{"text": "a"}, {"text": "b"}]))
    bad = write(tmp_path / "j" / "2.json", json.dumps([{"text": "c"}, {"title": "t", "body": "b"}]))
    msg = data_error(src.load_json, source="json", path=str(tmp_path / "j"))
    assert f"Row 2 of '{bad}' has no field 'text' (data.text_column). Its fields: body, title." in msg


def test_json_row_with_no_fields(tmp_path):
    f = write(tmp_path / "a.json", json.dumps([{}]))
    msg = data_error(src.load_json, source="json", path=str(f))
    assert "Its fields: none." in msg


def test_json_non_text_value(tmp_path):
    f = write(tmp_path / "a.json", json.dumps([{"text": ["a", "list"]}]))
    msg = data_error(src.load_json, source="json", path=str(f))
    assert f"Row 1 of '{f}': 'text' is a list" in msg


# --- parquet --------------------------------------------------------------------------------------


def test_parquet_text_column(tmp_path):
    f = write_parquet(tmp_path / "a.parquet", {"id": [1, 2, 3], "content": ["x", None, "z"]})
    ds = src.load_parquet(DataConfig(source="parquet", path=str(f), text_column="content"))
    assert ds.column_names == ["content"]
    assert texts(ds, "content") == ["x", None, "z"]


def test_parquet_directory_of_files(tmp_path):
    write_parquet(tmp_path / "p" / "part-0.parquet", {"text": ["a", "b"]})
    write_parquet(tmp_path / "p" / "part-1.parquet", {"text": ["c"], "extra": [1.5]})
    ds = src.load_parquet(DataConfig(source="parquet", path=str(tmp_path / "p")))
    assert texts(ds) == ["a", "b", "c"]


def test_parquet_missing_column_lists_columns(tmp_path):
    f = write_parquet(tmp_path / "a.parquet", {"id": [1], "body": ["x"]})
    msg = data_error(src.load_parquet, source="parquet", path=str(f))
    assert msg == f"'{f}' has no column 'text' (data.text_column). Its columns: id, body."


def test_parquet_non_text_column(tmp_path):
    write_parquet(tmp_path / "p" / "0.parquet", {"text": ["fine"]})
    bad = write_parquet(tmp_path / "p" / "1.parquet", {"text": ["fine"]})
    pq.write_table(pa.table({"text": pa.array([None, 7], type=pa.int64())}), bad)
    msg = data_error(src.load_parquet, source="parquet", path=str(tmp_path / "p"))
    assert f"Row 2 of '{bad}': 'text' is a int ('7'), not text." in msg


def test_parquet_not_a_parquet_file(tmp_path):
    f = write(tmp_path / "fake.parquet", "not parquet at all")
    msg = data_error(src.load_parquet, source="parquet", path=str(f))
    assert msg.startswith(f"'{f}' is not a readable Parquet file:")


# --- csv ------------------------------------------------------------------------------------------


def test_csv_text_column_keeps_strings(tmp_path):
    f = write(tmp_path / "a.csv", 'id,body\n1,"Hello, world"\n2,"multi\nline"\n3,NA\n4,\n5,0123\n')
    ds = src.load_csv(DataConfig(source="csv", path=str(f), text_column="body"))
    assert ds.column_names == ["body"]
    assert texts(ds, "body") == ["Hello, world", "multi\nline", "NA", "", "0123"]


def test_csv_and_tsv_in_directory(tmp_path):
    write(tmp_path / "c" / "a.csv", "text,n\nfrom csv,1\n")
    write(tmp_path / "c" / "b.tsv", "n\ttext\n2\tfrom, tsv\n")
    ds = src.load_csv(DataConfig(source="csv", path=str(tmp_path / "c")))
    assert texts(ds) == ["from csv", "from, tsv"]


def test_csv_encoding(tmp_path):
    f = write(tmp_path / "l.csv", "text\ncafé\n", encoding="latin-1")
    assert texts(src.load_csv(DataConfig(source="csv", path=str(f), encoding="latin-1"))) == ["café"]


def test_csv_missing_column_lists_columns(tmp_path):
    f = write(tmp_path / "a.csv", "id,content\n1,x\n")
    msg = data_error(src.load_csv, source="csv", path=str(f))
    assert msg == f"'{f}' has no column 'text' (data.text_column). Its columns: id, content."


def test_csv_empty_file(tmp_path):
    f = write(tmp_path / "empty.csv", "")
    msg = data_error(src.load_csv, source="csv", path=str(f))
    assert msg == f"'{f}' is empty: it has no header row and no data."


def test_csv_header_only_gives_no_rows(tmp_path):
    f = write(tmp_path / "h.csv", "text\n")
    assert len(src.load_csv(DataConfig(source="csv", path=str(f)))) == 0


def test_csv_non_utf8(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_bytes(b"text\ncaf\xe9\n")
    msg = data_error(src.load_csv, source="csv", path=str(f))
    assert f"'{f}' is not valid utf-8" in msg
    assert "set data.encoding" in msg


# --- hub (datasets.load_dataset with local builders) ----------------------------------------------


def hub_config(tmp_path: Path, **kw) -> DataConfig:
    options = {"cache_dir": str(tmp_path / "hf-cache")}  # never touch the user's datasets cache
    return DataConfig(source="hub", options=options, **kw)


def test_hub_json_builder_with_data_files(tmp_path):
    f = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "id": 1}, {"text": "b", "id": 2}])
    ds = src.load_hub(hub_config(tmp_path, name="json", data_files=str(f)))
    assert isinstance(ds, datasets.Dataset)
    assert sorted(ds.column_names) == ["id", "text"]
    assert ds["text"] == ["a", "b"]


def test_hub_split_from_data_files_mapping(tmp_path):
    tr = write_jsonl(tmp_path / "train.jsonl", [{"text": "t"}])
    va = write_jsonl(tmp_path / "val.jsonl", [{"text": "v1"}, {"text": "v2"}])
    cfg = hub_config(tmp_path, name="json", data_files={"train": str(tr), "validation": str(va)}, split="validation")
    assert src.load_hub(cfg)["text"] == ["v1", "v2"]


def test_hub_streaming_returns_iterable_dataset(tmp_path):
    f = write_jsonl(tmp_path / "rows.jsonl", [{"text": f"doc {i}"} for i in range(5)])
    ds = src.load_hub(hub_config(tmp_path, name="json", data_files=str(f), streaming=True))
    assert isinstance(ds, datasets.IterableDataset)
    assert [row["text"] for row in ds] == [f"doc {i}" for i in range(5)]


def test_hub_requires_name(tmp_path):
    with pytest.raises(DataError, match=r"data.name is required for source 'hub'"):
        src.load_hub(hub_config(tmp_path))


def test_hub_unknown_split(tmp_path):
    f = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}])
    with pytest.raises(DataError) as info:
        src.load_hub(hub_config(tmp_path, name="json", data_files=str(f), split="nosuchsplit"))
    assert "Cannot load hub dataset 'json' (config None):" in str(info.value)


@pytest.fixture
def hub_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read the variables at import time; make sure this test never reaches the network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_missing_dataset_offline(tmp_path, hub_offline):
    with pytest.raises(DataError) as info:
        src.load_hub(hub_config(tmp_path, name="llmforge-tests/no-such-dataset", config="main"))
    msg = str(info.value)
    assert msg.startswith("Cannot load hub dataset 'llmforge-tests/no-such-dataset' (config main): ")
    assert "The hub is switched off here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1)" in msg
    assert "use a local copy or a file source." in msg
    assert "\n" not in msg  # only the first line of the library's message


def test_hub_missing_dataset_hint_without_offline_env(tmp_path, hub_offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with pytest.raises(DataError) as info:
        src.load_hub(hub_config(tmp_path, name="llmforge-tests/no-such-dataset"))
    assert "Check the name, config and split, and your network." in str(info.value)


# --- text_column: null keeps every column (the finetune stage's rows) -------------------------------


ROWS = [
    {"instruction": "Name a colour.", "output": "Blue."},
    {"instruction": "Opposite?", "input": "hot", "output": "Cold.", "id": 7},
]


def test_all_columns_from_jsonl_with_fields_missing_in_the_first_row(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", ROWS)
    ds = src.load_jsonl(DataConfig(source="jsonl", path=str(f), text_column=None))
    assert ds.column_names == ["instruction", "output", "input", "id"]
    assert ds[0] == {"instruction": "Name a colour.", "output": "Blue.", "input": None, "id": None}
    assert ds[1]["input"] == "hot" and ds[1]["id"] == 7


def test_all_columns_keep_nested_conversations(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    f = write(tmp_path / "c.json", json.dumps(rows))
    ds = src.load_json(DataConfig(source="json", path=str(f), text_column=None))
    assert ds[0]["messages"][1] == {"role": "assistant", "content": "Hello."}


def test_all_columns_from_parquet_and_csv(tmp_path):
    pq_file = write_parquet(tmp_path / "p.parquet", {"instruction": ["Q"], "output": ["A."]})
    ds = src.load_parquet(DataConfig(source="parquet", path=str(pq_file), text_column=None))
    assert ds[0] == {"instruction": "Q", "output": "A."}
    csv_file = write(tmp_path / "c.csv", "instruction,output\nQ,A.\n")
    ds = src.load_csv(DataConfig(source="csv", path=str(csv_file), text_column=None))
    assert ds[0] == {"instruction": "Q", "output": "A."}


def test_all_columns_of_a_text_file_is_its_text(tmp_path):
    f = write(tmp_path / "a.txt", "One.\n\nTwo.")
    ds = src.load_text(DataConfig(path=str(f), documents="paragraph", text_column=None))
    assert ds.column_names == ["text"] and texts(ds) == ["One.", "Two."]


def test_a_field_of_mixed_types_is_named(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"q": "a", "n": 1}, {"q": "b", "n": "two"}])
    msg = data_error(src.load_jsonl, source="jsonl", path=str(f), text_column=None)
    assert msg.startswith(f"Field 'n' of {f} holds values of different types in different rows")


def test_pretraining_refuses_a_null_text_column(tmp_path, corpus_file):
    from conftest import tiny_recipe_dict
    from llmforge import Recipe
    from llmforge.errors import ConfigError

    recipe = tiny_recipe_dict(corpus_file)
    recipe["data"]["text_column"] = None
    with pytest.raises(ConfigError, match="data.text_column is null, but pretraining reads one text column"):
        Recipe.from_dict(recipe).run(tmp_path / "run")


# --- a file read by the source of another suffix ------------------------------------------------


@pytest.mark.parametrize(
    ("load", "name", "content", "names"),
    [
        (src.load_jsonl, "rows.csv", "text,label\nhello,1\n", ("line 1", "looks like CSV: set data.source: csv")),
        (src.load_jsonl, "rows.json", '[\n {"text": "a"}\n]\n', ("line 1", "looks like JSON: set data.source: json")),
        (src.load_jsonl, "rows.txt", "Plain prose.\n", ("line 1", "looks like plain text: set data.source: text")),
        (src.load_json, "rows.jsonl", '{"a": 1}\n{"a": 2}\n', ("line 2", "JSON Lines: set data.source: jsonl")),
        (src.load_json, "one.jsonl", '{"text": "a"}\n', ("JSON array", "JSON Lines: set data.source: jsonl")),
        (src.load_parquet, "rows.csv", "text\nhello\n", ("Parquet", "looks like CSV: set data.source: csv")),
        (src.load_parquet, "rows.tsv", "text\nhello\n", ("Parquet", "looks like TSV: set data.source: csv")),
        (src.load_csv, "rows.jsonl", '{"text": "a"}\n', ("no column 'text'", "JSON Lines: set data.source: jsonl")),
    ],
)
def test_a_failed_read_names_the_source_of_the_files_suffix(tmp_path, load, name, content, names):
    f = write(tmp_path / name, content)
    message = data_error(load, path=str(f))
    assert f"'{f}'" in message and f"'{name}' " in message
    for expected in names:
        assert expected in message, message


@pytest.mark.parametrize("load", [src.load_text, src.load_jsonl, src.load_json, src.load_csv])
def test_a_parquet_file_read_as_text_names_the_parquet_source(tmp_path, load):
    f = write_parquet(tmp_path / "rows.parquet", {"text": ["a", "b"]})
    message = data_error(load, path=str(f))
    assert "not valid utf-8" in message and "'rows.parquet' looks like Parquet: set data.source: parquet" in message


def test_the_hint_names_the_finetune_block_for_finetune_rows(tmp_path):
    from llmforge.chat.examples import load_rows
    from llmforge.config.schema import FinetuneConfig
    from llmforge.plugin.manager import get_plugins

    f = write(tmp_path / "rows.csv", "instruction,output\nSay hi.,Hi!\n")
    with pytest.raises(DataError) as info:
        load_rows(FinetuneConfig(source="jsonl", path=str(f)), get_plugins())
    message = str(info.value)
    assert "'rows.csv' looks like CSV: set finetune.source: csv" in message and "line 1" in message
    assert "data.source" not in message


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.ndjson", "bad.dat", "bad"])
def test_no_hint_for_the_sources_own_suffix_or_an_unknown_one(tmp_path, name):
    f = write(tmp_path / name, "not json\n")
    message = data_error(src.load_jsonl, path=str(f))
    assert "line 1 is not valid JSON" in message and "looks like" not in message


def test_no_hint_when_another_suffix_reads_fine(tmp_path):
    f = write(tmp_path / "notes.csv", "a,b\n1,2\n")  # the text source reads any file it is named
    assert texts(src.load_text(DataConfig(path=str(f)))) == ["a,b\n1,2\n"]


def test_file_sources_register_their_suffixes():
    seen = {}
    src.register_data_sources(lambda name, obj: seen.setdefault(name, obj))
    assert ".csv" in seen["csv"].suffixes and ".tsv" in seen["csv"].suffixes
    assert ".jsonl" in seen["jsonl"].suffixes and ".parquet" in seen["parquet"].suffixes
    assert ".json" in seen["json"].suffixes and ".txt" in seen["text"].suffixes
    assert seen["hub"].suffixes == () and seen["token_store"].suffixes == ()
    claimed = [s for source in seen.values() for s in source.suffixes]
    assert len(claimed) == len(set(claimed))  # one source per suffix


# --- registration ---------------------------------------------------------------------------------


def test_register_data_sources_registers_all_builtins():
    seen = {}
    src.register_data_sources(lambda name, obj: seen.setdefault(name, obj))
    assert {name: source.load for name, source in seen.items()} == {
        "text": src.load_text,
        "jsonl": src.load_jsonl,
        "json": src.load_json,
        "parquet": src.load_parquet,
        "csv": src.load_csv,
        "hub": src.load_hub,
        "token_store": src.load_token_store,
    }
    assert seen["token_store"].packed is not None and all(s.inputs is not None for s in seen.values())


def test_text_byte_order_mark_is_not_content(tmp_path):
    from llmforge.config.schema import DataConfig
    from llmforge_sources import load_text

    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffFirst paragraph.\n\nSecond.".encode())
    ds = load_text(DataConfig(path=str(path), documents="paragraph"))
    assert list(ds["text"]) == ["First paragraph.", "Second."]


@pytest.mark.parametrize("separator", [None, "\n\n", "\n"])
@pytest.mark.parametrize("read_bytes", [1, 3, 7, 64, 2**20])
def test_text_pieces_read_in_chunks_equal_splitting_the_whole_text(tmp_path, monkeypatch, separator, read_bytes):
    text = "\ufeffOne\r\n\r\ntwo é\n\n\nthree ✓\r\nfour\r\n\r\n\r\nfive\n\n" + "sïx " * 50 + "\r\n\r\n"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(src, "READ_BYTES", read_bytes)
    whole = text[1:].replace("\r\n", "\n")
    expected = [whole] if separator is None else whole.split(separator)
    assert list(src.text_pieces(path, "utf-8", separator)) == expected


def test_text_pieces_name_the_byte_that_is_not_valid_text(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_bytes("ok é\n\n".encode() * 10 + b"bad \xff here")
    monkeypatch.setattr(src, "READ_BYTES", 5)
    with pytest.raises(DataError, match=r"t\.txt' is not valid utf-8: byte 74 \(b'\\xff'\)"):
        list(src.text_pieces(path, "utf-8", "\n\n"))
