"""Built-in chat pieces for fine-tuning: row formats, chat templates and loss masks.

Registered through the `llmforge` entry-point group like any third-party plugin:

* formats: alpaca, dolly, sharegpt, messages, prompt_completion (llmforge_chat.formats)
* chat templates: chatml, minimal, tokenizer (llmforge_chat.templates)
* loss masks: all, assistant_only, last_assistant, completion_only (llmforge_chat.masks)
"""

from __future__ import annotations

from llmforge import hookimpl
from llmforge_chat.formats import FORMATS
from llmforge_chat.masks import MASKS
from llmforge_chat.templates import TEMPLATES


@hookimpl
def register_formats(register) -> None:
    for name, fmt in FORMATS.items():
        register(name, fmt)


@hookimpl
def register_chat_templates(register) -> None:
    for name, template in TEMPLATES.items():
        register(name, template)


@hookimpl
def register_loss_masks(register) -> None:
    for name, mask in MASKS.items():
        register(name, mask)
