"""Loss masks (plugins/llmforge_chat/masks.py) and character spans -> token labels (llmforge.chat.conversations).

The reference is transformers' own `apply_chat_template(..., return_assistant_tokens_mask=True)` on
templates with `{% generation %}` markers, on multi-turn conversations with a system message.
"""

from __future__ import annotations

import pytest

from chat_helpers import CHAT, OWN, registry, tiny_tokenizer
from llmforge.chat.conversations import ExampleBuilder, LossMask, Report, install_template, token_mask
from llmforge.errors import DataError

CONVERSATIONS = [
    CHAT,
    CHAT[1:3],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello, how are you this morning?"},
        {"role": "assistant", "content": "Très bien, merci ! Et vous ?"},
        {"role": "user", "content": "Fine.\nWhat is 2 + 2?"},
        {"role": "assistant", "content": "Quatre.\n"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "  De rien."},
    ],
]


@pytest.fixture(scope="module")
def toks(corpus_text):
    out = {}
    for name in ("chatml", "minimal"):
        tok = tiny_tokenizer(corpus_text)
        install_template(tok, name, registry("chat_template").get(name))
        out[name] = tok
    own = tiny_tokenizer(corpus_text)
    own.chat_template = OWN
    install_template(own, "tokenizer", registry("chat_template").get("tokenizer"))
    out["tokenizer"] = own
    return out


def build(tok, mask: str | LossMask, template: str = "chatml", conversations=CONVERSATIONS):
    mask_obj = registry("loss_mask").get(mask) if isinstance(mask, str) else mask
    b = ExampleBuilder(
        tok,
        registry("format").get("messages"),
        mask_obj,
        {"format": "messages", "chat_template": template, "loss_mask": mask if isinstance(mask, str) else "custom"},
    )
    return b.build([{"messages": c} for c in conversations], Report())


@pytest.mark.parametrize("template", ["chatml", "minimal", "tokenizer"])
def test_assistant_only_equals_transformers_generation_mask(toks, template):
    tok = toks[template]
    for example, conversation in zip(build(tok, "assistant_only", template), CONVERSATIONS, strict=True):
        ref = tok.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
        assert example.input_ids == ref["input_ids"]
        assert example.loss == [bool(m) for m in ref["assistant_masks"]]


def test_assistant_only_trains_each_answer_and_its_end_of_turn_not_the_prompt(toks):
    tok = toks["chatml"]
    example = build(tok, "assistant_only", conversations=[CHAT])[0]
    text = example.rendered.text
    trained = "".join(text[s:e] for (s, e), keep in zip(example.offsets, example.loss, strict=True) if keep)
    assert trained == "A proud gentleman.<|im_end|>Elizabeth's elder sister.<|im_end|>"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ends = [i for i, t in enumerate(example.input_ids) if t == im_end]
    assert [example.loss[i] for i in ends] == [False, False, True, False, True]  # system, user, asst, user, asst
    labels = example.labels()
    assert labels[ends[2]] == im_end and labels[ends[1]] == -100


def test_last_assistant_trains_only_the_final_answer(toks):
    example = build(toks["chatml"], "last_assistant", conversations=[CHAT])[0]
    text = example.rendered.text
    trained = "".join(text[s:e] for (s, e), keep in zip(example.offsets, example.loss, strict=True) if keep)
    assert trained == "Elizabeth's elder sister.<|im_end|>"


def test_all_trains_every_token_but_the_first(toks):
    example = build(toks["chatml"], "all", conversations=[CHAT])[0]
    assert example.loss[0] is False and all(example.loss[1:])
    assert example.labels()[0] == -100


def test_completion_only_trains_everything_after_the_prompt(toks):
    tok = toks["chatml"]
    example = build(tok, "completion_only", conversations=[CHAT[:3]])[0]
    text = example.rendered.text
    first = next(i for i, keep in enumerate(example.loss) if keep)
    assert text[: example.offsets[first][0]] == tok.apply_chat_template(
        CHAT[:2], tokenize=False, add_generation_prompt=True
    )
    assert all(example.loss[first:])  # the answer, <|im_end|> and the template's closing newline


def test_completion_only_refuses_multi_turn_naming_the_row(toks):
    with pytest.raises(DataError, match=r"Row 1 of the finetune data: loss mask 'completion_only' needs one prompt"):
        build(toks["chatml"], "completion_only", conversations=[CHAT])


def test_a_mask_that_selects_nothing_fails_loudly(toks):
    nothing = LossMask(lambda r: [])
    with pytest.raises(DataError, match="Loss mask 'custom' selects no token of row 1 of the finetune data"):
        build(toks["chatml"], nothing)


def test_a_mask_that_selects_everything_fails_loudly_unless_it_means_to(toks):
    everything = LossMask(lambda r: [(0, len(r.text))])
    with pytest.raises(DataError, match="selects every token of row 1 .*the prompt would be trained"):
        build(toks["chatml"], everything)


def test_loss_share_differs_by_mask(toks):
    shares = {}
    for mask in ("all", "assistant_only", "last_assistant"):
        examples = build(toks["chatml"], mask)
        shares[mask] = sum(e.loss_tokens for e in examples) / sum(len(e.input_ids) for e in examples)
    assert shares["all"] > shares["assistant_only"] > shares["last_assistant"] > 0


def test_token_mask_marks_tokens_overlapping_a_span():
    offsets = [(0, 3), (3, 5), (5, 9), (9, 10), (10, 14)]
    assert token_mask(offsets, [(4, 6)]) == [False, True, True, False, False]  # straddling tokens count
    assert token_mask(offsets, [(9, 10), (0, 1)]) == [True, False, False, True, False]
    assert token_mask(offsets, [(5, 5)]) == [False] * 5  # an empty span selects nothing
    assert token_mask([], [(0, 4)]) == []
