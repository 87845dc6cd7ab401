"""Regenerate the example outputs the docs show (docs/outputs/*.txt) by running the documented commands.

    OMP_NUM_THREADS=1 python docs/outputs/generate.py           # all of them: 2-3 minutes on 2 CPU cores
    python docs/outputs/generate.py --only data-report          # one (and the ones it needs before it)
    python docs/outputs/generate.py --check                     # were the stored files made by the current code?
    python docs/outputs/generate.py --verify                    # rerun into a temp dir, compare the figures

Never edit docs/outputs/*.txt by hand: pages include them with pymdownx.snippets
(`--8<-- "outputs/run.txt:output"` inside a ```text block) and tests/test_docs_site.py fails on a
terminal-output block pasted by hand for a command listed here.

The commands run one after the other, as a newcomer types them (README.md "Your first hour",
docs/quickstart.md), in a scratch directory that holds a link `examples -> REPO/examples`, so that the
command lines and the paths they print read exactly as in the docs (`runs/first/...`). Output is
captured from stdout at a fixed terminal width (COLUMNS=80) with one CPU thread and fixed seeds, so a
rerun on the same machine and library versions prints the same numbers; only times and tokens/s vary
(`normalise` masks them when comparing). Each file records its command, the commands that ran before
it in the same run directory, and a fingerprint of the code and data it came from: a sha256 over the
contents of src/llmforge, plugins/ and the example files the commands read (no git needed).

The whole run is idempotent: the scratch directory is new each time and every file is rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = Path(__file__).resolve().parent
COLUMNS = 80  # fits a code block of the docs site at 1280 px without scrolling (tests/test_docs_site.py)
QUESTION = "Whom does Elizabeth Bennet marry?"

# What the fingerprint covers: the code every command runs and the example files it reads.
FINGERPRINTED = [
    ("src/llmforge", "*.py"),
    ("plugins", "*.py"),
    ("plugins", "*.toml"),
    ("examples", "instruct_tiny.yaml"),
    ("examples/data/corpus", "*"),
    ("examples/data/instruct", "*"),
    ("examples/data/benchmarks", "*"),
]
LIBRARIES = ("torch", "transformers", "tokenizers", "datasets", "lm_eval", "rich")


@dataclass
class Output:
    """One captured command: docs/outputs/NAME.txt."""

    name: str
    command: str
    after: list[str] = field(default_factory=list)  # outputs whose commands must have run first (same dir)
    summary: bool = False  # also mark the last table as section "summary"


OUTPUTS_LIST = [
    Output("data-report", "llmforge data-report examples/instruct_tiny.yaml --out runs/first"),
    Output("run", "llmforge run examples/instruct_tiny.yaml --out runs/first", ["data-report"], summary=True),
    Output("generate", f'llmforge generate runs/first/finetune/final "{QUESTION}" --chat --seed 0', ["run"]),
    Output(
        "eval",
        "llmforge eval runs/first/train/final runs/first/finetune/final --tasks mmlu,hellaswag "
        "--data-dir examples/data/benchmarks --out runs/first/benchmarks",
        ["run"],
    ),
    Output("show-example", "llmforge show-example examples/instruct_tiny.yaml --out runs/first --index 40", ["run"]),
    Output("compare", f'llmforge compare runs/first --prompt "{QUESTION}" --chat', ["run"]),
]
BY_NAME = {o.name: o for o in OUTPUTS_LIST}
START, END = "--8<-- [start:{}]", "--8<-- [end:{}]"


def fingerprint() -> str:
    digest = hashlib.sha256()
    for folder, pattern in FINGERPRINTED:
        for path in sorted((REPO / folder).rglob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
                digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def environment() -> str:
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name.replace('_', '-'))}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"python {platform.python_version()}, " + ", ".join(versions)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        COLUMNS=str(COLUMNS),
        LINES="50",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        NO_COLOR="1",
        TERM="dumb",
    )
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTEST_CURRENT_TEST"):
        out.pop(name, None)
    return out


def plan(only: list[str] | None) -> list[Output]:
    """The outputs to produce, with the ones they depend on, in the order of OUTPUTS_LIST."""
    wanted: set[str] = set()

    def need(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for before in BY_NAME[name].after:
                need(before)

    for name in only or list(BY_NAME):
        if name not in BY_NAME:
            raise SystemExit(f"unknown output {name!r}; one of: {', '.join(BY_NAME)}")
        need(name)
    return [o for o in OUTPUTS_LIST if o.name in wanted]


def capture(output: Output, workdir: Path) -> tuple[str, float]:
    """Run the command in `workdir`; its stdout with paths made relative and trailing spaces dropped."""
    argv = shlex.split(output.command)
    executable = Path(sys.executable).with_name(argv[0])
    argv[0] = str(executable) if executable.exists() else argv[0]
    started = time.monotonic()
    environment = {**env(), "LLMFORGE_CACHE_DIR": str(workdir / ".llmforge-cache")}  # a new user's: no measurements
    done = subprocess.run(argv, cwd=workdir, env=environment, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(
            f"`{output.command}` failed with exit code {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    text = done.stdout
    for prefix in (str(workdir.resolve()), str(workdir), str(REPO)):
        text = text.replace(prefix + os.sep, "")
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n", seconds


def last_table(body: str) -> tuple[int, int]:
    """Line range of the last rich table (its title line to the end of its bottom border)."""
    lines = body.splitlines()
    top = max(i for i, line in enumerate(lines) if line.lstrip().startswith(("┏", "┌")))
    bottom = next(i for i in range(top, len(lines)) if lines[i].lstrip().startswith("└"))
    has_title = top > 0 and lines[top - 1].strip() and not lines[top - 1].lstrip().startswith(("─", "│", "┃"))
    start = top - 1 if has_title else top
    end = bottom + 1
    if end < len(lines) and lines[end].strip() and set(lines[end].strip()) - set("─│┃") and lines[end].startswith(" "):
        end += 1  # a centred caption under the table
    return start, end


def render(output: Output, body: str, code: str) -> str:
    """The file: a header (command, what ran before, fingerprint), then the output as section `output`."""
    before = [BY_NAME[name].command for name in _chain(output)]
    lines = [
        "# Captured by docs/outputs/generate.py; do not edit: rerun `python docs/outputs/generate.py`.",
        f"# command: {output.command}",
        *(f"# after: {command}" for command in before),
        f"# code: {code}",
        f"# environment: {environment()}; COLUMNS={COLUMNS}, OMP_NUM_THREADS=1, in a fresh directory",
        START.format("output"),
    ]
    body_lines = body.splitlines()
    if output.summary:
        start, end = last_table(body)
        body_lines = [
            *body_lines[:start],
            START.format("summary"),
            *body_lines[start:end],
            END.format("summary"),
            *body_lines[end:],
        ]
    return "\n".join([*lines, *body_lines, END.format("output")]) + "\n"


def _chain(output: Output) -> list[str]:
    seen: list[str] = []

    def walk(name: str) -> None:
        for before in BY_NAME[name].after:
            walk(before)
            if before not in seen:
                seen.append(before)

    walk(output.name)
    return seen


def read(path: Path) -> dict[str, str | list[str]]:
    """A stored file's header fields and sections: {'command': ..., 'after': [...], 'code': ..., 'output': ...}."""
    text = path.read_text(encoding="utf-8")
    fields: dict[str, str | list[str]] = {"after": []}
    for line in text.splitlines():
        m = re.match(r"# (command|after|code|environment): (.*)$", line)
        if m and m.group(1) == "after":
            fields["after"].append(m.group(2))  # type: ignore[union-attr]
        elif m:
            fields[m.group(1)] = m.group(2)
        if line == START.format("output"):
            break
    for name in ("output", "summary"):
        m = re.search(re.escape(START.format(name)) + r"\n(.*?)" + re.escape(END.format(name)), text, re.S)
        if m:
            body = m.group(1)
            fields[name] = re.sub(r"^--8<-- \[(start|end):[a-z-]+\]\n", "", body, flags=re.M)
    return fields


