"""`precision: auto` by measurement: on a CPU that has bf16, a few timed training steps of fp32 and of
bf16 autocast on the real model and row shape, the faster kept and cached per machine and shape.

No width rule holds across CPUs: bf16 autocast measured slower than fp32 at 128 wide on one machine and
1.8x faster at 256 wide on another (issue 17), because it pays only where the matmuls outrun the casts
around them. A GPU with bf16 always gains (its tensor cores), so it is chosen there without a probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmforge.errors import TrainingError

PROBE_STEPS = 3  # timed steps per candidate, after one untimed warm-up step
PROBE_TOKENS = 2048  # rows of the real length, about this many tokens: the ratio, not the batch, is measured


@dataclasses.dataclass(frozen=True)
class Choice:
    precision: str  # fp32, bf16 or fp16
    seconds: dict[str, float]  # the best measured seconds of a step per candidate (empty when none was timed)
    cached: bool = False  # measured by an earlier run on this machine and shape

    def describe(self) -> str | None:
        """One line for the plan, or None when nothing was measured (a single candidate)."""
        if not self.seconds:
            return None
        times = ", ".join(f"{name} {s * 1000:.0f} ms" for name, s in self.seconds.items())
        earlier = ", measured earlier" if self.cached else ""
        return f"precision auto: {self.precision} ({times} a step on this shape{earlier})"


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def candidates() -> list[str]:
    """What `auto` chooses between on this machine."""
    if torch.cuda.is_available():
        return ["bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
    return ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype to compute in where it must be fixed before a model exists (a 4-bit base's layers): the
    precision asked for; for `auto` bf16 on a GPU with it, else fp32 (a CPU's probe needs the model)."""
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return AUTOCAST_DTYPES.get(precision, torch.float32)


def frozen_weights_in(model: torch.nn.Module, precision: str) -> int:
    """Store the frozen weights of the linear layers (a LoRA base) in the autocast dtype; returns the
    bytes freed. Autocast would cast them to that dtype at every forward and keep the copies for the
    backward pass; casting once gives the same products with half the memory. Norms, embeddings and
    everything trained stay as they are. A merge must then use the base in full precision."""
    from transformers.pytorch_utils import Conv1D

    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return 0
    shared = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    freed = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, (torch.nn.Linear, Conv1D)) or weight is None or id(weight) in shared:
            continue  # a head tied to the embedding: casting would untie it
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.requires_grad and param.dtype == torch.float32:  # a 4-bit layer's weight is packed
                freed += param.numel() * (param.element_size() - dtype.itemsize)
                setattr(module, name, torch.nn.Parameter(param.detach().to(dtype), requires_grad=False))
    return freed


def check(precision: str) -> None:
    """A clear error where the hardware cannot train in the precision asked for."""
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise TrainingError("train.precision fp16 needs a CUDA GPU. Use bf16 (or auto) on a CPU, or fp32.")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError("This GPU has no bf16 support. Use train.precision fp16 or fp32.")
    if precision == "bf16" and not cuda and not cpu_has_bf16():
        raise TrainingError("This CPU has no bf16 support (avx512_bf16/AMX). Use train.precision fp32.")


def step_seconds(model: torch.nn.Module, precision: str, rows: int, length: int, steps: int = PROBE_STEPS) -> float:
    """The best of `steps` timed forward-backward passes of `model` on random rows of `length` tokens.

    The weights are untouched (no optimizer step, gradients dropped) and the random state is restored,
    so a run that measured and one that read the cache train the same."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 256))
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    was_training = model.training
    best = float("inf")
    with torch.random.fork_rng():
        model.train()
        for step in range(steps + 1):
            start = time.perf_counter()
            with autocast:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            loss.backward()
            model.zero_grad(set_to_none=True)
            if step:
                best = min(best, time.perf_counter() - start)
    model.train(was_training)
    return best


def choose(
    precision: str,
    model: torch.nn.Module,
    length: int,
    cache: Path | None = None,
    measure: Callable[[torch.nn.Module, str, int, int], float] = step_seconds,
    batch: int | None = None,
) -> Choice:
    """The precision to train in: the one asked for (checked), or for `auto` the fastest candidate measured
    on this model with rows of `length` tokens (cached in `cache`, default the user's llmforge cache).
    The probe's rows are at most the training's `batch`: a probe larger than a training step would set
    the run's peak memory (12.7 GB for SmolLM-135M's QLoRA on 26-token rows, against 2.2 GB training)."""
    if precision != "auto":
        check(precision)
        return Choice(precision, {})
    options = candidates()
    if len(options) == 1:
        return Choice(options[0], {})
    rows = max(1, min(PROBE_TOKENS // max(length, 1), batch or PROBE_TOKENS))
    path = cache or cache_file()
    key = shape_key(model, rows, length)
    known = _read(path).get(key)
    if known and set(known) == set(options):
        known = {option: known[option] for option in options}
        return Choice(min(known, key=known.get), known, cached=True)
    seconds = {option: measure(model, option, rows, length) for option in options}
    _write(path, key, seconds)
    return Choice(min(seconds, key=seconds.get), seconds)


def shape_key(model: torch.nn.Module, rows: int, length: int) -> str:
    """What a measurement holds for: this CPU, torch and thread count, and this model shape and row shape."""
    config = getattr(model, "config", None)
    dims = [getattr(config, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")]
    params = sum(p.numel() for p in model.parameters())
    return (
        f"{_cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|"
        f"{type(model).__name__} {'/'.join(map(str, dims))} {params} params|{rows}x{length}"
    )


def cache_file() -> Path:
    base = os.environ.get("LLMFORGE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "llmforge"
    return Path(base).expanduser() / "precision.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, seconds: dict[str, float]) -> None:
    """Best effort: a read-only home only costs the next run another probe."""
    data = _read(path)
    data[key] = seconds
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(data, indent=1))
        os.replace(partial, path)
    except OSError:
        pass


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
