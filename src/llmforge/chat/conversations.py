"""From instruction rows to training examples: format -> messages -> chat template -> tokens -> loss mask.

Plugins contribute the three named pieces, registered through the hooks in `llmforge.plugin.hookspecs`:

* a `Format` turns one data row into `[{"role", "content"}, ...]` messages;
* a `ChatTemplate` installs a Jinja template (and its special tokens) into the tokenizer, so the
  saved model dir chats with plain transformers (`tokenizer.apply_chat_template`);
* a `LossMask` chooses, in characters of the rendered text, what the model is trained to write.

The core does the rest the same way for every plugin: it checks the rows against the format, counts
(never silently drops) conversations it cannot use, renders them with transformers' sandboxed
`apply_chat_template`, locates every turn by rendering the conversation's prefixes, and turns the
mask's character spans into token labels through the tokenizer's offset mapping, so a token carries
loss when it overlaps a selected span (the rule of `return_assistant_tokens_mask`).
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jinja2

from llmforge.errors import ConfigError, DataError
from llmforge.plugin.types import (
    ChatTemplate,
    Format,
    FormatMismatch,
    LossMask,
    MaskError,
    Rendered,
    Span,
    Turn,
)

ROLES = ("system", "user", "assistant")


# --- rendering -----------------------------------------------------------------------------------


class TemplateError(DataError):
    """The chat template cannot render a conversation, or renders it so that turns cannot be located."""


GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

# How `render` located the turns (kept in `Rendered.located`, counted and printed by the caller)
MARKERS = "the template's {% generation %} markers"
PREFIXES = "the character offsets of rendered prefixes"
TEXTS = "the character offsets of each message's text"


def has_generation_markers(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and _marks_generation(template)


@functools.lru_cache(maxsize=16)
def _marks_generation(template: str) -> bool:  # asked once per rendered row, for the same few templates
    return GENERATION_MARKER.search(template) is not None


def render(tokenizer: Any, messages: list[dict[str, Any]]) -> Rendered:
    """Render `messages` with the tokenizer's chat template and locate each turn in the text.

    Turns are located by rendering the conversation's prefixes: message k's turn ends where the
    rendering of messages[:k+1] ends; an assistant turn's content starts where messages[:k] rendered
    with the generation prompt ends. A closing the template writes only after the last message (Phi-3
    ends a conversation with EOS) belongs to no turn. A template that renders a turn differently once
    later turns follow (Qwen3 drops earlier reasoning) is located by each message's text instead, found
    in order. Where the template has `{% generation %}` markers, what they mark is each assistant
    turn's content: the mask is transformers' `return_assistant_tokens_mask`.
    """
    if messages and messages[0]["role"] == "assistant":
        raise TemplateError("the conversation starts with an assistant turn, which answers nothing")
    full = _apply(tokenizer, messages, False)
    try:
        turns, located = _turns_by_prefix(tokenizer, messages, full), PREFIXES
    except TemplateError as exc:
        turns, located = _turns_by_text(tokenizer, messages, full, str(exc)), TEXTS
    if has_generation_markers(tokenizer):
        turns, located = _marked(tokenizer, messages, turns), MARKERS
    return Rendered(full, turns, located)


def _turns_by_prefix(tokenizer: Any, messages: list[dict[str, Any]], full: str) -> list[Turn]:
    closing = _closing(tokenizer, messages, full)
    turns: list[Turn] = []
    start = 0
    for k, message in enumerate(messages):
        last = k == len(messages) - 1
        end = len(full) - closing if last else _prefix_length(tokenizer, messages[: k + 1], full, False, closing)
        content_start, content_end = start, end
        if message["role"] == "assistant":
            content_start = _prefix_length(tokenizer, messages[:k], full, True, closing)
            if not start <= content_start <= end:
                raise TemplateError(
                    f"the generation prompt after message {k} does not end inside the assistant turn that follows"
                )
            content_end = content_start + len(full[content_start:end].rstrip())
        turns.append(Turn(message["role"], start, end, content_start, content_end))
        start = end
    return turns


def _turns_by_text(tokenizer: Any, messages: list[dict[str, Any]], full: str, why: str) -> list[Turn]:
    """Each message's text, found in order; a turn runs to the special token right after its text (its
    end of turn) and the whitespace after that. An assistant's content starts where the generation
    prompt ends, where that renders as a prefix (Qwen3's empty <think> block after it is the model's
    to write), else at its text."""
    specials = special_tokens(tokenizer)
    turns: list[Turn] = []
    start = 0
    for k, message in enumerate(messages):
        found = _find_text(full, message["content"], start, specials)
        if found is None:
            raise TemplateError(
                f"{why}; nor does message {k + 1}'s text appear in the rendering after the turns before it"
            )
        text_start, text_end = found
        content_end = text_end + _special_at(full, text_end, specials)
        if message["role"] == "assistant" and content_end == text_end:
            raise TemplateError(
                f"{why}; and the template writes no special token right after assistant message {k + 1}'s text, "
                "so where its turn ends cannot be found"
            )
        end = (
            len(full)
            if k == len(messages) - 1
            else content_end + len(full[content_end:]) - len(full[content_end:].lstrip())
        )
        if message["role"] == "assistant":
            content_start = _generation_prompt_end(tokenizer, messages[:k], full, start, text_start)
            turns.append(Turn("assistant", start, end, content_start, content_end))
        else:
            turns.append(Turn(message["role"], start, end, start, end))
        start = end
    return turns


def _generation_prompt_end(tokenizer: Any, prefix: list[dict[str, Any]], full: str, start: int, text: int) -> int:
    """Where the generation prompt after `prefix` ends, if it renders as a prefix of `full` ending inside
    the turn and before its text; else where the text starts."""
    try:
        end = _prefix_length(tokenizer, prefix, full, True)
    except TemplateError:
        return text
    return end if start <= end <= text else text


def special_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens, longest first."""
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False)
    }
    return sorted(special, key=len, reverse=True)


