"""Document-aware batches of packed blocks.

Blocks hold documents joined by EOS. Position ids restart at 0 after every EOS, and no
`attention_mask` is passed: transformers then builds a block-diagonal causal mask, so no token
attends across a document boundary. Passing an attention mask or a KV cache silently turns that off
(see docs/performance.md), which `DocumentMaskGuard` refuses during training.
"""

from __future__ import annotations

from typing import Any

import torch

from llmforge.errors import TrainingError


def document_position_ids(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Positions that restart at 0 on the token after each EOS (an EOS ends its own document)."""
    B, T = input_ids.shape
    idx = torch.arange(T, device=input_ids.device).expand(B, T)
    is_eos = input_ids == eos_id
    # index of the first token of the current document: one past the last EOS strictly before it
    starts = torch.where(is_eos, idx + 1, torch.zeros_like(idx))
    starts = torch.cummax(torch.cat([torch.zeros(B, 1, dtype=idx.dtype, device=idx.device), starts[:, :-1]], 1), 1)
    return idx - starts.values


class PackedCollator:
    """Stack blocks into `input_ids`, `labels` (input_ids; the model shifts them) and `position_ids`."""

    def __init__(self, eos_id: int, document_aware: bool = True) -> None:
        self.eos_id = eos_id
        self.document_aware = document_aware

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows])
        labels = input_ids.clone()
        # The model shifts labels, so position 0 is never a target. Marking it -100 makes Trainer's
        # token count (num_items_in_batch) equal the predicted tokens; otherwise every reported loss is
        # scaled by (T-1)/T.
        labels[:, 0] = -100
        batch = {"input_ids": input_ids, "labels": labels}
        if self.document_aware:
            batch["position_ids"] = document_position_ids(input_ids, self.eos_id)
        return batch


class DocumentMaskGuard:
    """A forward pre-hook that fails loudly if document-aware attention would be silently disabled."""

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        if kwargs.get("attention_mask") is not None or kwargs.get("use_cache") or kwargs.get("past_key_values"):
            raise TrainingError(
                "Document-aware packing needs a forward call without attention_mask and without a KV cache; "
                "something passed one, which makes transformers attend across documents. "
                "Set train.document_aware: false to train with plain causal attention instead."
            )

    def attach(self, model: torch.nn.Module) -> Any:
        return model.register_forward_pre_hook(self, with_kwargs=True)
