"""Build data/austen_chapters.parquet from the bundled corpus: one row per chapter, the text in a
column called `section_text`, like the Feynman Lectures parquet of the seed tutorial.

    python examples/parquet_text/make_parquet.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "data" / "corpus"
CHAPTER = re.compile(r"^(Chapter|CHAPTER) [0-9IVXLC]+\.?\s*$", re.MULTILINE)


def chapters(book: Path) -> list[dict[str, str]]:
    text = book.read_text(encoding="utf-8")
    marks = list(CHAPTER.finditer(text))
    rows = []
    for i, mark in enumerate(marks):
        body = text[mark.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
        if body:
            rows.append({"book": book.stem, "section_title": mark.group(0).strip(), "section_text": body})
    return rows


def main() -> Path:
    rows = [row for book in sorted(CORPUS.glob("*.txt")) for row in chapters(book)]
    out = HERE / "data" / "austen_chapters.parquet"
    out.parent.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(out, index=False)
    print(f"wrote {out}: {len(rows)} chapters from {len({r['book'] for r in rows})} books")
    return out


if __name__ == "__main__":
    main()
