"""Tests for asdtool/core/atomic.py: atomic file and folder writes, leftovers of killed runs, writability checks."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from asdtool.core import atomic
from asdtool.core.atomic import (
    atomic_dir,
    atomic_path,
    check_writable,
    clean_leftovers,
    current_umask,
    replace_dir,
    staging_dir,
    write_json,
)
from asdtool.core.errors import AsdError
from asdtool.core.outputs import TMP_PREFIX


def _dead_pid() -> int:
    """Return the process id of a process that has already exited."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(out.stdout)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


# ----------------------------------------------------------------------------- atomic_path


def test_atomic_path_writes_the_file_under_a_temporary_name_beside_it_then_renames(tmp_path):
    target = tmp_path / "sub" / "deeper" / "out.csv"  # missing parents are made
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.exists() and tmp.stat().st_size == 0
        assert tmp.name.startswith(f"{TMP_PREFIX}{os.getpid()}-out.csv.") and tmp.name.endswith(".tmp")
        tmp.write_text("a,b\n")
        assert not target.exists()  # nothing at the target until the block succeeds
    assert target.read_text() == "a,b\n"
    assert _names(target.parent) == ["out.csv"]


def test_atomic_path_replaces_an_existing_file_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new, half written")
        assert target.read_text() == "old"  # readers see the old file whole while the new one is written
    assert target.read_text() == "new, half written"

    with pytest.raises(ValueError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("broken")
            raise ValueError("boom")
    assert target.read_text() == "new, half written"
    assert _names(tmp_path) == ["out.txt"]  # the temporary file went


def test_atomic_path_leaves_nothing_when_the_first_write_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "never.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError
    assert _names(tmp_path) == []


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_path_gives_the_file_the_umask_mode_not_mkstemps_private_one(tmp_path, umask, mask):
    umask(mask)
    with atomic_path(tmp_path / "f") as tmp:
        tmp.write_text("x")
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600  # mkstemp's, while it is being written
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~mask


def test_current_umask_reads_the_umask_and_keeps_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # reading did not change it
    umask(0o002)
    assert current_umask() == 0o002


def test_write_json_writes_indented_json_with_a_final_newline(tmp_path):
    path = tmp_path / "m" / "metrics.json"
    obj = {"official_score": 0.5, "machines": {"fan": [1, 2]}, "name": "ü"}
    write_json(path, obj)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=2) + "\n"
    assert json.loads(text) == obj
    assert _names(path.parent) == ["metrics.json"]


# ----------------------------------------------------------------------------- atomic_dir and replace_dir


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "old.csv").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and not any(tmp.iterdir())
        assert tmp.name.startswith(f"{TMP_PREFIX}{os.getpid()}-scores.") and tmp.name.endswith(".tmp")
        (tmp / "new.csv").write_text("new")
        assert _names(target) == ["old.csv"]  # the old folder stays whole meanwhile
    assert _names(target) == ["new.csv"] and (target / "new.csv").read_text() == "new"
    assert _names(tmp_path) == ["scores"]  # neither the temporary nor the swapped-out folder is left


def test_atomic_dir_keeps_the_old_folder_and_removes_the_temporary_one_on_an_error(tmp_path):
    target = tmp_path / "plots"
    target.mkdir()
    (target / "a.png").write_bytes(b"a")
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(target) as tmp:
            (tmp / "b.png").write_bytes(b"b")
            (tmp / "nested").mkdir()
            (tmp / "nested" / "c").write_bytes(b"c")
            raise OSError("disk full")
    assert _names(target) == ["a.png"] and (target / "a.png").read_bytes() == b"a"
    assert _names(tmp_path) == ["plots"]


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_dir_gives_the_folder_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask


def test_replace_dir_moves_a_folder_onto_a_missing_or_an_existing_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("1")
    replace_dir(src, tmp_path / "dst")
    assert not src.exists() and (tmp_path / "dst" / "f").read_text() == "1"

    src.mkdir()
    (src / "g").write_text("2")
    replace_dir(src, tmp_path / "dst")
    assert _names(tmp_path / "dst") == ["g"] and (tmp_path / "dst" / "g").read_text() == "2"
    assert _names(tmp_path) == ["dst"]


def test_replace_dir_swaps_an_existing_folder_in_one_step(tmp_path, monkeypatch):
    target = tmp_path / "scores"
    target.mkdir()
    (target / "old.csv").write_text("old")
    renames = []
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: renames.append((a, b)))  # a two-rename swap would show here
    with atomic_dir(target) as tmp:
        (tmp / "new.csv").write_text("new")
    assert renames == []  # renameat2(RENAME_EXCHANGE): no moment without a folder at the target
    assert _names(target) == ["new.csv"] and _names(tmp_path) == ["scores"]


def test_an_interrupt_between_the_two_renames_lands_after_the_swap(tmp_path, monkeypatch):
    """Where the system cannot swap in one step, SIGINT is held back between the two renames."""
    target = tmp_path / "scores"
    target.mkdir()
    (target / "old.csv").write_text("old")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 1:  # the old folder is moved aside: Ctrl-C arrives now
            os.kill(os.getpid(), signal.SIGINT)
        real_replace(src, dst)

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "new.csv").write_text("new")
    monkeypatch.undo()
    assert len(calls) == 2  # both renames ran before the interrupt was delivered
    assert _names(target) == ["new.csv"] and (target / "new.csv").read_text() == "new"
    assert _names(tmp_path) == ["scores"]  # the old folder went too, though the interrupt came first


