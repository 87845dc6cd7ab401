"""The Trainer subclass: what llmforge changes inside transformers' loop, and nothing else.

* A non-finite loss is caught before its backward pass, so it never reaches the weights: the run stops
  with a clear message (`on_nan: stop`), or the batch is skipped up to `max_skipped_batches` times
  (`on_nan: skip_batch`). Transformers' default would average the NaN away in the logs and train on.
* With `fused_loss`, the training loss is computed in chunks without materialising the logits
  (llmforge.training.loss); evaluation keeps the model's own loss, so both paths are checked against each other.
* On a resume, a weight the checkpoint lacks because it is tied to one it holds (GPT-2's `lm_head`, saved
  once as the embedding) is not reported; a weight really missing, or one the model does not have, is said
  in one line. The model's causal-LM loss is named (llmforge.models.loading.causal_lm_loss), so a family
  whose class name names none does not warn on the first step.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, Trainer

from llmforge.errors import TrainingError
from llmforge.models.loading import causal_lm_loss
from llmforge.training.loss import linear_cross_entropy_sum
from llmforge.training.optimizers import MuonWithAdamW

NAN_ADVICE = (
    "Lower the learning rate (lr) or raise warmup, check the data for corrupted documents, "
    "or train in fp32 (or bf16 instead of fp16)."
)
# Families whose logits are exactly `lm_head(base_model(...).last_hidden_state)`: a plain linear head, no logit
# scaling (cohere, granite) or soft-capping (gemma2/3). tests/test_families.py checks each against the model's loss.
FUSED_LOSS_FAMILIES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "olmo2", "smollm3", "phi3", "gpt_neox"}


class LlmforgeTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        on_nan: str = "stop",
        max_skipped_batches: int = 10,
        stage: str = "train",
        fused_loss: bool = False,
        schedule: Any = None,
        optimizer_kind: str = "adamw",
        **kwargs: Any,
    ) -> None:
        self.schedule = schedule  # optimizer -> scheduler (a wall-clock budget's), else Trainer's own
        self.optimizer_kind = optimizer_kind  # adamw: Trainer's own (fused); muon: llmforge.training.optimizers
        super().__init__(*args, **kwargs)
        self.on_nan = on_nan
        self.max_skipped_batches = max_skipped_batches
        self.skipped_batches = 0
        self.stage = stage
        self.fused_loss = fused_loss
        causal_lm_loss(self.model)

    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer_kind == "muon" and self.optimizer is None:
            args = self.args
            betas = (args.adam_beta1, args.adam_beta2)
            ns_dtype = torch.bfloat16 if args.bf16 else torch.float32  # Newton-Schulz where the matmuls are fast
            self.optimizer = MuonWithAdamW(model or self.model, args.learning_rate, args.weight_decay, betas, ns_dtype)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = self.schedule(self.optimizer if optimizer is None else optimizer)
        return self.lr_scheduler

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """What a checkpoint's weights did not cover, said in llmforge's words (Trainer calls this after
        loading a checkpoint's state dict on a resume, or the best model at the end)."""
        missing = untied_missing_keys(self.model, load_result.missing_keys)
        ignored = getattr(self.model, "_keys_to_ignore_on_save", None)
        if missing and ignored and set(missing) == set(ignored):  # as Trainer does: saved on purpose without them
            self.model.tie_weights()
            missing = []
        if missing:
            print(
                f"  {self.stage}: the checkpoint holds no weights for {_names(missing)}; they keep the values they "
                "had before it was loaded, so training does not go on from the saved model. Was the checkpoint "
                "written by another version of this model?"
            )
        if load_result.unexpected_keys:
            extra = _names(load_result.unexpected_keys)
            print(
                f"  {self.stage}: the checkpoint holds weights this model does not have ({extra}); they were not "
                "loaded. Was the checkpoint written by another version of this model?"
            )

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if self.fused_loss and model.training and not return_outputs and fused_loss_supported(model):
            result = chunked_causal_lm_loss(model, inputs, num_items_in_batch)
        else:
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
            # a zero loss that still touches every trainable weight, so DDP sees a gradient for each
            zero = sum((p.sum() * 0.0) for p in model.parameters() if p.requires_grad)
            return (zero, result[1]) if return_outputs else zero
        raise TrainingError(
            f"The {self.stage} loss became {loss.item()} at step {step}; stopped before it reached the weights. "
            f"{NAN_ADVICE} The last complete checkpoint is kept."
            + (f" ({self.skipped_batches} batches were already skipped.)" if self.skipped_batches else "")
        )


def untied_missing_keys(model: torch.nn.Module, missing: Any) -> list[str]:
    """The missing keys that are not tied to a loaded one: a name whose tensor is the very tensor of another
    name that was loaded got its values through that name."""
    missing = list(missing)
    names: dict[int, list[str]] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        names.setdefault(id(tensor), []).append(name)
    loaded = {name for group in names.values() for name in group if name not in missing}
    tied = {name for group in names.values() if any(n in loaded for n in group) for name in group}
    return [name for name in missing if name not in tied]


def _names(keys: Any, shown: int = 5) -> str:
    keys = list(keys)
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def fused_loss_supported(model: Any) -> bool:
    """True for a bare (not DDP- or peft-wrapped) model of a family whose logits are a plain linear head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        isinstance(model, PreTrainedModel)
        and getattr(model.config, "model_type", None) in FUSED_LOSS_FAMILIES
        and isinstance(head, torch.nn.Linear)
        and head.bias is None
    )


def chunked_causal_lm_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
    """The model's next-token loss without materialising the logits (llmforge.training.loss)."""
    labels = inputs["labels"]
    body = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = model.base_model(**body, use_cache=False).last_hidden_state
    total = linear_cross_entropy_sum(hidden[:, :-1], model.get_output_embeddings().weight, labels[:, 1:])
    count = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum()
    return total / count
