"""`chat_template: tokenizer` on each family's own template (tests/family_bases.py): llmforge renders what
transformers' apply_chat_template renders, its assistant_only mask is transformers' generation mask (for a
template without markers, the mask transformers gives the same template with them), and the end of turn
it infers is the family's."""

from __future__ import annotations

import pytest

from chat_helpers import CHAT, registry
from family_bases import FAMILY_SPECS, family_tokenizer
from llmforge.chat.conversations import MARKERS, PREFIXES, TEXTS, ExampleBuilder, Report, install_template

TEMPLATED = [name for name, spec in FAMILY_SPECS.items() if spec.template]

WITH_SYSTEM = [
    CHAT,
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello, how are you this morning?"},
        {"role": "assistant", "content": "Très bien, merci ! Et vous ?"},
        {"role": "user", "content": "Fine.\nWhat is 2 + 2?"},
        {"role": "assistant", "content": "Quatre."},
    ],
]
NO_SYSTEM = [c[1:] for c in WITH_SYSTEM]


@pytest.fixture(scope="module")
def toks(corpus_text):
    out = {}
    for name in TEMPLATED:
        tok = family_tokenizer(FAMILY_SPECS[name], corpus_text)
        out[name] = (tok, install_template(tok, "tokenizer", registry("chat_template").get("tokenizer")))
    return out


def conversations(name):
    return (WITH_SYSTEM if FAMILY_SPECS[name].system_turns else []) + NO_SYSTEM


@pytest.mark.parametrize("name", TEMPLATED)
def test_the_rendering_and_the_mask_are_transformers_own(toks, name):
    tok, _ = toks[name]
    builder = ExampleBuilder(
        tok,
        registry("format").get("messages"),
        registry("loss_mask").get("assistant_only"),
        {"format": "messages", "chat_template": "tokenizer", "loss_mask": "assistant_only"},
    )
    convs = conversations(name)
    examples = builder.build([{"messages": c} for c in convs], Report())
    assert len(examples) == len(convs)
    spec = FAMILY_SPECS[name]
    for example, conversation in zip(examples, convs, strict=True):
        assert example.rendered.text == tok.apply_chat_template(conversation, tokenize=False)
        ref = tok.apply_chat_template(
            conversation, chat_template=spec.marked, return_dict=True, return_assistant_tokens_mask=True
        )
        if spec.marked is None:
            assert example.rendered.located == MARKERS
        else:  # Qwen3 renders an answer differently once a user turn follows it: no prefix is a prefix
            multi_turn = sum(m["role"] == "user" for m in conversation) > 1
            assert example.rendered.located == (TEXTS if name == "qwen3" and multi_turn else PREFIXES)
        assert example.input_ids == ref["input_ids"]
        assert example.loss == [bool(m) for m in ref["assistant_masks"]]
        assert any(example.loss) and not all(example.loss)


@pytest.mark.parametrize("name", TEMPLATED)
def test_the_end_of_turn_is_the_familys(toks, name):
    tok, installed = toks[name]
    assert installed.end_of_turn == FAMILY_SPECS[name].end_of_turn
    assert installed.added_tokens == []  # the tokenizer's own template brings no tokens of its own
    assert tok.convert_ids_to_tokens(installed.end_of_turn_id) == FAMILY_SPECS[name].end_of_turn


def test_a_template_that_is_no_prefix_of_itself_is_masked_by_its_markers(toks):
    """Qwen3's layout with markers added (as TRL's training templates do): transformers' mask, exactly."""
    tok, _ = toks["qwen3"]
    marked = FAMILY_SPECS["qwen3"].marked
    builder = ExampleBuilder(
        tok,
        registry("format").get("messages"),
        registry("loss_mask").get("assistant_only"),
        {"format": "messages", "chat_template": "tokenizer", "loss_mask": "assistant_only"},
    )
    original, tok.chat_template = tok.chat_template, marked
    try:
        examples = builder.build([{"messages": c} for c in WITH_SYSTEM], Report())
        for example, conversation in zip(examples, WITH_SYSTEM, strict=True):
            ref = tok.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
            assert example.rendered.located == MARKERS
            assert example.loss == [bool(m) for m in ref["assistant_masks"]]
    finally:
        tok.chat_template = original
