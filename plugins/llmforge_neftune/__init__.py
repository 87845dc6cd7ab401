"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning").

While the model trains, uniform noise in [-1, 1] scaled by alpha / sqrt(L * d) is added to the input
embeddings, where d is the embedding width and L the length of the example the token belongs to. At
evaluation and generation (module in eval mode) nothing is added.

L is each example's own length: from the attention mask in padded batches (padding gets no noise), and
from position ids that restart at 0 in packed rows. transformers' built-in `neftune_noise_alpha` uses
the length of the whole (padded or packed) row instead (transformers #34659); on rows that hold one
unpadded example both are the same.

Attached through the `prepare_model` lifecycle hook when a finetune config sets `neftune_alpha`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llmforge import hookimpl


@hookimpl
def prepare_model(model: Any, stage: str, config: Any) -> None:
    alpha = getattr(config, "neftune_alpha", None)
    if alpha:
        NEFTune(alpha).attach(model)


def example_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """For each token, the length of its example in a row whose position ids restart at 0 per example."""
    starts = (position_ids == 0).long()
    starts[:, 0] = 1  # a row always starts an example
    segment = starts.cumsum(dim=1) - 1
    counts = torch.zeros_like(segment).scatter_add_(1, segment, torch.ones_like(segment))
    return counts.gather(1, segment)


def noise(
    embeds: torch.Tensor,
    alpha: float,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform noise scaled by alpha / sqrt(L * d) per token, L the length of the token's own example."""
    B, T, d = embeds.shape
    keep = None
    if attention_mask is not None and attention_mask.dim() == 2:
        keep = attention_mask.to(embeds.dtype)
        lengths = attention_mask.sum(dim=1, keepdim=True).clamp(min=1).expand(B, T)
    elif position_ids is not None:
        lengths = example_lengths(position_ids.expand(B, T))
    else:
        lengths = torch.full((B, T), T, device=embeds.device)
    scale = alpha / torch.sqrt(lengths.to(torch.float32) * d)
    scale = scale.to(embeds.dtype) if keep is None else scale.to(embeds.dtype) * keep
    # one uniform draw per element in the same order as transformers' hook: same values for the same seed
    return torch.zeros_like(embeds).uniform_(-1, 1) * scale.unsqueeze(-1)


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body under the LM head (GPT2Model, LlamaModel, ...), inside a peft wrapper too.

    Every path into the embeddings goes through it with the batch's keyword arguments: the model's own
    forward, and a loss that calls the body directly (llmforge's fused loss)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "base_model", inner)


class NEFTune:
    """The two hooks: one remembers the batch's attention mask / position ids, one adds the noise."""

    def __init__(self, alpha: float) -> None:
        if not alpha > 0 or not math.isfinite(alpha):
            raise ValueError(f"neftune_alpha must be a positive number, got {alpha}")
        self.alpha = float(alpha)
        self.attention_mask: torch.Tensor | None = None
        self.position_ids: torch.Tensor | None = None
        self.handles: list[Any] = []

    def attach(self, model: torch.nn.Module) -> NEFTune:
        embeddings = model.get_input_embeddings()
        self.handles = [
            body(model).register_forward_pre_hook(self.remember, with_kwargs=True),
            embeddings.register_forward_hook(self.add_noise),
        ]
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def remember(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.attention_mask = kwargs.get("attention_mask")
        self.position_ids = kwargs.get("position_ids")

    def add_noise(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        mask, positions = self.attention_mask, self.position_ids
        if mask is not None and mask.shape[:2] != output.shape[:2]:
            mask = None
        if positions is not None and positions.shape[-1] != output.shape[1]:
            positions = None
        return output + noise(output, self.alpha, mask, positions)
