"""Peak memory (RSS) of data preparation and of streaming training at two corpus sizes, 10x apart.

Contenders, each a fresh process (peak RSS of the process and of any workers it started):
  prepare-S / prepare-10S   `llmforge prepare` of a text corpus of S and 10 S: the text source on its
                            on-disk path (arrowio.write_texts), the split, the tokenizer, the sharded
                            token store
  stream-S / stream-10S     streaming pretraining (data.streaming: true) over the same corpora
Targets (issue 11 item 4, issue 10): peak RSS of preparing the large corpus at most 1 GB, and neither
path growing with the corpus (large / small at most 1.25).

    python benchmarks/memory.py             # 200 MB and 2 GB
    python benchmarks/memory.py --smoke     # 5 MB and 50 MB, under 2 minutes
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import AnonymousPeak, arguments, corpus_text, emit, machine, run_contender, target  # noqa: E402


def write_corpus(path: Path, megabytes: int) -> int:
    """The bundled corpus repeated to `megabytes`, in files of about 50 MB (paragraph documents)."""
    text = corpus_text()
    path.mkdir(parents=True)
    written, i = 0, 0
    while written < megabytes * 2**20:
        chunk = "\n\n".join(f"{i}-{j} {text}" for j in range(max(1, min(50 * 2**20, megabytes * 2**20) // len(text))))
        (path / f"part-{i:04d}.txt").write_text(chunk, encoding="utf-8")
        written += len(chunk.encode())
        i += 1
    return written


def recipe(corpus: Path, streaming: bool) -> dict:
    data = {"source": "text", "path": str(corpus), "documents": "paragraph", "options": {"stream_bytes": 0}}
    if streaming:
        data.update(streaming=True, val_documents=200)
    else:
        data.update(val_fraction=0.005)
    return {
        "name": "memory",
        "data": data,
        "tokenizer": {"vocab_size": 4096, "max_documents": 2000},
        "model": {"n_layer": 2, "n_embd": 128, "n_head": 4, "context_length": 256},
        "train": {"max_steps": 30, "batch_size": 8, "log_every": 10, "save_every": 15, "eval_every": 30},
    }


def contender(name: str, corpus: Path, work: Path) -> None:
    from rich.console import Console

    from llmforge import Recipe

    anon = AnonymousPeak()

    kind = name.split("-")[0]
    r = Recipe.from_dict(recipe(corpus, streaming=kind == "stream"))
    if kind == "prepare":
        from llmforge.data.tokenstore import prepare

        prepare(r, work / "store", work / "run", num_proc=1, console=Console(quiet=True))
    else:
        r.run(work / "run", console=Console(quiet=True))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    emit({"name": name, "peak_rss_mb": max(own, kids) / 1024, "peak_anon_mb": anon.stop()})


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--megabytes", type=int, help="the small corpus; the large one is 10x")
    parser.add_argument("--corpus")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.contender:
        return contender(args.contender, Path(args.corpus), Path(args.work))
    small = args.megabytes or (5 if args.smoke else 200)
    print(machine(1))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, mb in (("S", small), ("10S", 10 * small)):
            corpus = Path(tmp) / f"corpus-{label}"
            size = write_corpus(corpus, mb)
            print(f"corpus {label}: {size / 2**20:,.0f} MB", flush=True)
            for kind in ("prepare", "stream"):
                name = f"{kind}-{label}"
                work = Path(tmp) / name
                results[name] = run_contender(
                    __file__, name, ["--corpus", str(corpus), "--work", str(work)], threads=1, timeout=7200
                )
                r = results[name]
                print(
                    f"{name:12s} peak RSS {r['peak_rss_mb']:8.0f} MB (anonymous, without mapped file pages: "
                    f"{r.get('peak_anon_mb', float('nan')):6.0f} MB)",
                    flush=True,
                )
    growth_prepare = results["prepare-10S"]["peak_rss_mb"] / results["prepare-S"]["peak_rss_mb"]
    growth_stream = results["stream-10S"]["peak_rss_mb"] / results["stream-S"]["peak_rss_mb"]
    print(f"ratio peak RSS 10S / S: prepare {growth_prepare:.2f}, streaming training {growth_stream:.2f}")
    anon_prepare = results["prepare-10S"]["peak_anon_mb"] / results["prepare-S"]["peak_anon_mb"]
    anon_stream = results["stream-10S"]["peak_anon_mb"] / results["stream-S"]["peak_anon_mb"]
    print(f"ratio peak anonymous RSS 10S / S: prepare {anon_prepare:.2f}, streaming training {anon_stream:.2f}")
    print(target("prepare_peak_rss_mb_large", results["prepare-10S"]["peak_rss_mb"], "<=", 1024, "{:.0f}"))
    print(target("prepare_rss_growth_10x_corpus", growth_prepare, "<=", 1.25, "{:.2f}"))
    print(target("stream_train_rss_growth_10x_corpus", growth_stream, "<=", 1.25, "{:.2f}"))
    print(target("prepare_peak_anon_mb_large", results["prepare-10S"]["peak_anon_mb"], "<=", 1024, "{:.0f}"))
    print(target("prepare_anon_growth_10x_corpus", anon_prepare, "<=", 1.25, "{:.2f}"))
    print(target("stream_train_anon_growth_10x_corpus", anon_stream, "<=", 1.25, "{:.2f}"))


if __name__ == "__main__":
    main()
