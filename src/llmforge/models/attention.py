"""Document-aware SDPA that skips the parts of a packed row's mask that are all zeros.

A packed row's attention mask is causal and block-diagonal (one block per document). Given that mask,
PyTorch's SDPA kernels compute every query against every key and mask afterwards: no causal skipping,
so a document-aware row costs twice the FLOPs of plain causal attention, most of them thrown away.
Here the queries are cut into blocks of `BLOCK` rows and each block attends only to the keys from the
first document any of its queries can see up to its own last position. The result equals full SDPA
with the same mask (to rounding), for any causal boolean mask; anything else falls through to
transformers' own SDPA. Measured on GPT-2 124M at context 1024: a 15% faster training step
(docs/performance.md).

`document_attention(model)` switches a model's `sdpa` to this for the duration of training only, so
saved models keep plain `sdpa` and load anywhere without llmforge.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "llmforge_document_sdpa"
BLOCK = 128
# On a CPU, a block whose keys span at most this many positions runs as plain matmuls + softmax: PyTorch's
# CPU flash kernel has a high fixed cost per call and measured 1.5-2x slower there (docs/performance.md).
MATH_MAX_KEYS = 512
_last: tuple[Any, list[int] | None, bool] = (lambda: None, None, False)  # (weakref to the mask, key starts, keyless)


def key_starts(mask: torch.Tensor, block: int = BLOCK) -> list[int] | None:
    """For each block of query rows, the first key any of them may attend to; None if the mask is not causal.

    Every layer of one forward pass gets the same mask object, so the answer is kept for that object.
    """
    global _last
    ref, starts, _ = _last
    if ref() is mask:
        return starts
    allowed = mask[:, 0] if mask.shape[1] == 1 else mask.any(1)  # [batch, queries, keys], over heads
    T = allowed.shape[-1]
    first = allowed.to(torch.uint8).argmax(-1)  # first allowed key per query (0 for a fully masked row)
    starts = []
    for q0 in range(0, T, block):
        q1 = min(q0 + block, T)
        if bool(allowed[:, q0:q1, q1:].any()):  # a query sees a later key: not causal
            starts = None
            break
        starts.append(int(first[:, q0:q1].min()))
    _last = (weakref.ref(mask), starts, not bool(allowed.any(-1).all()))
    return starts


def has_keyless_queries(mask: torch.Tensor) -> bool:
    """Whether some query of `mask` may see no key (padding beyond a sliding window), found by key_starts
    once per mask, so that the blocks pay for zeroing those rows only when there are any."""
    ref, _, keyless = _last
    return ref() is mask and keyless


@torch.compiler.disable  # data-dependent block bounds: runs eagerly between the compiled parts of a model
def document_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; [batch, heads, T, head_dim] in, [batch, T, heads, head_dim] out."""
    T = query.shape[2]
    starts = None
    if (
        attention_mask is not None
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and key.shape[2] == T > BLOCK
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    ):
        starts = key_starts(attention_mask)
    if starts is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    keyless = has_keyless_queries(attention_mask)
    outputs = []
    for i, s in enumerate(starts):
        q0, q1 = i * BLOCK, min((i + 1) * BLOCK, T)
        q, k, v, m = query[:, :, q0:q1], key[:, :, s:q1], value[:, :, s:q1], attention_mask[:, :, q0:q1, s:q1]
        if query.device.type == "cpu" and dropout == 0.0 and q1 - s <= MATH_MAX_KEYS:
            outputs.append(_math_attention(q, k, v, m, scale, keyless))
        else:
            outputs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, m, dropout, scale=scale))
    return torch.cat(outputs, 2).transpose(1, 2).contiguous(), None


def _math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, keyless: bool = False
) -> torch.Tensor:
    """softmax(q k^T) v with an fp32 softmax, as eager attention computes it under autocast. A query that may
    see no key (padding beyond a sliding window of real tokens) gets zeros, as torch's SDPA gives it, not
    the NaN of a softmax over nothing, which would reach the weights through the backward pass."""
    scores = (q @ k.transpose(-1, -2)).float().mul_(scale).masked_fill_(~mask, float("-inf"))
    probs = torch.softmax(scores, -1)
    return (probs.nan_to_num(0.0) if keyless else probs).to(v.dtype) @ v


AttentionInterface.register(NAME, document_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def document_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run a model that uses `sdpa` with `document_sdpa` inside the block; other kernels are left alone."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")