def _special_at(text: str, i: int, specials: list[str]) -> int:
    return next((len(t) for t in specials if text.startswith(t, i)), 0)


def _find_text(full: str, content: str, start: int, specials: list[str]) -> tuple[int, int] | None:
    """The first place at or after `start` where `content` (or, as templates trim, its stripped text) is
    written and followed by a special token; else its first place at all."""
    for text in dict.fromkeys((content, content.strip())):
        i = first = full.find(text, start)
        while i >= 0:
            if _special_at(full, i + len(text), specials):
                return i, i + len(text)
            i = full.find(text, i + 1)
        if first >= 0:
            return first, first + len(text)
    return None


def _marked(tokenizer: Any, messages: list[dict[str, Any]], turns: list[Turn]) -> list[Turn]:
    """The turns with each assistant turn's content set to what the `{% generation %}` markers select,
    as tokens: the spans of the tokens transformers' assistant mask sets."""
    enc = _apply(
        tokenizer,
        messages,
        False,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        tokenizer_kwargs={"return_offsets_mapping": True},
    )
    spans: dict[int, tuple[int, int]] = {}  # turn -> from its first marked token to its last
    k = 0
    for (s, e), marked in zip(enc["offset_mapping"], enc["assistant_masks"], strict=True):
        if not marked:
            continue
        while k < len(turns) - 1 and s >= turns[k].end:  # tokens and turns are both in text order
            k += 1
        if turns[k].role != "assistant":
            raise TemplateError(
                f"the template's {{% generation %}} markers select text of message {k + 1}, a {turns[k].role} turn"
            )
        spans[k] = (spans[k][0], max(spans[k][1], e)) if k in spans else (s, e)
    return [
        Turn(t.role, t.start, t.end, *spans.get(k, (t.end, t.end))) if t.role == "assistant" else t
        for k, t in enumerate(turns)
    ]


def _apply(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, **kwargs: Any) -> Any:
    """`apply_chat_template` (the text, unless `kwargs` say otherwise); a template's failure is a TemplateError."""
    kwargs.setdefault("tokenize", False)
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, **kwargs)
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise TemplateError(f"the chat template raised {type(exc).__name__}: {exc}") from exc


