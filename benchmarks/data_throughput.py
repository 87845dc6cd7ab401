"""Tokenize + pack a text corpus: llmforge's token store against the seed's datasets.map pipeline.

Contenders, each in its own process on the same documents and tokenizer (a BPE of the bundled corpus):
  raw          tokenizers' encode_batch over every document, nothing else (the issue's ceiling)
  raw-fast     the same with encode_batch_fast (no character offsets), which llmforge uses: its overhead
               over this one is the cost of packing and writing
  seed         the seed's way: datasets.map(tokenize, batched) then a Python concatenate-and-chunk map,
               one process
  store-1proc  llmforge prepare's build (tokenstore.build), 1 process
  store-2proc  the same with 2 processes (num_proc=2)
Targets (issue 11, item 3): store-2proc at least 1.8x the seed on 2 cores, and at least 80% of raw.

    python benchmarks/data_throughput.py            # 200 MB corpus (the bundled one repeated)
    python benchmarks/data_throughput.py --smoke    # 10 MB, under 2 minutes
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import arguments, corpus_text, emit, machine, run_contender, target, train_bpe  # noqa: E402

T = 1024
CONTENDERS = ["raw", "raw-fast", "seed", "store-1proc", "store-2proc"]


def prepare_inputs(work: Path, megabytes: int) -> tuple[Path, Path, int]:
    """Documents (paragraphs of the bundled corpus, repeated to `megabytes`) saved as a DatasetDict, a tokenizer."""
    import datasets

    paras = [p.strip() for p in corpus_text().split("\n\n") if p.strip()]
    size = sum(len(p.encode()) for p in paras)
    reps = max(1, round(megabytes * 2**20 / size))
    docs = [f"{i} {p}" for i in range(reps) for p in paras]  # a distinct prefix: no cache helps anyone
    n_val = max(1, len(docs) // 200)
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": docs[n_val:]}),
        validation=datasets.Dataset.from_dict({"text": docs[:n_val]}),
    )
    dd.save_to_disk(str(work / "documents"))
    tok = train_bpe(paras)
    tok.save_pretrained(str(work / "tokenizer"))
    return work / "documents", work / "tokenizer", sum(len(d.encode()) for d in docs)


def contender(name: str, work: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    docs = datasets.load_from_disk(str(work / "documents"))
    nbytes = sum(len(t.encode()) for split in docs.values() for b in split.iter(10_000) for t in b["text"])
    started = time.perf_counter()
    if name.startswith("raw"):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(work / "tokenizer" / "tokenizer.json"))
        encode = tok.encode_batch_fast if name == "raw-fast" else tok.encode_batch
        tokens = 0
        for split in docs.values():
            for batch in split.iter(1000):
                tokens += sum(len(e.ids) for e in encode(batch["text"], add_special_tokens=False))
    elif name == "seed":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))

        def tokenize(batch):
            return tok([t + tok.eos_token for t in batch["text"]])

        def group(batch):  # the seed's (run_clm's) concatenate-and-chunk, in Python
            joined = sum(batch["input_ids"], [])
            n = len(joined) // T * T
            return {"input_ids": [joined[i : i + T] for i in range(0, n, T)]}

        tokens = 0
        with tempfile.TemporaryDirectory() as cache:
            for name_, split in docs.items():
                ids = split.map(
                    tokenize, batched=True, remove_columns=["text"], cache_file_name=f"{cache}/{name_}-t.arrow"
                )
                blocks = ids.map(
                    group, batched=True, remove_columns=ids.column_names, cache_file_name=f"{cache}/{name_}-g.arrow"
                )
                tokens += len(blocks) * T
    else:
        from llmforge.data.tokenstore import build

        with tempfile.TemporaryDirectory() as out:
            info = build(work / "documents", work / "tokenizer", T, Path(out) / "store", 2 if "2" in name else 1)
        tokens = info["train"]["tokens"] + info["validation"]["tokens"]
    seconds = time.perf_counter() - started
    emit({"name": name, "seconds": seconds, "mb_per_s": nbytes / 2**20 / seconds, "tokens": tokens})


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--megabytes", type=int)
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.contender:
        return contender(args.contender, Path(args.work))
    megabytes = args.megabytes or (10 if args.smoke else 200)
    print(machine(2) + " (2 processes / tokenizer threads: TOKENIZERS_PARALLELISM=true)")
    with tempfile.TemporaryDirectory() as tmp:
        docs, _, nbytes = prepare_inputs(Path(tmp), megabytes)
        print(f"corpus: {nbytes / 2**20:,.0f} MB of text, context {T}")
        results = {}
        for name in CONTENDERS:
            results[name] = run_contender(__file__, name, ["--work", tmp], threads=1)
            r = results[name]
            print(f"{name:12s} {r['seconds']:8.1f} s  {r['mb_per_s']:8.2f} MB/s  {r['tokens']:,} tokens", flush=True)
    speedup = results["store-2proc"]["mb_per_s"] / results["seed"]["mb_per_s"]
    of_raw = results["store-2proc"]["mb_per_s"] / results["raw"]["mb_per_s"]
    scaling = results["store-2proc"]["mb_per_s"] / results["store-1proc"]["mb_per_s"]
    of_fast = results["store-2proc"]["mb_per_s"] / results["raw-fast"]["mb_per_s"]
    print(
        f"ratio store-2proc / seed: {speedup:.2f}; store-2proc / raw: {of_raw:.2f}; store-2proc / raw-fast: "
        f"{of_fast:.2f}; 2 / 1 processes: {scaling:.2f}"
    )
    print(target("data_speedup_vs_seed", speedup, ">=", 1.8, "{:.2f}"))
    print(target("data_share_of_raw_encode", of_raw, ">=", 0.8, "{:.2f}"))


if __name__ == "__main__":
    main()
