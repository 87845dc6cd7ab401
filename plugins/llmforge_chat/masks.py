"""Loss masks: which characters of a rendered conversation the model is trained to write.

The core turns the character spans into token labels by offset mapping and refuses a mask that selects
no token or (except `all`) every token of an example.
"""

from __future__ import annotations

from llmforge import LossMask, MaskError, Rendered, Span


def everything(r: Rendered) -> list[Span]:
    """Every token (plain language modelling on the rendered text, template markup included)."""
    return [(0, len(r.text))]


def assistant_only(r: Rendered) -> list[Span]:
    """Every assistant turn: its text and its end-of-turn token, not the generation prompt before it."""
    return [(t.content_start, t.content_end) for t in r.assistant_turns()]


def last_assistant(r: Rendered) -> list[Span]:
    """Only the last assistant turn (what the seed tutorial trained), the earlier turns as context."""
    last = r.assistant_turns()[-1]
    return [(last.content_start, last.content_end)]


def completion_only(r: Rendered) -> list[Span]:
    """A prompt/completion pair: everything after the prompt (generation prompt included in the prompt)."""
    answers = r.assistant_turns()
    if len(answers) != 1 or r.turns[-1].role != "assistant":
        raise MaskError(
            f"needs one prompt and one completion (a single assistant turn at the end); this conversation has "
            f"{len(answers)} assistant turn(s) and ends with a {r.turns[-1].role} turn. "
            "Use assistant_only or last_assistant for multi-turn data"
        )
    return [(answers[0].content_start, len(r.text))]


MASKS = {
    "all": LossMask(everything, covers_everything=True, description=everything.__doc__ or ""),
    "assistant_only": LossMask(assistant_only, description=assistant_only.__doc__ or ""),
    "last_assistant": LossMask(last_assistant, description=last_assistant.__doc__ or ""),
    "completion_only": LossMask(completion_only, description=completion_only.__doc__ or ""),
}
