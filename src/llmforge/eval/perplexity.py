"""Loss and perplexity on packed blocks, computed the way training computes its loss."""

from __future__ import annotations

import math
from typing import Any

import torch

from llmforge.data.batches import ExampleCollator, PackedCollator


@torch.no_grad()
def perplexity(
    model: Any, blocks: Any, batch_size: int = 8, eos_id: int | None = None, document_aware: bool = True
) -> dict[str, float]:
    """Mean next-token loss over every predicted position of every block, and its exponential."""
    model.eval()
    collate = PackedCollator(eos_id if eos_id is not None else -1, document_aware and eos_id is not None)
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        rows = [blocks[i] for i in range(start, min(start + batch_size, len(blocks)))]
        batch = {k: v.to(model.device) for k, v in collate(rows).items()}  # the model may be on a GPU
        logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(), batch["labels"][:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += batch["labels"][:, 1:].numel()
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "tokens": count}


@torch.no_grad()
def example_perplexity(
    model: Any, examples: Any, pad_id: int, fill_id: int | None = None, batch_size: int = 8, document_aware: bool = True
) -> dict[str, float]:
    """Mean next-token loss over the loss-carrying tokens of fine-tuning rows (what fine-tuning trains
    and validates on: the mask's tokens, not the prompt), and its exponential."""
    model.eval()
    collate = ExampleCollator(pad_id, document_aware, fill_id=fill_id)
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        batch = {k: v.to(model.device) for k, v in collate(rows).items()}
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits
        targets = labels[:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets, ignore_index=-100, reduction="sum"
        )
        total += loss.item()
        count += int((targets != -100).sum())
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "tokens": count}
