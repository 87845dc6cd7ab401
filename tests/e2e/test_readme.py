"""The README's first hour, run as a newcomer would type it: every command of its ```bash blocks after
the first two (install, which CI runs, and the tests, which is this suite), in order, in a temporary
copy of the examples, with fewer training steps. Illustrative commands that should not run belong in
```text blocks."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from test_noise import NOISE, TQDM_LINE

from conftest import REPO

# Small overrides that keep every stage but train for a few steps only.
FEWER_STEPS = [
    "train.max_steps=20", "train.eval_every=10", "train.save_every=10", "train.log_every=5",
    "finetune.max_steps=10", "finetune.eval_every=5", "finetune.save_every=5", "finetune.log_every=5",
]  # fmt: skip
VIEWERS = ("xdg-open", "open")
FOREIGN = re.compile(r"Warning:|\[transformers\]|\[datasets\]|warnings\.warn|Traceback")  # a library speaking


def foreign_lines(output: str) -> list[str]:
    """Lines of a command's output that are not llmforge's own: library warnings, known noise, tqdm bars."""
    return [
        line
        for line in output.splitlines()
        if FOREIGN.search(line) or TQDM_LINE.search(line) or any(message in line for message in NOISE)
    ]


def bash_blocks(readme: str) -> list[list[str]]:
    """The command lines of each ```bash block (comments and blank lines dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", readme, flags=re.MULTILINE | re.DOTALL)
    return [
        [line.strip() for line in b.splitlines() if line.strip() and not line.strip().startswith("#")] for b in blocks
    ]


def newcomer_commands(readme: str) -> list[str]:
    return [cmd for block in bash_blocks(readme)[2:] for cmd in block]


def adapt(cmd: str) -> str:
    """The README's command with fewer steps (run, data-report) or fewer benchmark rows (eval)."""
    words = shlex.split(cmd)
    if words[:2] in (["llmforge", "run"], ["llmforge", "data-report"]):
        words += [arg for item in FEWER_STEPS for arg in ("--set", item)]
    if words[:2] == ["llmforge", "eval"]:
        words += ["--limit", "5"]
    return shlex.join(words)


def test_readme_keeps_the_ci_contract():
    """.ci/run installs with the first bash block and tests with the second."""
    blocks = bash_blocks((REPO / "README.md").read_text())
    assert blocks[0] == [blocks[0][0]] and "pip install torch==2.13.0" in blocks[0][0] and '-e ".[dev]"' in blocks[0][0]
    assert blocks[1] == [blocks[1][0]] and "pytest" in blocks[1][0]
    commands = newcomer_commands((REPO / "README.md").read_text())
    kinds = [shlex.split(c)[:2] for c in commands]
    # install (above), run the example, read the summary, open the plot, chat, benchmark: in that order
    assert kinds.index(["llmforge", "run"]) < kinds.index(["xdg-open", "runs/first/loss.png"])
    assert kinds.index(["xdg-open", "runs/first/loss.png"]) < kinds.index(["llmforge", "generate"])
    assert kinds.index(["llmforge", "generate"]) < kinds.index(["llmforge", "eval"])
    assert "--chat" in commands[kinds.index(["llmforge", "generate"])]


def test_readme_first_hour_commands_run(tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(
        REPO / "examples",
        work / "examples",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "runs"),
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "COLUMNS": "200",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    commands = newcomer_commands((REPO / "README.md").read_text())
    assert len(commands) >= 5
    timings = []
    for cmd in commands:
        words = shlex.split(cmd)
        if words[0] in VIEWERS:  # no viewer here: check that what it would open is a picture
            path = work / words[-1]
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{cmd}: {path} is not a PNG"
            continue
        started = time.perf_counter()
        done = subprocess.run(
            adapt(cmd),
            shell=True,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            executable="/bin/bash",
        )
        timings.append((cmd, time.perf_counter() - started))
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert foreign_lines(done.stdout + done.stderr) == [], f"{cmd} printed lines that are not llmforge's"
        if words[:2] == ["llmforge", "run"]:
            assert "llmforge run" in done.stdout  # the summary table
            assert (work / "runs/first/loss.png").exists() and (work / "runs/first/data/lengths.png").exists()
        if words[:2] == ["llmforge", "eval"]:
            assert "MMLU" in done.stdout and "HellaSwag" in done.stdout
    print("\n".join(f"{t:6.1f}s  {c}" for c, t in timings))
