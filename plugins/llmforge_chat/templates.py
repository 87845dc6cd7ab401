"""Chat templates: Jinja text installed into the tokenizer and saved with it.

Every template marks what the assistant writes with `{% generation %}` ... `{% endgeneration %}`, so
`tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)` works on a saved model dir
as well, and llmforge's own loss masks come from those markers (see llmforge.chat.conversations).
"""

from __future__ import annotations

import json
from typing import Any

from llmforge import ChatTemplate, ConfigError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML as OpenAI and Qwen write it: <|im_start|>role\ncontent<|im_end|>\n
CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# The seed tutorial's template: bos + a role line + content + eos, with the tokenizer's own tokens.
MINIMAL = (
    "{%- for message in messages -%}"
    "{{- BOS + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + EOS -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + EOS -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- BOS + 'assistant\\n' -}}{%- endif -%}"
)


def _eos(tokenizer: Any) -> str:
    if tokenizer.eos_token is None:
        raise ConfigError("Chat template 'minimal' ends turns with the EOS token, and this tokenizer has none.")
    return tokenizer.eos_token


def minimal(tokenizer: Any) -> str:
    """MINIMAL with this tokenizer's BOS (EOS where it has none) and EOS written in as literals.

    Literals keep the saved template independent of which special tokens a later loader maps."""
    eos = _eos(tokenizer)
    bos = tokenizer.bos_token or eos
    return MINIMAL.replace("BOS", json.dumps(bos)).replace("EOS", json.dumps(eos))


TEMPLATES = {
    "chatml": ChatTemplate(CHATML, (IM_START, IM_END), IM_END, "<|im_start|>role ... <|im_end|> (adds both tokens)"),
    "minimal": ChatTemplate(minimal, (), _eos, "bos + role line + content + eos (the seed's; adds no token)"),
    "tokenizer": ChatTemplate(None, (), None, "the base tokenizer's own template; end of turn found by rendering"),
}
