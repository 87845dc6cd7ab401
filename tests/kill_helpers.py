"""Start `llmforge run` as a real process, SIGKILL it at a chosen moment, finish the rerun.

Shared by the kill tests (test_resume, test_kill, test_streaming): every one of them starts the same
command, waits for a marker file, kills, and reruns the same command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

# A plugin that slows each logged step, so a test can kill between two chosen checkpoints.
SLOW_PLUGIN = """
import time
from llmforge import hookimpl

@hookimpl
def on_log(stage, metrics):
    time.sleep(0.15)
"""


def start_run(recipe: Path, out: Path, plugin_dir: Path, **env: str) -> subprocess.Popen:
    """`llmforge run RECIPE --out OUT` in its own process, one thread, plugins importable from `plugin_dir`."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmforge.cli", "run", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(plugin_dir), **env},
    )


def kill_when(proc: subprocess.Popen, marker: Path, what: str, timeout: float = 300, settle: float = 0.0) -> None:
    """SIGKILL `proc` once `marker` exists (after `settle` seconds); fail, naming `what`, if it never does."""
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the run never reached {what}: {proc.stderr.read()[-2000:] if proc.poll() else ''}"
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def finish(proc: subprocess.Popen) -> str:
    """Wait for a run that must succeed; its stdout."""
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def reference_and_killed_at_checkpoint(recipe: dict, tmp_path: Path, step: int = 6) -> tuple[Path, Path, Path]:
    """Run `recipe` (slowed by SLOW_PLUGIN) to its end in tmp_path/reference, then again in tmp_path/killed,
    SIGKILLed once checkpoint-`step` is complete. Returns (the recipe file, the reference dir, the killed dir)."""
    (tmp_path / "slow_steps.py").write_text(SLOW_PLUGIN)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, "plugins": ["slow_steps"]}))
    reference, out = tmp_path / "reference", tmp_path / "killed"
    finish(start_run(path, reference, tmp_path))
    proc = start_run(path, out, tmp_path)
    kill_when(
        proc, out / "train" / "checkpoints" / f"checkpoint-{step}" / ".llmforge.json", f"checkpoint-{step}", settle=0.2
    )
    assert not (out / "train" / "final").exists()
    return path, reference, out
