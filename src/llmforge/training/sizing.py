"""The model's size for a training budget: what `model.preset: auto` builds, `llmforge data-report` suggests.

A budget is a number of training tokens (train.max_steps, or epochs of the blocks) or of seconds
(train.max_time), which the training FLOP/s measured on this machine turn into FLOPs. With C = 6 N D
training FLOPs (attention not counted) and D = r N tokens, the compute-optimal parameter count is
N = sqrt(C / 6r); for a token budget it is N = D / r. The shape is the rung of LADDER, in the recipe's
family and with its tokenizer's vocabulary, whose parameter count is nearest N (in log).

r is not Chinchilla's 20 at the budgets of a laptop: measured with llmforge's defaults on two corpora
(docs/performance.md, "The model's size for the budget"), the best shape in 180 s of a 2-core CPU saw
0.45 tokens per parameter. TOKENS_PER_PARAMETER is that measurement; from there r rises log-linearly in
the budget to Chinchilla's 20 at the smallest budget of its fits. A corpus too small for the budget is
the other limit: in the same runs the smaller model lost 8% where it passed over the data 5.5 times and
gained 1.2% where it passed 3.4 times, so a rung that would repeat the data more than MAX_EPOCHS times
gives way to a larger one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from llmforge.config.schema import ModelConfig
from llmforge.errors import ConfigError
from llmforge.models.build import CHINCHILLA_TOKENS_PER_PARAM, build_model, family_config
from llmforge.models.families import AUTO
from llmforge.training.arguments import planned_steps
from llmforge.training.budget import parse_duration
from llmforge.training.precision import choose as choose_precision

# (n_layer, n_embd, n_head): heads of 64 dimensions and a width of 64 per layer up to GPT-2 small's
# shape, then GPT-2's own larger shapes.
LADDER = (
    (2, 128, 2),
    (3, 192, 3),
    (4, 256, 4),
    (5, 320, 5),
    (6, 384, 6),
    (8, 512, 8),
    (10, 640, 10),
    (12, 768, 12),
    (24, 1024, 16),
    (36, 1280, 20),
    (48, 1600, 25),
)
TOKENS_PER_PARAMETER = 0.45  # measured: the best rung's training tokens per parameter at MEASURED_FLOPS
MEASURED_FLOPS = 2.25e13  # 180 s of a 2-core CPU at 4 x 256 (and at 3 x 192: the same FLOP/s)
TIMED_STEPS = 5  # optimizer steps timed for the FLOP/s, after one warm-up
MAX_EPOCHS = 4  # more passes over the same text buy little (Muennighoff et al. 2023; and measured here)
CHINCHILLA_FLOPS = 6e18  # the smallest budget of Hoffmann et al.'s fits, which found ~20 tokens per parameter

# The vocabulary for the budget (tokenizer.vocab_size: auto): (training FLOPs, vocabulary) points, log-log
# interpolated and held beyond the ends. Below, the size measured best here at MEASURED_FLOPS on two
# corpora (docs/performance.md, "The vocabulary for the budget"); above, Tao et al. 2024 ("Scaling laws
# with vocabulary"): 43K best for their 3B model at 2.3e21 FLOPs, and at least 216K for Llama 2 70B's
# budget (70B parameters x 2T tokens).
VOCABULARY_POINTS = ((MEASURED_FLOPS, 8192), (2.3e21, 43_008), (8.4e23, 216_000))
VOCABULARY_MULTIPLE = 64  # an embedding and head of a multiple of 64 rows keep GPU matmuls on their fast tiles
BYTES_PER_TOKEN = 4.4  # training text per token at 8K, EOS between paragraphs counted: 4.5 Austen, 4.3 KJV


def optimal_parameters(flops: float | None = None, tokens: float | None = None) -> float:
    """The compute-optimal parameter count for a budget of training FLOPs, or of training tokens."""
    if flops is not None:
        return math.sqrt(flops / (6 * tokens_per_parameter(flops)))
    assert tokens is not None and tokens > 0
    n = tokens / TOKENS_PER_PARAMETER
    for _ in range(20):  # D = r(C) N with C = 6 N D: r changes slowly with C, so this settles in a few rounds
        n = tokens / tokens_per_parameter(6 * n * tokens)
    return n


def tokens_per_parameter(flops: float) -> float:
    """Compute-optimal training tokens per parameter at `flops`: TOKENS_PER_PARAMETER where llmforge measured
    it, Chinchilla's 20 from CHINCHILLA_FLOPS on, and log-linear in between."""
    if flops <= MEASURED_FLOPS:
        return TOKENS_PER_PARAMETER
    if flops >= CHINCHILLA_FLOPS:
        return float(CHINCHILLA_TOKENS_PER_PARAM)
    share = math.log(flops / MEASURED_FLOPS) / math.log(CHINCHILLA_FLOPS / MEASURED_FLOPS)
    return TOKENS_PER_PARAMETER * (CHINCHILLA_TOKENS_PER_PARAM / TOKENS_PER_PARAMETER) ** share


