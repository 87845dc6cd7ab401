"""One process or many (torchrun, accelerate launch): the shared state, the world size, the device choice."""

from __future__ import annotations

import os
from typing import Any

import torch


def use_cpu() -> bool:
    """True without a CUDA or MPS device: the Trainer and the distributed state make the same choice."""
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def training_device() -> torch.device:
    """The device this process trains on (its local rank's GPU under torchrun): where a quantized base is
    loaded, as the Trainer does not move one."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def distributed_state() -> Any:
    """accelerate's PartialState when launched as one of several processes (torchrun, accelerate
    launch), else None. Creating it joins the process group, so every stage sees the world size."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def world_size() -> int:
    return max(1, torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
