"""Deep Lake read throughput: llmforge's `deeplake` source against Deep Lake's own `pytorch()` loader.

Both read the `text` column of the same local Deep Lake dataset (the bundled corpus, one paragraph
per row, repeated to --rows). Contenders, in one process:
  llmforge   the data source's `stream_batches` (`ds.batches(256)`, how training and preparation read)
  pytorch    `ds.pytorch()` iterated row by row (the seed tutorial's loader), on the first --loader-rows
Each time includes opening the dataset, not importing the packages.
Target (issue 10: read in batches because the row loader measured ~20x slower): llmforge at least 10x
the loader's rows/s.

    python benchmarks/deeplake_read.py            # 200,000 rows, loader on 20,000
    python benchmarks/deeplake_read.py --smoke    # 20,000 rows, loader on 2,000
Needs `pip install 'llmforge[deeplake]'`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import arguments, corpus_text, machine, target  # noqa: E402


def build(path: Path, rows: int) -> int:
    """A local Deep Lake dataset of `rows` paragraphs; returns its text bytes."""
    import deeplake

    paragraphs = [p.strip() for p in corpus_text().split("\n\n") if p.strip()]
    texts = [paragraphs[i % len(paragraphs)] for i in range(rows)]
    ds = deeplake.create(str(path))
    ds.add_column("text", deeplake.types.Text())
    for a in range(0, rows, 50_000):
        ds.append({"text": texts[a : a + 50_000]})
    ds.commit()
    return sum(len(t.encode()) for t in texts)


def read_llmforge(path: Path) -> int:
    from llmforge.config.schema import DataConfig
    from llmforge_deeplake import load_deeplake  # imported before the clock starts (main)

    source = load_deeplake(DataConfig(source="deeplake", path=str(path), text_column="text"))
    return sum(len(texts) for texts, _ in source.stream_batches(None, 256, 0, None))


def read_pytorch(path: Path, rows: int) -> int:
    import deeplake

    n = 0
    for n, row in enumerate(deeplake.open_read_only(str(path)).pytorch(), start=1):
        assert isinstance(row["text"], str)
        if n >= rows:
            break
    return n


def timed(fn, *args) -> tuple[int, float]:
    started = time.perf_counter()
    rows = fn(*args)
    return rows, time.perf_counter() - started


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--loader-rows", type=int)
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.smoke else 200_000)
    loader_rows = args.loader_rows or rows // 10
    print(machine(1))
    import llmforge_deeplake  # noqa: F401  the clock times opening and reading, not importing llmforge

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds"
        size = build(path, rows)
        print(f"dataset: {rows:,} rows, {size / 2**20:,.0f} MB of text, local")
        ours, ours_s = timed(read_llmforge, path)
        theirs, theirs_s = timed(read_pytorch, path, loader_rows)
    assert ours == rows, (ours, rows)
    print(
        f"llmforge  {ours:9,} rows in {ours_s:6.2f} s: {ours / ours_s:10,.0f} rows/s, {size / ours_s / 2**20:,.0f} MB/s"
    )
    print(f"pytorch   {theirs:9,} rows in {theirs_s:6.2f} s: {theirs / theirs_s:10,.0f} rows/s")
    ratio = (ours / ours_s) / (theirs / theirs_s)
    print(f"ratio llmforge / pytorch() loader rows/s: {ratio:.1f}")
    print(target("deeplake_batches_vs_pytorch_loader", ratio, ">=", 10.0, "{:.1f}"))


if __name__ == "__main__":
    main()
