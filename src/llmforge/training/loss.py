"""Linear + cross-entropy in chunks: the logits of a 50k vocabulary are never materialised whole.

The next-token loss of a causal LM is `cross_entropy(hidden @ W.T, labels)`. Computed the usual way,
a [tokens x vocab] logits tensor is written in bf16, copied to fp32, log-softmaxed and kept for the
backward pass (for GPT-2 124M at context 1024: about 600 MB and 12% of a CPU step). Here each chunk of
rows computes its logits, its loss and its gradients (softmax - one_hot) at once, in the forward pass;
the backward pass only scales the stored gradients.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100


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