# ----------------------------------------------------------------------------- staging_dir and leftovers


def test_staging_dir_is_a_new_folder_beside_the_target_with_the_umask_mode(tmp_path, umask):
    umask(0o027)
    a = staging_dir(tmp_path / "out" / "model")
    b = staging_dir(tmp_path / "out" / "model")
    assert a != b and a.is_dir() and b.is_dir() and a.parent == tmp_path / "out"
    assert a.name.startswith(f"{TMP_PREFIX}{os.getpid()}-model.") and a.name.endswith(".tmp")
    assert stat.S_IMODE(a.stat().st_mode) == 0o777 & ~0o027
    assert not (tmp_path / "out" / "model").exists()


def test_staging_dir_removes_a_killed_runs_leftover_folder(tmp_path):
    left = tmp_path / f"{TMP_PREFIX}{_dead_pid()}-model.x1y2.tmp"
    (left / "inner").mkdir(parents=True)
    (left / "inner" / "checkpoint.pt").write_bytes(b"\0" * 100)
    new = staging_dir(tmp_path / "model")
    assert not left.exists() and _names(tmp_path) == [new.name]


def test_clean_leftovers_removes_only_dead_writers_temporary_files_of_the_target(tmp_path):
    dead = _dead_pid()
    gone_file = tmp_path / f"{TMP_PREFIX}{dead}-b.asd.abc.tmp"
    gone_file.write_bytes(b"x")
    gone_dir = tmp_path / f"{TMP_PREFIX}{dead}-b.asd.def.tmp"
    (gone_dir / "sub").mkdir(parents=True)
    kept = {
        "live": tmp_path / f"{TMP_PREFIX}{os.getpid()}-b.asd.ghi.tmp",  # this process: a live writer
        "unsignalable": tmp_path / f"{TMP_PREFIX}1-b.asd.jkl.tmp",  # pid 1 runs: may not be ours to judge
        "other target": tmp_path / f"{TMP_PREFIX}{dead}-c.asd.mno.tmp",
        "no .tmp": tmp_path / f"{TMP_PREFIX}{dead}-b.asd.pqr",
        "no pid": tmp_path / f"{TMP_PREFIX}x-b.asd.stu.tmp",
        "no dash": tmp_path / f"{TMP_PREFIX}{dead}b.asd.vwx.tmp",
        "user": tmp_path / "b.asd.abc.tmp",
        "the target": tmp_path / "b.asd",
    }
    for path in kept.values():
        path.write_bytes(b"keep")
    removed = clean_leftovers(tmp_path / "b.asd")
    assert sorted(removed) == sorted([gone_file, gone_dir])
    assert not gone_file.exists() and not gone_dir.exists()
    assert all(p.read_bytes() == b"keep" for p in kept.values()), [k for k, p in kept.items() if not p.exists()]
    assert clean_leftovers(tmp_path / "b.asd") == []


def test_clean_leftovers_of_a_missing_folder_is_nothing(tmp_path):
    assert clean_leftovers(tmp_path / "missing" / "out.csv") == []
    assert not (tmp_path / "missing").exists()


def test_a_leftover_link_is_unlinked_not_followed(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("mine")
    link = tmp_path / f"{TMP_PREFIX}{_dead_pid()}-out.zz.tmp"
    link.symlink_to(keep, target_is_directory=True)
    assert clean_leftovers(tmp_path / "out") == [link]
    assert not link.is_symlink() and (keep / "precious").read_text() == "mine"


# ----------------------------------------------------------------------------- check_writable


def test_check_writable_returns_the_path_and_creates_nothing(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    assert check_writable(path) == path
    assert _names(tmp_path) == []  # neither the missing parents nor the probe file
    assert check_writable(tmp_path / "x.csv") == tmp_path / "x.csv" and _names(tmp_path) == []


def test_check_writable_refuses_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "sub" / "out.json"
    with pytest.raises(AsdError) as error:
        check_writable(path)
    assert str(error.value) == f"{path}: cannot be created: {tmp_path / 'file'} is not a folder"
    assert error.value.path == path


def test_check_writable_refuses_a_broken_link_parent(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    path = tmp_path / "dangling" / "out.json"
    with pytest.raises(AsdError, match=r"out.json: its parent is a broken link$"):
        check_writable(path)


def test_check_writable_refuses_a_place_where_no_file_can_be_made(tmp_path, monkeypatch):
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(AsdError) as error:
        check_writable(tmp_path / "new" / "out.csv")
    assert str(error.value) == f"{tmp_path / 'new' / 'out.csv'}: cannot be written (Read-only file system in {tmp_path})"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(AsdError, match=r"cannot be written \(Permission denied in .*ro\)"):
            check_writable(ro / "out.csv")
    finally:
        ro.chmod(0o700)
