"""The Trainer subclass: what llmforge changes inside transformers' loop, and nothing else.

A non-finite loss is caught before its backward pass, so it never reaches the weights: the run stops
with a clear message (`on_nan: stop`), or the batch is skipped up to `max_skipped_batches` times
(`on_nan: skip_batch`). Transformers' default would average the NaN away in the logs and train on.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from llmforge.errors import TrainingError

NAN_ADVICE = (
    "Lower the learning rate (lr) or raise warmup, check the data for corrupted documents, "
    "or train in fp32 (or bf16 instead of fp16)."
)


class LlmforgeTrainer(Trainer):
    def __init__(
        self, *args: Any, on_nan: str = "stop", max_skipped_batches: int = 10, stage: str = "train", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_nan = on_nan
        self.max_skipped_batches = max_skipped_batches
        self.skipped_batches = 0
        self.stage = stage

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss = result[0] if return_outputs else result
        if not model.training or bool(torch.isfinite(loss.detach()).all()):
            return result
        step = self.state.global_step + 1
        if self.on_nan == "skip_batch" and self.skipped_batches < self.max_skipped_batches:
            self.skipped_batches += 1
            print(
                f"  {self.stage}: loss is {loss.item()} at step {step}; skipping this batch "
                f"({self.skipped_batches}/{self.max_skipped_batches} allowed)"
            )
            # zero loss that still touches every trainable weight, so DDP sees a gradient for each
            zero = sum((p.sum() * 0.0) for p in model.parameters() if p.requires_grad)
            return (zero, result[1]) if return_outputs else zero
        raise TrainingError(
            f"The {self.stage} loss became {loss.item()} at step {step}; stopped before it reached the weights. "
            f"{NAN_ADVICE} The last complete checkpoint is kept."
            + (f" ({self.skipped_batches} batches were already skipped.)" if self.skipped_batches else "")
        )