def shaped(cfg: ModelConfig, rung: tuple[int, int, int]) -> ModelConfig:
    """`cfg` at one rung of the ladder (its family, context, extra keys and everything else kept)."""
    n_layer, n_embd, n_head = rung
    return dataclasses.replace(cfg, preset=None, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=None)


_COUNTS: dict[str, int] = {}  # parameter counts by family config (llmforge.training.sizing.parameters)


def parameters(cfg: ModelConfig, tok: Any) -> int:
    """Parameters of `cfg` with this tokenizer, built on the meta device (no memory, no weights) once per
    distinct config: choosing a rung compares the whole ladder several times."""
    config = family_config(cfg, tok)
    key = config.to_json_string()
    if key not in _COUNTS:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        _COUNTS[key] = sum(p.numel() for p in model.parameters())
    return _COUNTS[key]


def nearest(cfg: ModelConfig, tok: Any, n_opt: float) -> ModelConfig:
    """The ladder's shape in `cfg`'s family whose parameter count is nearest `n_opt` (in log)."""
    return min((shaped(cfg, r) for r in LADDER), key=lambda c: abs(math.log(parameters(c, tok) / n_opt)))


def flops_per_second(cfg: ModelConfig, tok: Any, batch: int, length: int, precision: str) -> tuple[float, str]:
    """Training FLOP/s (6 N per token) of `cfg` on this machine: a warm-up and five optimizer steps of
    one micro-batch of `length`-token rows, in the precision training will choose, at the fastest of
    them (a shared machine only ever slows a step down: a slow blip measured 2.6x too low once, and sized
    the model for it). torch's random state is left as it was (the model stage seeds everything again
    before it builds the real model)."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = batch if cuda else min(batch, 4)  # a CPU measurement of a big model must not take minutes
    times = []
    with torch.random.fork_rng():
        model = build_model(cfg, tok, seed=0).to(device)
        model.train()
        ids = torch.randint(0, len(tok), (batch, length), device=device)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
        bf16 = choose_precision(precision, model, length, batch=batch).precision == "bf16"
        for step in range(1 + TIMED_STEPS):
            start = time.perf_counter()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            if cuda:
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    tokens_per_second = batch * length / min(times)
    where = (
        f"{torch.cuda.get_device_name()}, {'bf16' if bf16 else 'fp32'}"
        if cuda
        else f"CPU, {torch.get_num_threads()} threads, {'bf16' if bf16 else 'fp32'}"
    )
    source = f"measured now: fastest of {TIMED_STEPS} steps of {batch} x {length} tokens ({where})"
    return 6 * params * tokens_per_second, source


def for_budget(
    cfg: ModelConfig,
    tok: Any,
    train: Any,
    train_blocks: int,
    train_tokens: int | None,
    world: int = 1,
    measure: Any = None,
) -> tuple[ModelConfig, dict[str, Any]]:
    """The ladder's shape for `train`'s budget (a TrainConfig) on `train_tokens` of data (None: a stream,
    unknown), and how it was chosen.

    With train.max_time the FLOP/s are measured on a first guess (4 x 256), then again on the rung that
    guess points to until the choice stays (a small model runs fewer FLOP/s than a large one on a CPU);
    every one of `world` processes trains, so the budget is theirs together. A rung that would pass over
    the data more than MAX_EPOCHS times gives way to the next larger one. With max_steps as well, the
    budget that ends training first decides. `measure(cfg) -> (FLOP/s, where from)` replaces the
    measurement in tests.
    """
    length = cfg.context_length
    seconds = parse_duration(train.max_time, "train.max_time")
    step_tokens = train.batch_size * train.grad_accum * length * world
    info: dict[str, Any] = {}
    if seconds is not None:
        measure = measure or (lambda c: flops_per_second(c, tok, train.batch_size, length, train.precision))
        measured: dict[tuple[int, int, int], tuple[float, str]] = {}
        chosen = shaped(cfg, LADDER[2])
        while _rung(chosen) not in measured:
            measured[_rung(chosen)] = measure(chosen)
            rate = measured[_rung(chosen)][0]
            pick, n_opt = for_flops(cfg, tok, rate * seconds * world, train_tokens)
            if pick == chosen or _rung(pick) in measured:  # settled, or back to a rung already measured (noise)
                break
            chosen = pick
        rate, source = measured[_rung(chosen)]
        flops = rate * seconds * world
        chosen = _no_more_epochs(cfg, tok, chosen, flops, train_tokens)  # a flip may have stopped on too small a rung
        in_time = flops / (6 * parameters(chosen, tok))  # the tokens the budget buys this shape
        info = {"budget_seconds": seconds, "flops_per_second": rate, "budget_flops": flops, "measured": source}
    if seconds is None or (train.max_steps and train.max_steps * step_tokens < in_time):  # the steps end it first
        tokens = planned_steps(dataclasses.replace(train, max_time=None), train_blocks, world) * step_tokens
        n_opt = optimal_parameters(tokens=tokens)
        chosen = nearest(cfg, tok, n_opt)
        info = {"budget_tokens": tokens}
        in_time = tokens
    n = parameters(chosen, tok)
    info.update(
        optimal_parameters=round(n_opt),
        shape={k: getattr(chosen, k) for k in ("n_layer", "n_embd", "n_head")},
        parameters=n,
        epochs=None if train_tokens is None else round(in_time / train_tokens, 2),
    )
    return chosen, info


def for_flops(cfg: ModelConfig, tok: Any, flops: float, train_tokens: int | None) -> tuple[ModelConfig, float]:
    """The ladder's shape for `flops` of training on `train_tokens` of data, and the compute-optimal count:
    the rung nearest it, or the smallest larger one that passes over the data at most MAX_EPOCHS times
    (no such limit on a stream, whose size is not known)."""
    n_opt = optimal_parameters(flops=flops)
    return _no_more_epochs(cfg, tok, nearest(cfg, tok, n_opt), flops, train_tokens), n_opt


def _no_more_epochs(
    cfg: ModelConfig, tok: Any, chosen: ModelConfig, flops: float, train_tokens: int | None
) -> ModelConfig:
    """`chosen`, or the smallest larger rung that passes over `train_tokens` at most MAX_EPOCHS times in
    `flops` (a stream's size is not known: no limit)."""
    while (
        train_tokens is not None
        and flops / (6 * parameters(chosen, tok)) > MAX_EPOCHS * train_tokens
        and _rung(chosen) != LADDER[-1]
    ):
        chosen = shaped(cfg, LADDER[LADDER.index(_rung(chosen)) + 1])
    return chosen


def vocabulary_size(flops: float) -> int:
    """The vocabulary for `flops` of training: VOCABULARY_POINTS interpolated in log-log (a power law between
    neighbours), a multiple of VOCABULARY_MULTIPLE."""
    points = VOCABULARY_POINTS
    size = float(points[0][1] if flops <= points[0][0] else points[-1][1])
    for (f0, v0), (f1, v1) in zip(points, points[1:], strict=False):
        if f0 < flops <= f1:
            size = v0 * (v1 / v0) ** (math.log(flops / f0) / math.log(f1 / f0))
    return VOCABULARY_MULTIPLE * round(size / VOCABULARY_MULTIPLE)


class Vocabulary:
    """A stand-in for a tokenizer of `size` tokens: all that a parameter count or a FLOP/s measurement reads
    from one (its length and special ids), for sizing before the tokenizer is trained."""

    eos_token_id = bos_token_id = 0
    pad_token_id = None

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def vocabulary_for_budget(
    cfg: ModelConfig, train: Any, train_bytes: int | None, world: int = 1, measure: Any = None
) -> tuple[int, dict[str, Any]]:
    """The vocabulary for `train`'s budget (a TrainConfig) on `train_bytes` of training text (None: a stream),
    chosen before the tokenizer exists, and how.

    The budget in FLOPs: train.max_time's seconds at the FLOP/s measured on the model's shape (preset auto:
    the ladder's first guess, 4 x 256) with the smallest vocabulary of VOCABULARY_POINTS; a token budget
    (max_steps, or epochs of the text at BYTES_PER_TOKEN) at 6 N D, N the shape's parameters (preset auto:
    the compute-optimal count for those tokens). With both, the one that ends training first decides.
    `measure(cfg) -> (FLOP/s, where from)` replaces the measurement in tests.
    """
    guess = Vocabulary(VOCABULARY_POINTS[0][1])
    auto = cfg.preset == AUTO  # the model is sized later, by the model stage
    shape = shaped(cfg, LADDER[2]) if auto else cfg
    seconds = parse_duration(train.max_time, "train.max_time")
    step_tokens = train.batch_size * train.grad_accum * cfg.context_length * world
    budgets = []
    if seconds is not None:
        measure = measure or (lambda c: flops_per_second(c, guess, train.batch_size, c.context_length, train.precision))
        rate, source = measure(shape)
        flops = rate * seconds * world
        budgets.append({"budget_seconds": seconds, "flops_per_second": rate, "budget_flops": flops, "measured": source})
    if seconds is None or train.max_steps:
        if train.max_steps:
            tokens = train.max_steps * step_tokens
        elif train_bytes is None:
            raise ConfigError(
                "tokenizer.vocab_size auto needs a budget it can know before tokenizing: a stream's size is unknown, "
                "so set train.max_steps or train.max_time."
            )
        else:
            blocks = math.ceil(train_bytes / BYTES_PER_TOKEN / cfg.context_length)
            tokens = planned_steps(dataclasses.replace(train, max_time=None), blocks, world) * step_tokens
        n = optimal_parameters(tokens=tokens) if auto else parameters(shape, guess)
        budgets.append({"budget_tokens": tokens, "budget_flops": 6 * n * tokens})
    info = min(budgets, key=lambda b: b["budget_flops"])
    info["vocab_size"] = vocabulary_size(info["budget_flops"])
    return info["vocab_size"], info


def describe_vocabulary(info: dict[str, Any]) -> str:
    """One line: the vocabulary chosen and the budget that chose it."""
    if "budget_seconds" in info:
        budget = f"{info['budget_seconds']:g} s x {info['flops_per_second']:.3g} FLOP/s ({info['measured']})"
    else:
        budget = f"{info['budget_tokens']:,} training tokens"
    return f"{info['vocab_size']:,} tokens for {info['budget_flops']:.3g} training FLOPs ({budget})"


def _rung(cfg: ModelConfig) -> tuple[int, int, int]:
    return (cfg.n_layer, cfg.n_embd, cfg.n_head)


def describe(info: dict[str, Any]) -> str:
    """One line: the shape chosen and the budget that chose it."""
    s = info["shape"]
    if "budget_seconds" in info:
        budget = (
            f"{info['budget_seconds']:g} s x {info['flops_per_second']:.3g} FLOP/s ({info['measured']}) = "
            f"{info['budget_flops']:.3g} FLOPs"
        )
    else:
        budget = f"{info['budget_tokens']:,} training tokens"
    return (
        f"{s['n_layer']} layers x {s['n_embd']} wide, {s['n_head']} heads ({info['parameters'] / 1e6:.2f}M parameters; "
        f"compute-optimal for {budget}: {info['optimal_parameters'] / 1e6:.2f}M"
        + (f"; {info['epochs']:g} epochs of the data)" if info["epochs"] is not None else ")")
    )