def _closing(tokenizer: Any, messages: list[dict[str, Any]], full: str) -> int:
    """Characters the template writes after a conversation's last message only: 0, or the shortest tail of
    whole tokens by which the first message's rendering leaves the whole one and with which the whole one
    ends too (Phi-3: its EOS)."""
    if len(messages) < 2:
        return 0
    first = _apply(tokenizer, messages[:1], False)
    if full.startswith(first):
        return 0
    shared = len(os.path.commonprefix([first, full]))
    offsets = tokenizer(first, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    start = max((s for s, _ in offsets if 0 < s <= shared), default=None)
    return len(first) - start if start is not None and full.endswith(first[start:]) else 0


def _prefix_length(
    tokenizer: Any, prefix: list[dict[str, Any]], full: str, generation_prompt: bool, closing: int = 0
) -> int:
    text = _apply(tokenizer, prefix, generation_prompt)
    if closing and not generation_prompt and text.endswith(full[len(full) - closing :]):
        text = text[:-closing]
    if not full.startswith(text):
        raise TemplateError(
            f"the template renders the first {len(prefix)} message(s)"
            f"{' with the generation prompt' * generation_prompt} as text that is not a prefix of the whole "
            "conversation, so turns cannot be located by position. "
            "Use a template that appends each message (chatml, minimal)"
        )
    return len(text)


# --- templates -----------------------------------------------------------------------------------


@dataclass
class Installed:
    """What installing a chat template did to a tokenizer."""

    name: str
    end_of_turn: str
    end_of_turn_id: int
    added_tokens: list[str]
    added_ids: list[int]


def install_template(tokenizer: Any, name: str, template: ChatTemplate) -> Installed:
    """Add the template's special tokens, set `tokenizer.chat_template`, find the end-of-turn token."""
    vocab = tokenizer.get_vocab()
    added = [t for t in dict.fromkeys(template.special_tokens) if t not in vocab]
    if added:
        tokenizer.add_special_tokens({"extra_special_tokens": added}, replace_extra_special_tokens=False)
    if template.template is not None:
        tokenizer.chat_template = template.template(tokenizer) if callable(template.template) else template.template
    elif not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"finetune.chat_template '{name}' uses the tokenizer's own template, and this tokenizer has none. "
            "Choose a template that brings its own (chatml, minimal)."
        )
    eot = template.end_of_turn
    eot = eot(tokenizer) if callable(eot) else eot if eot is not None else infer_end_of_turn(tokenizer, name)
    ids = tokenizer.encode(eot, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(
            f"The end-of-turn token {eot!r} of chat template '{name}' is not one token of this tokenizer "
            f"({len(ids)} tokens). A model cannot learn to stop on it; add it as a special token."
        )
    return Installed(name, eot, ids[0], added, tokenizer.convert_tokens_to_ids(added) if added else [])


PROBE = [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}]


def infer_end_of_turn(tokenizer: Any, name: str) -> str:
    """The first special token the template writes after an assistant's text (e.g. <|eot_id|>, </s>)."""
    rendered = render(tokenizer, PROBE)
    turn = rendered.turns[-1]
    tail = rendered.text[turn.content_start : turn.end]
    answer = PROBE[-1]["content"]
    after = tail[tail.rfind(answer) + len(answer) :] if answer in tail else tail  # not Qwen3's <think> before it
    special = set(special_tokens(tokenizer))
    enc = tokenizer(after, add_special_tokens=False)
    for token_id in enc["input_ids"]:
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token in special:
            return token
    raise ConfigError(
        f"Chat template '{name}' writes no special token after an assistant's text (it writes {tail!r}), so "
        "a fine-tuned model could not learn where its turn ends. Use a template with an end-of-turn token."
    )


# --- masks -> labels -----------------------------------------------------------------------------


def token_mask(offsets: list[tuple[int, int]], spans: Iterable[Span]) -> list[bool]:
    """Per token: does it overlap one of `spans` (character ranges)? Offsets and spans in text order."""
    spans = sorted((s, e) for s, e in spans if e > s)
    mask = [False] * len(offsets)
    i = 0
    for t, (start, end) in enumerate(offsets):
        while i < len(spans) and start >= spans[i][1]:
            i += 1
        if i == len(spans):
            break
        if end > spans[i][0]:
            mask[t] = True
    return mask


# --- rows -> examples ----------------------------------------------------------------------------

UNKNOWN_ROLE = "unknown role"
EMPTY_TURN = "empty turn"
NO_ASSISTANT = "no assistant turn"
ASSISTANT_FIRST = "assistant turn first"


