"""Chat templates (plugins/llmforge_chat/templates.py): rendering, special tokens, end of turn, saving."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from chat_helpers import CHAT, EOS, OWN, registry, tiny_tokenizer
from llmforge.chat.conversations import (
    MARKERS,
    TEXTS,
    ChatTemplate,
    Example,
    TemplateError,
    install_template,
    located_line,
    render,
)
from llmforge.errors import ConfigError, PluginError

CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWho is Mr. Darcy?<|im_end|>\n"
    "<|im_start|>assistant\nA proud gentleman.<|im_end|>\n"
    "<|im_start|>user\nAnd Jane Bennet?<|im_end|>\n"
    "<|im_start|>assistant\nElizabeth's elder sister.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def text(corpus_text):
    return corpus_text


def fresh(text, name):
    tok = tiny_tokenizer(text)
    return tok, install_template(tok, name, registry("chat_template").get(name))


def test_chatml_adds_its_tokens_and_renders_chatml(text):
    tok, installed = fresh(text, "chatml")
    assert installed.added_tokens == ["<|im_start|>", "<|im_end|>"]
    assert installed.added_ids == [400, 401] and len(tok) == 402
    assert (installed.end_of_turn, installed.end_of_turn_id) == ("<|im_end|>", 401)
    assert tok.apply_chat_template(CHAT, tokenize=False) == CHATML_TEXT
    prompt = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWho is Mr. Darcy?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(CHATML_TEXT, add_special_tokens=False)["input_ids"]
    assert ids.count(401) == 5 and ids.count(400) == 5  # each marker is one token, never split
    assert tok.decode(ids, skip_special_tokens=True).startswith("system\nBe brief.\nuser\n")


def test_installing_twice_adds_nothing_new(text):
    tok, _ = fresh(text, "chatml")
    again = install_template(tok, "chatml", registry("chat_template").get("chatml"))
    assert again.added_tokens == [] and len(tok) == 402


def test_minimal_is_bos_role_line_content_eos_with_the_tokenizers_tokens(text):
    tok, installed = fresh(text, "minimal")
    assert installed.added_tokens == [] and len(tok) == 400
    assert (installed.end_of_turn, installed.end_of_turn_id) == (EOS, tok.eos_token_id)
    rendered = tok.apply_chat_template(CHAT[1:3], tokenize=False, add_generation_prompt=False)
    assert rendered == f"{EOS}user\nWho is Mr. Darcy?{EOS}{EOS}assistant\nA proud gentleman.{EOS}"
    prompt = tok.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{EOS}user\nWho is Mr. Darcy?{EOS}{EOS}assistant\n"


def test_minimal_needs_an_eos_token(text):
    tok = tiny_tokenizer(text)
    tok.eos_token = None
    tok.bos_token = None
    with pytest.raises(ConfigError, match="'minimal' ends turns with the EOS token, and this tokenizer has none"):
        install_template(tok, "minimal", registry("chat_template").get("minimal"))


@pytest.mark.parametrize("name", ["chatml", "minimal"])
def test_saved_template_works_after_from_pretrained(text, tmp_path, name):
    tok, _ = fresh(text, name)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == tok.chat_template
    assert loaded.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)
    out = loaded.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    assert 0 < sum(out["assistant_masks"]) < len(out["input_ids"])  # its {% generation %} markers work


def test_tokenizer_template_keeps_the_tokenizers_own_and_finds_its_end_of_turn(text):
    tok = tiny_tokenizer(text)
    tok.chat_template = OWN
    installed = install_template(tok, "tokenizer", registry("chat_template").get("tokenizer"))
    assert tok.chat_template == OWN and installed.added_tokens == []
    assert installed.end_of_turn == EOS


def test_tokenizer_template_without_one_is_a_clear_error(text):
    with pytest.raises(ConfigError, match="uses the tokenizer's own template, and this tokenizer has none"):
        fresh(text, "tokenizer")


def test_template_without_an_end_of_turn_token_is_refused(text):
    tok = tiny_tokenizer(text)
    plain = ChatTemplate("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}")
    # no generation prompt either, so the whole turn is the assistant's to write
    with pytest.raises(
        ConfigError, match=r"no special token after an assistant's text \(it writes 'assistant: Yes\.\\n'\)"
    ):
        install_template(tok, "plain", plain)


def test_unknown_template_name_lists_the_known_ones():
    with pytest.raises(PluginError) as info:
        registry("chat_template").get("chatlm")
    msg = str(info.value)
    assert msg.startswith("No chat template named 'chatlm'. Known (closest first): chatml")
    assert "minimal" in msg and "tokenizer" in msg


def test_turns_are_located_in_the_rendered_text(text):
    tok, _ = fresh(text, "chatml")
    r = render(tok, CHAT)
    assert r.text == CHATML_TEXT
    assert [t.role for t in r.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert r.turns[-1].end == len(CHATML_TEXT) and r.turns[0].start == 0
    first = r.turns[2]
    assert r.text[first.start : first.content_start] == "<|im_start|>assistant\n"  # the generation prompt
    assert r.text[first.content_start : first.content_end] == "A proud gentleman.<|im_end|>"
    assert r.text[first.content_end : first.end] == "\n"


def test_a_template_that_rewrites_earlier_turns_is_located_by_each_messages_text(text):
    tok = tiny_tokenizer(text)  # the count in front changes once more turns follow: no prefix renders as a prefix
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    r = render(tok, CHAT[1:4])
    assert r.located == TEXTS
    assert r.text == f"3Who is Mr. Darcy?{EOS}A proud gentleman.{EOS}And Jane Bennet?{EOS}"
    user, answer, again = r.turns
    assert (user.start, user.end) == (0, len(f"3Who is Mr. Darcy?{EOS}"))
    assert r.text[answer.content_start : answer.content_end] == f"A proud gentleman.{EOS}"
    assert (again.start, again.end) == (answer.end, len(r.text))


def test_a_template_that_rewrites_earlier_turns_and_their_text_cannot_be_masked(text):
    tok = tiny_tokenizer(text)
    tok.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] | upper + eos_token }}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="not a prefix of the whole conversation.*nor does message 1's text appear"):
        render(tok, CHAT[1:3])


def test_an_assistant_text_without_an_end_of_turn_after_it_cannot_be_located_by_text(text):
    tok = tiny_tokenizer(text)
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(TemplateError, match="no special token right after assistant message 2's text"):
        render(tok, CHAT[1:3])


def test_templates_render_in_transformers_sandbox(text):
    tok = tiny_tokenizer(text)
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError, match="SecurityError"):
        render(tok, CHAT[1:3])


MARKED_WITHOUT_END = (  # markers around the text only, not the end of turn: the mask follows the markers
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}{{ eos_token }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def test_generation_markers_decide_the_assistant_content(text):
    tok = tiny_tokenizer(text)
    tok.chat_template = MARKED_WITHOUT_END
    r = render(tok, CHAT)
    assert r.located == MARKERS
    assert [r.text[t.content_start : t.content_end] for t in r.assistant_turns()] == [
        "A proud gentleman.",
        "Elizabeth's elder sister.",
    ]


def test_generation_markers_around_a_user_turn_are_refused(text):
    tok = tiny_tokenizer(text)
    tok.chat_template = OWN.replace("m['role'] == 'assistant'", "m['role'] == 'user'")
    with pytest.raises(TemplateError, match=r"generation %\} markers select text of message 2, a user turn"):
        render(tok, CHAT)


def test_the_printed_line_says_where_the_mask_came_from(text):
    tok, _ = fresh(text, "chatml")
    names = {"format": "messages", "chat_template": "chatml", "loss_mask": "assistant_only"}
    examples = [Example(0, CHAT, render(tok, CHAT), [], [], [])]
    assert located_line(examples, names) == (
        "loss mask 'assistant_only' from the template's {% generation %} markers (transformers' assistant mask)"
    )
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    prefixes = Example(0, CHAT, render(tok, CHAT), [], [], [])
    tok.chat_template = "{{ messages | length }}" + tok.chat_template
    texts = Example(1, CHAT, render(tok, CHAT), [], [], [])
    assert located_line([prefixes, texts, texts], {**names, "chat_template": "tokenizer"}) == (
        "chat template 'tokenizer' has no {% generation %} markers: loss mask 'assistant_only' from the character "
        "offsets of each message's text (2 rows) and the character offsets of rendered prefixes (1 row)"
    )
