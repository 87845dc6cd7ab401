"""The run directory: atomic artefact dirs, manifests, stale temporaries, atomic JSON and the run lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmforge import rundir
from llmforge.errors import RunDirError
from llmforge.rundir import MANIFEST


def siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def make_artefact(final: Path, fp: str = "fp1", info: dict | None = None) -> Path:
    with rundir.atomic_dir(final, fp, info) as tmp:
        (tmp / "a.txt").write_text("hello")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\x00" * 10)
    return final


# --- fingerprint / file_stats ---------------------------------------------------------------------


def test_fingerprint_is_stable_and_sensitive():
    a = rundir.fingerprint("data", {"x": 1, "y": [1, 2]})
    assert a == rundir.fingerprint("data", {"y": [1, 2], "x": 1})  # key order does not matter
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != rundir.fingerprint("data", {"x": 2, "y": [1, 2]})
    assert a != rundir.fingerprint("tokenizer", {"x": 1, "y": [1, 2]})
    assert rundir.fingerprint(Path("/a")) == rundir.fingerprint("/a")  # default=str


def test_file_stats_change_when_a_file_changes(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("one")
    before = rundir.file_stats([f])
    assert before == [(str(f.resolve()), 3, f.stat().st_mtime_ns)]
    f.write_text("three")
    assert rundir.file_stats([f]) != before


# --- atomic_dir -----------------------------------------------------------------------------------


def test_atomic_dir_complete_has_manifest(tmp_path):
    final = make_artefact(tmp_path / "stage" / "out", fp="abc", info={"documents": 3})
    assert siblings(final.parent) == ["out"]  # no temporary sibling left
    assert sorted(p.name for p in final.iterdir()) == sorted([MANIFEST, "a.txt", "sub"])
    manifest = rundir.read_manifest(final)
    assert manifest is not None
    assert manifest["fingerprint"] == "abc"
    assert manifest["info"] == {"documents": 3}
    assert manifest["files"] == {"a.txt": 5, os.path.join("sub", "b.bin"): 10}
    assert json.loads((final / MANIFEST).read_text())["files"] == manifest["files"]
    assert rundir.is_complete(final)
    assert rundir.is_complete(final, "abc")


def test_atomic_dir_yields_empty_temporary_sibling(tmp_path):
    final = tmp_path / "out"
    with rundir.atomic_dir(final, "fp") as tmp:
        assert tmp.parent == tmp_path
        assert tmp != final and tmp.name.startswith(".out.tmp-")
        assert list(tmp.iterdir()) == []
        assert not final.exists()  # nothing appears under the final name while writing
    assert final.is_dir() and not tmp.exists()


def test_atomic_dir_body_raises_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        with rundir.atomic_dir(final, "fp") as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("killed")
    assert not final.exists()
    assert siblings(tmp_path) == []
    assert not rundir.is_complete(final)


def test_atomic_dir_body_raises_keeps_previous_artefact(tmp_path):
    final = make_artefact(tmp_path / "out", fp="old")
    with pytest.raises(KeyboardInterrupt):
        with rundir.atomic_dir(final, "new") as tmp:
            (tmp / "new.txt").write_text("x")
            raise KeyboardInterrupt
    assert siblings(tmp_path) == ["out"]
    assert rundir.is_complete(final, "old")
    assert not (final / "new.txt").exists()


def test_atomic_dir_replaces_existing_dir(tmp_path):
    final = make_artefact(tmp_path / "out", fp="old")
    (final / "only_in_old.txt").write_text("stale")  # also makes the old one incomplete
    with rundir.atomic_dir(final, "new", {"v": 2}) as tmp:
        (tmp / "fresh.txt").write_text("new")
    assert siblings(tmp_path) == ["out"]  # the old copy moved aside is removed
    assert sorted(p.name for p in final.iterdir()) == sorted([MANIFEST, "fresh.txt"])
    assert rundir.is_complete(final, "new")
    assert not rundir.is_complete(final, "old")
    assert rundir.read_manifest(final)["info"] == {"v": 2}


def test_atomic_dir_removes_leftover_temporary_of_same_pid(tmp_path):
    final = tmp_path / "out"
    leftover = tmp_path / f".out.tmp-{os.getpid()}"
    leftover.mkdir()
    (leftover / "junk").write_text("from a crashed attempt")
    with rundir.atomic_dir(final, "fp") as tmp:
        assert tmp == leftover and list(tmp.iterdir()) == []
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST]
    assert siblings(tmp_path) == ["out"]


def test_replace_dir_moves_src_over_existing(tmp_path):
    src, final = tmp_path / "src", tmp_path / "final"
    src.mkdir()
    (src / "x").write_text("new")
    final.mkdir()
    (final / "y").write_text("old")
    rundir.replace_dir(src, final)
    assert siblings(tmp_path) == ["final"]
    assert siblings(final) == ["x"] and (final / "x").read_text() == "new"


# --- manifests: altered directories are not trusted -----------------------------------------------


def test_truncated_file_invalidates(tmp_path):
    final = make_artefact(tmp_path / "out")
    (final / "a.txt").write_text("hel")
    assert rundir.read_manifest(final) is None
    assert not rundir.is_complete(final)


def test_grown_file_in_subdir_invalidates(tmp_path):
    final = make_artefact(tmp_path / "out")
    with open(final / "sub" / "b.bin", "ab") as fh:
        fh.write(b"\x01")
    assert rundir.read_manifest(final) is None
    assert not rundir.is_complete(final, "fp1")


def test_added_file_invalidates(tmp_path):
    final = make_artefact(tmp_path / "out")
    (final / "sub" / "extra.txt").write_text("")
    assert rundir.read_manifest(final) is None
    assert not rundir.is_complete(final)


def test_removed_file_invalidates(tmp_path):
    final = make_artefact(tmp_path / "out")
    (final / "sub" / "b.bin").unlink()
    assert rundir.read_manifest(final) is None
    assert not rundir.is_complete(final)


def test_missing_manifest_or_dir_is_incomplete(tmp_path):
    final = make_artefact(tmp_path / "out")
    (final / MANIFEST).unlink()
    assert rundir.read_manifest(final) is None
    assert not rundir.is_complete(final)
    assert not rundir.is_complete(tmp_path / "never-written")


@pytest.mark.parametrize("content", ['{"fingerprint": "fp1", "files": ', "", "not json", "[]", '"text"', "null"])
def test_corrupt_manifest_is_incomplete(tmp_path, content):
    final = make_artefact(tmp_path / "out")
    (final / MANIFEST).write_text(content)
    assert rundir.read_manifest(final) is None
    assert not rundir.is_complete(final)


def test_fingerprint_mismatch_is_incomplete(tmp_path):
    final = make_artefact(tmp_path / "out", fp="fp1")
    assert rundir.is_complete(final, "fp1")
    assert not rundir.is_complete(final, "fp2")
    assert rundir.read_manifest(final)["fingerprint"] == "fp1"  # the files themselves are fine


def test_write_manifest_records_every_file(tmp_path):
    d = tmp_path / "d"
    (d / "x" / "y").mkdir(parents=True)
    (d / "x" / "y" / "deep.txt").write_text("1234")
    (d / "top").write_bytes(b"")
    rundir.write_manifest(d, "f", {"k": 1})
    manifest = rundir.read_manifest(d)
    assert manifest["files"] == {os.path.join("x", "y", "deep.txt"): 4, "top": 0}
    assert manifest["info"] == {"k": 1}
    assert isinstance(manifest["time"], float)


# --- clean_stale ----------------------------------------------------------------------------------


def test_clean_stale_removes_temporaries_only(tmp_path):
    (tmp_path / ".x.tmp-123").mkdir()
    (tmp_path / ".x.tmp-123" / "half").write_text("partial")
    (tmp_path / ".model.old-99").mkdir()
    (tmp_path / ".stats.json.tmp-7").write_text("{")
    keep = ["x", ".hidden", "x.tmp-1", "notes.old-2", ".lock"]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / ".y.tmp-5").write_text("inside a kept dir: not a sibling")
    for name in keep[1:]:
        (tmp_path / name).write_text("keep")
    rundir.clean_stale(tmp_path)
    assert siblings(tmp_path) == sorted(keep)
    assert (tmp_path / "x" / ".y.tmp-5").exists()


def test_clean_stale_missing_dir_is_noop(tmp_path):
    rundir.clean_stale(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


# --- write_json / write_text ----------------------------------------------------------------------


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "stats.json"
    rundir.write_json(target, {"b": 1, "a": [1, 2], "p": Path("/x")})
    assert siblings(target.parent) == ["stats.json"]
    text = target.read_text()
    assert text.endswith("\n")
    assert json.loads(text) == {"b": 1, "a": [1, 2], "p": "/x"}
    assert list(json.loads(text)) == ["b", "a", "p"]  # insertion order kept
    rundir.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert siblings(target.parent) == ["stats.json"]


def test_write_json_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "stats.json"
    rundir.write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        rundir.write_json(target, {("tuple", "key"): 1})
    assert json.loads(target.read_text()) == {"v": 1}
    assert siblings(tmp_path) == ["stats.json"]


def test_write_text(tmp_path):
    target = tmp_path / "a" / "recipe.yaml"
    rundir.write_text(target, "name: x\n")
    rundir.write_text(target, "name: y\n")
    assert target.read_text() == "name: y\n"
    assert siblings(target.parent) == ["recipe.yaml"]


# --- locked ---------------------------------------------------------------------------------------


def test_locked_creates_dir_and_releases(tmp_path):
    run = tmp_path / "run"
    with rundir.locked(run):
        assert (run / ".lock").is_file()
    with rundir.locked(run):  # released on exit: can be taken again
        pass


def test_locked_released_when_body_raises(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError):
        with rundir.locked(run):
            raise ValueError("stage failed")
    with rundir.locked(run):
        pass


def test_locked_twice_in_process_raises(tmp_path):
    run = tmp_path / "run"
    with rundir.locked(run):
        with pytest.raises(RunDirError) as info:
            with rundir.locked(run):
                pytest.fail("the second lock must not be granted")
        msg = str(info.value)
        assert f"Another llmforge process is using {run}" in msg
        assert "--out" in msg


def test_locked_held_by_another_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = textwrap.dedent(
        """
        import fcntl, sys
        fh = open(sys.argv[1], "w")
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the parent closes stdin
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(run / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match="Another llmforge process is using"):
            with rundir.locked(run):
                pytest.fail("the lock is held by the child process")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    with rundir.locked(run):  # the child is gone: the lock is free
        pass
