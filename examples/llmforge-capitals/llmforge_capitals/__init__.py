"""An llmforge benchmark plugin: `capitals`, a tiny multiple-choice task in its own lm-eval task folder.

The folder `tasks/` is plain lm-eval (a task YAML, its data and a loader), so
`lm_eval --include_path <this package>/tasks --tasks capitals` runs it without llmforge too.
"""

from __future__ import annotations

from pathlib import Path

from llmforge import Benchmark, hookimpl

TASKS = Path(__file__).parent / "tasks"


@hookimpl
def register_benchmarks(register) -> None:
    register(
        "capitals",
        Benchmark(
            tasks=["capitals"],
            rows=[("Capitals acc", "capitals", "acc"), ("Capitals acc_norm", "capitals", "acc_norm")],
            include_path=TASKS,
            builtin=False,  # the folder is self-contained: lm-eval need not index its ~15k built-in tasks
        ),
    )
