"""A third-party llmforge data source: Project Gutenberg books, without their licence boilerplate.

Use it in a recipe once installed (`pip install examples/llmforge-gutenberg`):

    data:
      source: gutenberg
      path: books/            # .txt files as downloaded from gutenberg.org
      options: {min_chars: 40}

Each paragraph between the "*** START OF ..." and "*** END OF ..." markers becomes one document.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from llmforge import DataConfig, DataError, hookimpl

START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE | re.IGNORECASE)
END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE | re.IGNORECASE)


@hookimpl
def register_data_sources(register) -> None:
    register("gutenberg", load_gutenberg)


def strip_boilerplate(text: str) -> str:
    """The book between the START and END markers (the whole text if there are none)."""
    start, end = START.search(text), END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def load_gutenberg(config: DataConfig) -> datasets.Dataset:
    if not config.path:
        raise DataError("data.path is required for source 'gutenberg': a .txt file or a directory of them.")
    root = Path(config.path if isinstance(config.path, str) else config.path[0])
    files = sorted(root.glob("*.txt")) if root.is_dir() else [root]
    if not files or not files[0].exists():
        raise DataError(f"No Project Gutenberg .txt file at '{root}'.")
    min_chars = int(config.options.get("min_chars", 1))
    docs = []
    for path in files:
        text = strip_boilerplate(path.read_text(encoding=config.encoding).replace("\r\n", "\n"))
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= min_chars:
                docs.append(para)
    return datasets.Dataset.from_dict({config.text_column: docs})
