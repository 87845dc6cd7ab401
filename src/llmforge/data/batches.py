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
        """Hook the transformer body, which every forward (fused loss or not) goes through."""
        body = getattr(model, "base_model", model)
        return body.register_forward_pre_hook(self, with_kwargs=True)


# --- fine-tuning examples: padded one per row, or packed several per row -------------------------


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group example indices into rows of at most `capacity` tokens (best fit, longest first).

    Deterministic: the same lengths always give the same rows, in the order their first example came.
    """
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, row number), sorted
    rows: list[list[int]] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than a row of {capacity}")
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            room, row = capacity - lengths[i], len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(i)
            room -= lengths[i]
        bisect.insort(free, (room, row))
    for row in rows:
        row.sort()
    return sorted(rows, key=lambda r: r[0])


class ExampleCollator:
    """Batch fine-tuning rows, right-padded to the longest: pad labels are -100.

    A row of one example gets an `attention_mask` (its padding is masked). A packed row carries
    `position_ids` that restart at 0 for each example and no attention mask, so transformers attends
    within each example only (see the module docstring); padding positions are 0, each its own example,
    and hold `fill_id` (EOS: a pad id without an attention mask only draws a misleading warning).
    """

    def __init__(self, pad_id: int, document_aware: bool = True, fill_id: int | None = None) -> None:
        self.pad_id = pad_id
        self.document_aware = document_aware
        self.fill_id = pad_id if fill_id is None else fill_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        T = max(len(r["input_ids"]) for r in rows)
        B = len(rows)
        packed = "position_ids" in rows[0]
        input_ids = torch.full((B, T), self.fill_id if packed else self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        extra = torch.zeros((B, T), dtype=torch.long)  # position ids (packed) or attention mask
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            extra[i, :n] = torch.as_tensor(r["position_ids"]) if packed else 1
        batch = {"input_ids": input_ids, "labels": labels}
        if not packed:
            batch["attention_mask"] = extra
        elif self.document_aware:
            batch["position_ids"] = extra
        return batch


# --- does a model keep packed documents apart? -----------------------------------------------------


@torch.no_grad()
def document_leak(model: torch.nn.Module, eos_id: int) -> bool:
    """True if `model` lets a packed document attend to the one before it despite restarting positions.

    Runs the second of two documents packed in one row (positions restarting after the first one's
    EOS, no attention mask, no cache: how training calls it) and alone, and compares its logits. A
    family whose attention ignores the restart differs as much as plain causal attention does; one
    that honours it differs by rounding only. The comparison is relative to that plain-causal
    difference, so it holds for any initialisation scale.
    """
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(0)).to(device)
    ids[ids == eos_id] = (eos_id + 1) % vocab
    ids[0, 4] = eos_id  # document 1 is ids[:5], document 2 ids[5:]
    positions = document_position_ids(ids, eos_id)
    training = model.training
    model.eval()
    try:
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 5:].float()
        alone = model(input_ids=ids[:, 5:], position_ids=positions[:, 5:], use_cache=False).logits[0].float()
        causal = model(input_ids=ids, use_cache=False).logits[0, 5:].float()
    finally:
        model.train(training)
    error = (packed - alone).abs().max().item()
    plain = (causal - alone).abs().max().item()
    return error > 0.01 * plain + 1e-5