@dataclass
class Example:
    """One rendered, tokenized conversation. `loss[i]`: token i is a target (never the first token)."""

    row: int
    messages: list[dict[str, Any]]
    rendered: Rendered
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    loss: list[bool]

    @property
    def loss_tokens(self) -> int:
        return sum(self.loss)

    def labels(self) -> list[int]:
        return [t if keep else -100 for t, keep in zip(self.input_ids, self.loss, strict=True)]


@dataclass
class Problem:
    """Why a row gives no example: one of the kinds above, and a detail (e.g. the unknown role)."""

    row: int
    kind: str
    detail: str = ""


@dataclass
class Report:
    """Counts of rows that could not be used, by kind, with the first few row numbers of each."""

    rows: int = 0
    kinds: Counter = field(default_factory=Counter)
    unknown_roles: Counter = field(default_factory=Counter)
    first_rows: dict[str, list[int]] = field(default_factory=dict)

    def add(self, problem: Problem) -> None:
        self.kinds[problem.kind] += 1
        if problem.kind == UNKNOWN_ROLE:
            self.unknown_roles[problem.detail] += 1
        rows = self.first_rows.setdefault(problem.kind, [])
        if len(rows) < 5:
            rows.append(problem.row + 1)

    @property
    def dropped(self) -> int:
        return sum(self.kinds.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "dropped": self.dropped,
            "by_kind": dict(self.kinds),
            "unknown_roles": dict(self.unknown_roles),
            "first_rows": self.first_rows,
        }

    def lines(self) -> list[str]:
        return report_lines(self.as_dict())


def located_line(examples: list[Example], names: dict[str, str]) -> str:
    """Where the loss mask's turns came from, said once for a dataset (TRL #4879: a template without
    `{% generation %}` markers must not silently give a wrong mask)."""
    counts = Counter(e.rendered.located for e in examples)
    mask, template = names["loss_mask"], names["chat_template"]
    if set(counts) == {MARKERS}:
        return f"loss mask '{mask}' from {MARKERS} (transformers' assistant mask)"
    how = (
        " and ".join(f"{how} ({n:,} row{'s' * (n != 1)})" for how, n in counts.most_common())
        if len(counts) > 1
        else next(iter(counts))
    )
    return f"chat template '{template}' has no {{% generation %}} markers: loss mask '{mask}' from {how}"


def report_lines(report: dict[str, Any]) -> list[str]:
    """One line per kind of dropped row, from `Report.as_dict()` (as kept in finetune/data's manifest)."""
    out = []
    for kind, n in sorted(report["by_kind"].items(), key=lambda kv: -kv[1]):
        extra = ""
        if kind == UNKNOWN_ROLE:
            extra = " (" + ", ".join(f"'{r}' x{c}" for r, c in report["unknown_roles"].items()) + ")"
        rows = ", ".join(map(str, report["first_rows"].get(kind, [])))
        out.append(f"dropped {n} row(s) with {kind}{extra}: rows {rows}{', ...' if n > 5 else ''}")
    return out