TIME = re.compile(
    r"\b\d+(\.\d+)?\s?(ms|s)\b"  # 61.2s, 0.3s, 12 ms
    r"|\b\d+m\s?\d+(\.\d+)?s\b"  # 1m 52s
    r"|\b\d+:\d\d:\d\d\b"  # 0:00:00
    r"|[\d,.]+(k|M)? tok/s"  # 9,025 tok/s
    r"|[\d,.]+(k|M)? tokens/s"
    r"|[\d,.]+(k|M)? (it|steps)/s"
)


def normalise(text: str) -> str:
    """The output with times and throughputs masked (they vary run to run); table padding collapsed."""
    text = TIME.sub("<t>", text)
    return "\n".join(re.sub(r"[ ─━]+", " ", line).strip() for line in text.splitlines()).strip() + "\n"


def produce(outputs: list[Output], workdir: Path, code: str, write_to: Path | None) -> dict[str, tuple[str, float]]:
    (workdir / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    results = {}
    for output in outputs:
        print(f"$ {output.command}", flush=True)
        body, seconds = capture(output, workdir)
        print(f"  {len(body.splitlines())} lines in {seconds:.0f} s", flush=True)
        results[output.name] = (body, seconds)
        if write_to is not None:
            (write_to / f"{output.name}.txt").write_text(render(output, body, code), encoding="utf-8")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help=f"one of {', '.join(BY_NAME)} (repeatable)")
    parser.add_argument("--check", action="store_true", help="only compare the stored fingerprints with the code")
    parser.add_argument("--verify", action="store_true", help="rerun into a temp dir and compare, write nothing")
    parser.add_argument("--workdir", type=Path, help="scratch directory to run in (default: a new temp dir)")
    args = parser.parse_args(argv)
    code = fingerprint()
    outputs = plan(args.only)
    if args.check:
        stale = [o.name for o in outputs if read(OUTPUTS / f"{o.name}.txt").get("code") != code]
        print(f"code {code}: " + (f"stale: {', '.join(stale)}" if stale else "every output is current"))
        return 1 if stale else 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmforge-docs-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise SystemExit(f"{workdir} is not empty: the commands must run in a fresh directory")
        results = produce(outputs, workdir, code, None if args.verify else OUTPUTS)
    print(f"{len(outputs)} outputs in {time.monotonic() - started:.0f} s (code {code})")
    if args.verify:
        differ = []
        for o in outputs:
            stored = read(OUTPUTS / f"{o.name}.txt").get("output", "")
            if normalise(str(stored)) != normalise(results[o.name][0]):
                differ.append(o.name)
        print("differ: " + ", ".join(differ) if differ else "the stored figures equal a fresh run")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
