"""Row formats (plugins/llmforge_chat/formats.py) and how the core checks rows and counts unusable ones."""

from __future__ import annotations

import pytest

from chat_helpers import CHAT, registry, tiny_tokenizer, write_jsonl
from llmforge.chat.conversations import ExampleBuilder, Problem, Report, install_template
from llmforge.chat.examples import load_rows
from llmforge.config.schema import FinetuneConfig
from llmforge.errors import DataError


@pytest.fixture(scope="module")
def tok(corpus_text):
    tok = tiny_tokenizer(corpus_text)
    install_template(tok, "chatml", registry("chat_template").get("chatml"))
    return tok


def make_builder(tok, fmt: str, mask: str = "assistant_only", **kw) -> ExampleBuilder:
    formats = registry("format")
    return ExampleBuilder(
        tok,
        formats.get(fmt),
        registry("loss_mask").get(mask),
        {"format": fmt, "chat_template": "chatml", "loss_mask": mask},
        where="'data.jsonl'",
        other_formats={n: formats.get(n) for n in formats.names()},
        **kw,
    )


def test_alpaca_with_and_without_input(tok):
    b = make_builder(tok, "alpaca")
    assert b.messages({"instruction": "Name a colour.", "output": "Blue."}, 0) == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    with_input = b.messages({"instruction": "Give the opposite.", "input": "hot", "output": "Cold."}, 1)
    assert with_input[0] == {"role": "user", "content": "Give the opposite.\n\nhot"}
    blank_input = b.messages({"instruction": "Say hi.", "input": "  ", "output": "Hi."}, 2)
    assert blank_input[0]["content"] == "Say hi."


def test_dolly_uses_context_and_response(tok):
    row = {"instruction": "Who wrote it?", "context": "Persuasion, 1817.", "response": "Jane Austen.", "category": "qa"}
    assert make_builder(tok, "dolly").messages(row, 0) == [
        {"role": "user", "content": "Who wrote it?\n\nPersuasion, 1817."},
        {"role": "assistant", "content": "Jane Austen."},
    ]


def test_sharegpt_maps_roles_and_top_level_system(tok):
    row = {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "user", "value": "Bye"},
            {"from": "assistant", "value": "Goodbye."},
        ],
    }
    assert [m["role"] for m in make_builder(tok, "sharegpt").messages(row, 0)] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


def test_messages_multi_turn_with_system(tok):
    assert make_builder(tok, "messages").messages({"messages": CHAT}, 0) == CHAT


def test_prompt_completion(tok):
    row = {"prompt": "2 plus 2?", "completion": "4."}
    assert make_builder(tok, "prompt_completion").messages(row, 0)[1] == {"role": "assistant", "content": "4."}


def test_system_prompt_is_added_only_where_missing(tok):
    b = make_builder(tok, "messages", system_prompt="Answer briefly.")
    plain = b.messages({"messages": CHAT[1:3]}, 0)
    assert plain[0] == {"role": "system", "content": "Answer briefly."}
    assert b.messages({"messages": CHAT}, 1)[0] == CHAT[0]  # its own system message is kept


def test_format_mismatch_names_field_row_and_the_format_that_fits(tok):
    b = make_builder(tok, "alpaca")
    rows = [{"instruction": "Q", "output": "A."}] * 2 + [{"instruction": "Q", "context": "", "response": "A."}]
    with pytest.raises(DataError) as info:
        b.build(rows, Report())
    msg = str(info.value)
    assert "Row 3 of 'data.jsonl' does not match format 'alpaca': it has no field 'output'." in msg
    assert "Format 'alpaca' reads instruction, output (optional: input)." in msg
    assert "The row's fields: context, instruction, response." in msg
    assert "It looks like format 'dolly': set finetune.format." in msg


def test_sharegpt_turn_without_from_names_the_turn(tok):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    with pytest.raises(DataError, match=r"Row 1 of .*: turn 2 of 'conversations' has no field 'from' \(its fields: "):
        make_builder(tok, "sharegpt").messages(row, 0)


def test_non_text_content_is_a_mismatch(tok):
    with pytest.raises(DataError, match=r"Row 5 .* field 'output' holds int '7', not text"):
        make_builder(tok, "alpaca").messages({"instruction": "3 plus 4?", "output": 7}, 4)
    with pytest.raises(DataError, match=r"Row 1 .*turn 1 holds list content"):
        make_builder(tok, "messages").messages({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, 0)


def test_unknown_roles_empty_turns_and_no_assistant_are_counted_not_silent(tok):
    good = {"messages": CHAT}
    rows = [
        good,
        {"messages": [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": "{}"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "   "}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "function", "content": "f()"}]},
        good,
    ]
    report = Report()
    examples = make_builder(tok, "messages").build(rows, report)
    assert [e.row for e in examples] == [0, 6]
    assert report.rows == 7 and report.dropped == 5
    assert report.kinds == {"unknown role": 2, "empty turn": 1, "no assistant turn": 1, "assistant turn first": 1}
    assert report.unknown_roles == {"tool": 1, "function": 1}
    assert report.first_rows["unknown role"] == [2, 6]  # row numbers as a person counts them
    lines = report.lines()
    assert "dropped 2 row(s) with unknown role ('tool' x1, 'function' x1): rows 2, 6" in lines


def test_single_row_reports_its_problem(tok):
    problem = make_builder(tok, "alpaca").example({"instruction": "Q?", "output": ""}, 3)
    assert isinstance(problem, Problem) and (problem.kind, problem.row) == ("empty turn", 3)


def test_rows_reach_the_format_with_every_column(tmp_path, tok):
    """The finetune stage reads every column through the same data-source plugins as pretraining."""
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"instruction": "Q1", "input": "x", "output": "A1."}, {"instruction": "Q2", "output": "A2.", "extra": 3}],
    )
    rows = load_rows(FinetuneConfig(path=str(path)), _plugins())
    assert rows.column_names == ["instruction", "input", "output", "extra"]
    assert rows[1] == {"instruction": "Q2", "input": None, "output": "A2.", "extra": 3}
    examples = make_builder(tok, "alpaca").build(rows, Report())
    assert [e.messages[0]["content"] for e in examples] == ["Q1\n\nx", "Q2"]


def _plugins():
    from llmforge.plugin.manager import get_plugins

    return get_plugins()