class ExampleBuilder:
    """Turns data rows into `Example`s with one format, one installed template and one loss mask."""

    def __init__(
        self,
        tokenizer: Any,
        fmt: Format,
        mask: LossMask,
        names: dict[str, str],
        system_prompt: str | None = None,
        where: str = "the finetune data",
        other_formats: dict[str, Format] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.format = fmt
        self.mask = mask
        self.names = names  # {"format": ..., "chat_template": ..., "loss_mask": ...}
        self.system_prompt = system_prompt
        self.where = where
        self.other_formats = other_formats or {}

    # one row ----------------------------------------------------------------------------------------
    def messages(self, row: dict[str, Any], index: int) -> list[dict[str, Any]] | Problem:
        """The row's messages, or the first problem that makes it unusable (counted by the caller)."""
        self._check_fields(row, index)
        try:
            raw = self.format.to_messages(row)
        except FormatMismatch as exc:
            raise self._mismatch(index, str(exc)) from exc
        messages = []
        for turn, m in enumerate(raw, start=1):
            role, content = m.get("role"), m.get("content")
            if content is not None and not isinstance(content, str):
                raise self._mismatch(
                    index, f"turn {turn} holds {type(content).__name__} content {str(content)[:40]!r}, not text"
                )
            if role not in ROLES:
                return Problem(index, UNKNOWN_ROLE, str(role))
            if not content or not content.strip():
                return Problem(index, EMPTY_TURN, f"turn {turn} ({role})")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            return Problem(index, NO_ASSISTANT)
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if messages[0]["role"] == "assistant":
            return Problem(index, ASSISTANT_FIRST)
        return messages

    def example(self, row: dict[str, Any], index: int) -> Example | Problem:
        messages = self.messages(row, index)
        if isinstance(messages, Problem):
            return messages
        return self.examples([(index, messages)])[0]

    # many rows --------------------------------------------------------------------------------------
    def build(self, rows: Iterable[dict[str, Any]], report: Report, batch: int = 512) -> list[Example]:
        examples: list[Example] = []
        pending: list[tuple[int, list[dict[str, Any]]]] = []
        for index, row in enumerate(rows):
            report.rows += 1
            messages = self.messages(row, index)
            if isinstance(messages, Problem):
                report.add(messages)
                continue
            pending.append((index, messages))
            if len(pending) == batch:
                examples += self.examples(pending)
                pending = []
        if pending:
            examples += self.examples(pending)
        return examples

    def examples(self, items: list[tuple[int, list[dict[str, Any]]]]) -> list[Example]:
        """Render, tokenize (in one batch) and mask conversations."""
        rendered = []
        for index, messages in items:
            try:
                rendered.append(render(self.tokenizer, messages))
            except TemplateError as exc:
                raise TemplateError(
                    f"Row {index + 1} of {self.where}: chat template '{self.names['chat_template']}': {exc}."
                ) from exc
        enc = self.tokenizer(
            [r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        out = []
        for (index, messages), r, ids, offsets in zip(
            items, rendered, enc["input_ids"], enc["offset_mapping"], strict=True
        ):
            try:
                spans = self.mask.select(r)
            except MaskError as exc:
                raise DataError(
                    f"Row {index + 1} of {self.where}: loss mask '{self.names['loss_mask']}' {exc}."
                ) from exc
            loss = token_mask(offsets, spans)
            if loss:
                loss[0] = False  # nothing predicts the first token
            example = Example(index, messages, r, list(ids), [tuple(o) for o in offsets], loss)
            self._check_mask(example)
            out.append(example)
        return out

    # checks -----------------------------------------------------------------------------------------
    def _check_fields(self, row: dict[str, Any], index: int) -> None:
        for name in self.format.fields:
            if row.get(name) is None:
                raise self._mismatch(index, f"it has no field '{name}'", row)

    def _mismatch(self, index: int, detail: str, row: dict[str, Any] | None = None) -> DataError:
        fmt = self.names["format"]
        needs = ", ".join(self.format.fields) + (
            f" (optional: {', '.join(self.format.optional)})" if self.format.optional else ""
        )
        msg = f"Row {index + 1} of {self.where} does not match format '{fmt}': {detail}. Format '{fmt}' reads {needs}."
        if row is not None:
            present = sorted(k for k, v in row.items() if v is not None)
            msg += f" The row's fields: {', '.join(present) or 'none'}."
            fits = [
                n for n, f in self.other_formats.items() if n != fmt and all(row.get(x) is not None for x in f.fields)
            ]
            if fits:
                msg += f" It looks like format {' or '.join(repr(n) for n in fits)}: set finetune.format."
        return DataError(msg)

    def _check_mask(self, example: Example) -> None:
        targets = example.loss[1:]
        name = self.names["loss_mask"]
        if not any(targets):
            raise DataError(
                f"Loss mask '{name}' selects no token of row {example.row + 1} of {self.where} (chat template "
                f"'{self.names['chat_template']}'), so it would train on nothing. "
                f"Rendered: {example.rendered.text[:300]!r}"
            )
        if all(targets) and not self.mask.covers_everything:
            raise DataError(
                f"Loss mask '{name}' selects every token of row {example.row + 1} of {self.where} (chat template "
                f"'{self.names['chat_template']}'): the prompt would be trained as if the model wrote it. Check "
                f"that the template marks turns (rendered: {example.rendered.text[:300]!r}), or use loss_mask: all."
            )
