"""The run directory: atomic artefacts, stage fingerprints and manifests.

An artefact directory is written into a temporary sibling and renamed into place only when it is
complete, with a manifest (`.llmforge.json`: the stage fingerprint and every file's size) written
last. A directory without a manifest, or whose files do not match it, is never trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmforge.errors import RunDirError

MANIFEST = ".llmforge.json"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (configs, other fingerprints, file stats)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_stats(paths: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of files, so an edited input changes a fingerprint."""
    out = []
    for p in sorted(paths):
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return out


def _listing(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(directory: Path, fp: str, info: dict[str, Any] | None = None) -> None:
    manifest = {"fingerprint": fp, "files": _listing(directory), "info": info or {}, "time": time.time()}
    write_json(directory / MANIFEST, manifest)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a complete artefact directory, or None if it is absent, partial or altered."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    try:
        if _listing(directory) != manifest.get("files"):
            return None
    except OSError:
        return None
    return manifest


def is_complete(directory: Path, fp: str | None = None) -> bool:
    manifest = read_manifest(directory)
    return manifest is not None and (fp is None or manifest.get("fingerprint") == fp)


@contextlib.contextmanager
def atomic_dir(final: Path, fp: str, info: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of `final`; on success write its manifest and swap it in."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        write_manifest(tmp, fp, info)
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, final: Path) -> None:
    """Move `src` to `final`; an old `final` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(src, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(directory: Path) -> None:
    """Remove temporary siblings that a killed run left behind (never trusted, never reused)."""
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


MODEL_STAGES = ("finetune", "train")  # a run's finished models, the latest first


def is_run(path: Path) -> bool:
    """An llmforge run directory (its recipe.yaml and at least one stage's folder)."""
    return (path / "recipe.yaml").is_file() and any((path / d).is_dir() for d in ("data", *MODEL_STAGES))


def latest_model(run_dir: Path) -> Path | None:
    """The run's latest finished model dir: finetune/final if complete, else train/final, else None."""
    for stage in MODEL_STAGES:
        if is_complete(run_dir / stage / "final"):
            return run_dir / stage / "final"
    return None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a temp file nor a changed target
        raise


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory so two runs never write into it at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as fh:  # "a": taking the lock changes no file
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunDirError(
                f"Another llmforge process is using {run_dir}. Wait for it to finish or choose another --out."
            ) from exc
        yield
