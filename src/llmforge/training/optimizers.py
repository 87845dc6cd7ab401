"""`optimizer: muon`: torch's Muon on the hidden weight matrices, AdamW on the rest, as one optimizer.

Muon orthogonalises each matrix's momentum (Newton-Schulz) and so moves every direction of a matrix
at the same rate; it is defined for matrices only, so the embeddings, the output head (tied to them or
not), biases and norms keep AdamW. With `adjust_lr_fn="match_rms_adamw"` (Moonshot's scaling) its update
has AdamW's size, so one `lr` and `weight_decay` serve both halves and the schedule scales both.

`Muon` here is torch's update rule with one change: the Newton-Schulz iteration runs in the dtype the
training computes in. torch's runs it in bf16 always, which on a CPU that emulates bf16 made each step
twice as slow as AdamW's (see docs/performance.md); with `ns_dtype=torch.bfloat16` it is torch's exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch's (Keller Jordan's) quintic: steepest slope at zero


def orthogonalize(matrix: torch.Tensor, dtype: torch.dtype, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz towards U V^T of `matrix`'s SVD (singular values land near 0.5-1.5, which is enough)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, scaled to AdamW's update size (Moonshot's 0.2 * sqrt(max dim))."""

    def __init__(
        self, params: Any, lr: float, weight_decay: float, momentum: float = 0.95, ns_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_dtype": ns_dtype})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.ndim != 2:
                    raise ValueError(f"Muon takes weight matrices only; got a parameter of shape {tuple(param.shape)}")
                state = self.state[param]
                if "momentum_buffer" not in state:  # torch.optim.Muon's name: its checkpoints resume here
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(param.grad, 1 - momentum)
                update = orthogonalize(param.grad.lerp(buf, momentum), group["ns_dtype"])
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-lr * 0.2 * math.sqrt(max(param.shape)))
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers behind one: the schedule sees (and scales) every group, a checkpoint holds both states."""

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        hidden, decay, no_decay = split_parameters(model)
        if not hidden:
            raise ValueError("optimizer muon found no hidden weight matrices to optimise in this model")
        # "decay" marks the groups whose weight decay a resume with a new train.weight_decay changes (reruns)
        muon_groups = [{"params": hidden, "weight_decay": weight_decay, "decay": True}]
        adam_groups = [
            {"params": decay, "weight_decay": weight_decay, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False},
        ]
        adam_groups = [g for g in adam_groups if g["params"]]
        self.muon = Muon(muon_groups, lr=lr, weight_decay=weight_decay, ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(adam_groups, lr=lr, betas=betas, fused=True)
        # the same group dicts the two hold: a scheduler setting group["lr"] here sets it there
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(
                "this checkpoint's optimizer state is not Muon's and AdamW's: it was saved with another "
                "train.optimizer; resume with that one, or start the stage afresh (--restart)"
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # loading replaces the two's group dicts: share the new ones, or a resumed schedule would set stale ones
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]


def split_parameters(model: torch.nn.Module) -> tuple[list[Any], list[Any], list[Any]]:
    """(hidden matrices for Muon, other decayed weights, biases and norms) among the trainable parameters."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            embeddings.add(id(module.weight))
    hidden, decay, no_decay = [], [], []
    for _, param in model.named_parameters():  # tied weights appear once
        if not param.requires_grad:
            continue
        if param.ndim == 2 and id(param) not in embeddings:
            hidden.append(param)
        elif param.ndim >= 2:
            decay.append(param)
        else:
            no_decay.append(param)
    return hidden, decay, no_decay
