"""Row formats: how a row of an instruction data set becomes `[{"role", "content"}, ...]` messages.

Each format names the fields it needs; the core checks them on every row (a missing one is an error
naming the field and the row) and counts the conversations it cannot use (unknown roles, empty turns,
no assistant turn). Roles a format does not know are passed through, so they are counted, not lost.
"""

from __future__ import annotations

from typing import Any

from llmforge import Format, FormatMismatch


def _join(first: str, second: Any) -> str:
    """An instruction and its optional input/context, separated by a blank line."""
    if isinstance(second, str) and second.strip():
        return f"{first}\n\n{second}"
    return first


def _text(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise FormatMismatch(f"field '{name}' holds {type(value).__name__} {str(value)[:40]!r}, not text")
    return value


def alpaca(row: dict[str, Any]) -> list[dict[str, Any]]:
    """instruction (+ input) -> user, output -> assistant (Stanford Alpaca)."""
    return [
        {"role": "user", "content": _join(_text(row, "instruction"), _text(row, "input"))},
        {"role": "assistant", "content": _text(row, "output")},
    ]


def dolly(row: dict[str, Any]) -> list[dict[str, Any]]:
    """instruction (+ context) -> user, response -> assistant (databricks-dolly-15k)."""
    return [
        {"role": "user", "content": _join(_text(row, "instruction"), _text(row, "context"))},
        {"role": "assistant", "content": _text(row, "response")},
    ]


def prompt_completion(row: dict[str, Any]) -> list[dict[str, Any]]:
    """prompt -> user, completion -> assistant (TRL's prompt-completion data sets)."""
    return [
        {"role": "user", "content": _text(row, "prompt")},
        {"role": "assistant", "content": _text(row, "completion")},
    ]


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}


def _turns(row: dict[str, Any], name: str, role_key: str, content_key: str) -> list[dict[str, Any]]:
    turns = row[name]
    if not isinstance(turns, list):
        raise FormatMismatch(f"field '{name}' holds {type(turns).__name__}, not a list of turns")
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise FormatMismatch(f"turn {i} of '{name}' holds {type(turn).__name__}, not an object")
        for key in (role_key, content_key):
            if key not in turn:
                raise FormatMismatch(
                    f"turn {i} of '{name}' has no field '{key}' (its fields: {', '.join(sorted(turn)) or 'none'})"
                )
    return turns


def sharegpt(row: dict[str, Any]) -> list[dict[str, Any]]:
    """conversations: [{from: human|gpt|system, value}, ...] (ShareGPT/Vicuna); an optional top-level system."""
    messages = []
    system = _text(row, "system")
    if system:
        messages.append({"role": "system", "content": system})
    for turn in _turns(row, "conversations", "from", "value"):
        source = turn["from"]
        messages.append({"role": SHAREGPT_ROLES.get(source, source), "content": turn["value"]})
    return messages


def messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """messages: [{role: system|user|assistant, content}, ...] (OpenAI style), multi-turn."""
    return [{"role": t["role"], "content": t["content"]} for t in _turns(row, "messages", "role", "content")]


FORMATS = {
    "alpaca": Format(("instruction", "output"), alpaca, ("input",), "instruction/input/output"),
    "dolly": Format(("instruction", "response"), dolly, ("context",), "instruction/context/response"),
    "sharegpt": Format(("conversations",), sharegpt, ("system",), "conversations of {from, value}"),
    "messages": Format(("messages",), messages, (), "messages of {role, content}"),
    "prompt_completion": Format(("prompt", "completion"), prompt_completion, (), "prompt/completion"),
}
