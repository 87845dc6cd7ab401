"""Build the small local Deep Lake dataset the recipe's `smoke:` block reads (the bundled Austen corpus, one
paragraph per row, with OpenWebText's `text` column).

    python examples/openwebtext_deeplake/make_smoke_data.py [PATH]   # default: smoke-data/owt beside this file
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "data" / "corpus"


def build(path: Path, max_rows: int = 2000) -> Path:
    import deeplake

    rows = []
    for book in sorted(CORPUS.glob("*.txt")):
        rows += [p.strip() for p in book.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    ds = deeplake.create(str(path))
    ds.add_column("text", deeplake.types.Text())
    ds.append({"text": rows[:max_rows]})
    ds.commit()
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "smoke-data" / "owt"
    print(f"wrote {build(target)}")
