"""Shared pieces of the benchmarks: the machine, a measured matmul peak, target lines, subprocess runs.

Each benchmark measures its contenders in one script run (absolute times on a shared machine are
not stable; ratios measured minutes apart are) and ends with one line per target:
`NAME: VALUE (target OP VALUE) PASS|MISS`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "data" / "corpus"


MATMUL_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # what makes bf16 matmuls fast on a CPU


def cpu_info() -> tuple[str, set[str]]:
    """(the CPU's model name, its flags) from /proc/cpuinfo; ("unknown CPU", set()) where there is none."""
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return cpu, flags


def machine(threads: int) -> str:
    """The CPU (with the flags that set its matmul speed), GPU, versions, threads and load, in one line."""
    cpu, flags = cpu_info()
    has = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in MATMUL_FLAGS) if flags else "flags unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {cpu} ({has}), {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, python "
        f"{platform.python_version()}; {threads} torch thread(s); load average {load:.2f} at start"
    )


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """Best FLOP/s of an n x n matmul in `dtype` over a few seconds (the MFU denominator)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def target(name: str, value: float, op: str, goal: float, fmt: str = "{:.3g}") -> str:
    ok = value >= goal if op == ">=" else value <= goal
    return f"{name}: {fmt.format(value)} (target {op} {fmt.format(goal)}) {'PASS' if ok else 'MISS'}"


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --smoke, and --contender (set by run_contender in the child process)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a run of under two minutes")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    return parser


def run_contender(script: str, name: str, args: list[str], threads: int, timeout: int = 3600) -> dict:
    """Run one contender in a fresh process (no allocator or compile state leaks between them)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [sys.executable, script, "--contender", name, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise SystemExit(f"contender {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"contender {name} printed no RESULT line:\n{proc.stdout[-2000:]}")


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def corpus_text() -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt")))


def train_bpe(texts, vocab_size: int = 8192):
    """A byte-level BPE PreTrainedTokenizerFast trained on `texts`, with llmforge's default special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|pad|>"
    )


class AnonymousPeak:
    """Peak of the process's anonymous resident memory (RssAnon), sampled every 20 ms.

    ru_maxrss also counts file pages mapped into the process: reading a memory-mapped Arrow dataset
    (how `datasets` reads) leaves the pages it touched resident until the mapping closes, so its peak
    grows with the corpus although those pages are clean page cache that the kernel reclaims freely.
    RssAnon is the memory the process itself allocated.
    """

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024
