"""The next-token loss over a large vocabulary, in fewer passes over memory than the usual path.

- causal_lm_loss (the default for every causal LM trained): transformers' ForCausalLMLoss, same value,
  with the logits read in fp32 one chunk of rows at a time and the gradient written in one pass.
- linear_cross_entropy_sum (`fused_loss`): linear + cross-entropy in chunks, the logits of a 50k
  vocabulary never materialised whole.

A causal LM's loss is `cross_entropy(hidden @ W.T, labels)`. Computed the usual way, a [tokens x vocab]
logits tensor is written in bf16, copied to fp32, log-softmaxed and kept for the backward pass (for
GPT-2 124M at context 1024: about 600 MB and 12% of a CPU step). In linear_cross_entropy_sum each chunk
of rows computes its logits, its loss and its gradients (softmax - one_hot) at once, in the forward
pass; the backward pass only scales the stored gradients.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100
VOCAB_CHUNK_BYTES = 2**21  # one fp32 chunk of logits in VocabCrossEntropy (measured: benchmarks/mfu.py)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        compute_dtype: torch.dtype,
        chunk_rows: int,
    ) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.size(-1))
        flat = labels.reshape(-1)
        w = weight.to(compute_dtype)
        grad_rows = torch.empty(rows.shape, dtype=hidden.dtype, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows.size(0), chunk_rows):
            h = rows[start : start + chunk_rows].to(compute_dtype)
            y = flat[start : start + chunk_rows]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            keep = y != IGNORE
            target = torch.where(keep, y, 0)
            picked = logits.gather(1, target.unsqueeze(1)).squeeze(1)
            total += ((lse - picked) * keep).sum()
            # d(loss)/d(logits) = softmax - one_hot, zero on ignored rows; reuse the logits buffer
            grad = logits.sub_(lse.unsqueeze(1)).exp_()
            grad[torch.arange(len(y), device=y.device), target] -= 1.0
            grad.mul_(keep.unsqueeze(1))
            g = grad.to(compute_dtype)
            grad_rows[start : start + chunk_rows] = (g @ w).to(hidden.dtype)
            grad_w += (g.T @ h).float()
        ctx.save_for_backward(grad_rows.view(hidden.shape), grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """Sum over non-ignored rows of cross_entropy(hidden @ weight.T, labels), in chunks.

    Runs its matmuls in the autocast dtype when autocast is on (bf16 on CPU), like nn.Linear would.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    if chunk_rows is None:  # keep one fp32 logits chunk near 32 MB
        chunk_rows = max(64, (2**23 // weight.size(0)) // 64 * 64)
    with torch.autocast(device_type=device, enabled=False):
        return ChunkedLinearCrossEntropy.apply(hidden, weight, labels, dtype, chunk_rows)


class VocabCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of [rows, vocab] logits in any dtype, in fp32 per chunk of rows.

    The usual path (transformers' ForCausalLMLoss) copies bf16 logits to fp32 whole, writes their
    log-softmax and keeps it, then fills a zero gradient and runs log-softmax's backward: six passes over
    a [tokens x vocab] tensor. Here the forward keeps one log-sum-exp per row and the backward writes
    exp(logits - lse) * grad into the gradient directly, one chunk at a time.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.size(0), chunk_rows):
            lse[start : start + chunk_rows] = torch.logsumexp(logits[start : start + chunk_rows].float(), -1)
        keep = target != IGNORE
        safe = torch.where(keep, target, 0)
        picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1).float()
        ctx.save_for_backward(logits, safe, keep, lse)
        ctx.chunk_rows = chunk_rows
        return ((lse - picked) * keep).sum()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        logits, safe, keep, lse = ctx.saved_tensors
        scale = grad_output.float()
        positive = bool(scale > 0)  # decided once, not per chunk (on a GPU each test is a sync)
        # softmax * scale = exp(logits - (lse - log scale)): the scale folded into the one pass, where it is positive
        shift = (lse - scale.log()) if positive else lse
        shift = shift.masked_fill(~keep, float("inf"))  # exp(-inf) = 0: ignored rows get no gradient
        hit = (-scale * keep).unsqueeze(1)  # the one-hot's part, -scale at each kept row's target
        in_place = logits.dtype == torch.float32  # fp32 logits: written straight into the gradient, no copy
        grad = torch.empty_like(logits)
        for start in range(0, logits.size(0), ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            if in_place:
                chunk = torch.sub(logits[rows], shift[rows, None], out=grad[rows]).exp_()
            else:
                chunk = logits[rows].float().sub_(shift[rows, None]).exp_()
            if not positive:
                chunk.mul_(scale)
            chunk.scatter_add_(1, safe[rows].unsqueeze(1), hit[rows])
            if not in_place:
                grad[rows] = chunk
        return grad, None, None


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss (same arguments, same value) on VocabCrossEntropy: set as a model's
    `loss_function`, the model's own forward computes its loss this way."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.reshape(-1).to(logits.device)
    if ignore_index != IGNORE:
        target = torch.where(target == ignore_index, IGNORE, target)
    chunk_rows = max(1, VOCAB_CHUNK_BYTES // (4 * vocab_size))
    total = VocabCrossEntropy.apply(logits.reshape(-1, vocab_size), target, chunk_rows)
    if num_items_in_batch is None:
        return total / (target != IGNORE).sum()
    return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)


def use_vocab_cross_entropy(model: torch.nn.Module) -> bool:
    """Make a causal LM's own loss causal_lm_loss (same value, fewer passes over the logits) when it is
    transformers' ForCausalLMLoss; a model with a loss of another kind keeps it. True if it was set."""
    from transformers import PreTrainedModel
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft's wrapper
    if not isinstance(base, PreTrainedModel) or type(base).loss_function is not PreTrainedModel.loss_function:
        return False
    # what the property would return, without reading it: it warns about GPT-2's unset loss_type on every read
    loss_type = getattr(base, "loss_type", None)
    current = getattr(base, "_loss_function", LOSS_MAPPING[loss_type if loss_type in LOSS_MAPPING else "ForCausalLM"])
    if current is not ForCausalLMLoss:
        return False
    base.loss_function = causal_lm_loss
    return True
