"""A llmforge plugin for the benchmarks: torch.profiler over a window of optimizer steps of the real training
path, summarised as the share of op time in matmuls, in attention and in each of the largest other ops.

Where matmuls are cheap (AMX, tensor cores) the other ops decide the speed; the summary printed with an
MFU figure shows which of them grew when it falls. Listed in a recipe's `plugins:` as any plugin would be;
the window is set by the benchmark before the run (`WINDOW`), the summary read after it (`SUMMARY`).
"""

from __future__ import annotations

from typing import Any

import pluggy
import torch

hookimpl = pluggy.HookimplMarker("llmforge")

WINDOW: tuple[int, int] | None = None  # (first, last) optimizer step profiled, both included
SUMMARY: dict[str, Any] | None = None
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation", "aten::linear"}
ATTENTION = ("scaled_dot_product", "flash_attention", "flex_attention", "efficient_attention")  # in kernels' names
_profiler: torch.profiler.profile | None = None


def _self_time(event: Any) -> float:
    device = getattr(event, "self_device_time_total", 0.0) or 0.0
    return device if torch.cuda.is_available() else event.self_cpu_time_total


def summarise(events: Any, top: int = 6) -> dict[str, Any]:
    """{"matmul": share, "attention": share, "others": [(op, share), ...]} of the total self time."""
    shares = {"matmul": 0.0, "attention": 0.0}
    others = {}
    for event in events:
        if (spent := _self_time(event)) <= 0:
            continue
        if event.key in MATMULS:
            shares["matmul"] += spent
        elif any(name in event.key for name in ATTENTION):
            shares["attention"] += spent
        else:
            others[event.key] = others.get(event.key, 0.0) + spent
    total = sum(shares.values()) + sum(others.values()) or 1.0
    top_others = sorted(((k, t / total) for k, t in others.items()), key=lambda kv: -kv[1])[:top]
    return {
        "matmul": shares["matmul"] / total,
        "attention": shares["attention"] / total,
        "others": top_others,
        "op_ms": total / 1000,
    }


def describe(summary: dict[str, Any]) -> str:
    """One line: the matmul and attention shares, then the largest other ops."""
    others = ", ".join(f"{name.removeprefix('aten::')} {100 * share:.1f}%" for name, share in summary["others"])
    return f"matmuls {100 * summary['matmul']:.1f}%, attention kernels {100 * summary['attention']:.1f}%; then {others}"


@hookimpl
def on_log(stage: str, metrics: dict[str, Any]) -> None:
    """Started after the step before the window (logged every step), stopped after its last step."""
    global _profiler, SUMMARY
    if WINDOW is None or "loss" not in metrics:
        return
    step = metrics["step"]
    if step == WINDOW[0] - 1 and _profiler is None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        _profiler = torch.profiler.profile(activities=activities)
        _profiler.start()
    elif step == WINDOW[1] and _profiler is not None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        _profiler.stop()
        SUMMARY = summarise(_profiler.key_averages())
        _profiler = None
