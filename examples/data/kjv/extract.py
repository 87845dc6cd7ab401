"""Rebuild this folder from Debian's King James Version: `apt-get install bible-kjv` (which brings
bible-kjv-text 4.38), then `python examples/data/kjv/extract.py`. One file per book, one verse per line
(its reference dropped), a blank line between chapters. The held-out book shares no line with the others."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = {"Ge": "genesis", "Exo": "exodus", "Num": "numbers", "Deu": "deuteronomy", "Josh": "joshua",
         "Jdgs": "judges", "1Sm": "1_samuel", "2Sm": "2_samuel"}  # fmt: skip
HELD_OUT = {"1Ki": "1_kings"}
VERSE = re.compile(r"([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)")


def main() -> None:
    text = subprocess.run(["bible", "-f", "Ge1:1-Re22:21"], capture_output=True, text=True, check=True).stdout
    books: dict[str, list[tuple[int, str]]] = {}
    for line in text.splitlines():
        match = VERSE.fullmatch(line.strip())
        if match and match[1] in TRAIN | HELD_OUT:
            books.setdefault(match[1], []).append((int(match[2]), match[4].strip()))
    for code, name in (TRAIN | HELD_OUT).items():
        out, chapter = [], None
        for number, verse in books[code]:
            if chapter is not None and number != chapter:
                out.append("")
            out.append(verse)
            chapter = number
        folder = HERE / ("held_out" if code in HELD_OUT else "train")
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    seen = {line for p in (HERE / "train").glob("*.txt") for line in p.read_text().splitlines() if line}
    shared = [line for p in (HERE / "held_out").glob("*.txt") for line in p.read_text().splitlines() if line in seen]
    print(f"{len(shared)} held-out lines also in the training books")  # drop them from the held-out book
    for p in (HERE / "held_out").glob("*.txt"):
        kept = [line for line in p.read_text().splitlines() if not line or line not in seen]
        p.write_text("\n".join(kept) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
