"""Atomic file and folder writes: a crash never leaves a complete-looking output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from asdtool.errors import AsdError, few


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp's private 0600 would become the file's mode
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o777 & ~current_umask())  # mkdtemp's private 0700 would become the folder's mode
        replace_dir(tmp_path, target)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move folder `src` onto `dst`, swapping out an existing `dst` only once the new one is in place."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / "x")
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def current_umask() -> int:
    """Return the process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_VCS_FILES = {".gitignore"}  # DVC lists a stage's file outputs in a .gitignore beside them


def check_output(path: str | Path, *, folder: bool, ours: Callable[[str], bool] | None = None) -> Path:
    """Return `path` after refusing, before any work starts, an output that cannot or must not be written.

    Refused: a folder output where a file is (or the reverse), an existing folder holding entries
    that `ours(name)` does not recognise as this command's own, and a place that cannot be written
    (a read-only file system, a parent that is a file). Nothing is created.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if folder and not path.is_dir():
            raise AsdError("exists and is not a folder; refusing to replace it (choose another output)", path)
        if not folder and path.is_dir():
            raise AsdError("is a folder; give a file name for this output", path)
        if folder and ours is not None:
            strangers = sorted(p.name for p in path.iterdir() if not ours(p.name) and p.name not in _VCS_FILES)
            if strangers:
                raise AsdError(f"holds {few(strangers, 1)}, which this command did not write; refusing to replace "
                               "the folder (choose another output)", path)  # fmt: skip
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: makedirs would fail later
            raise AsdError("its parent is a broken link", path)
        parent = parent.parent
    if not parent.is_dir():
        raise AsdError(f"cannot be created: {parent} is not a folder", path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".asdtool-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AsdError(f"cannot be written ({exc.strerror or exc.__class__.__name__} in {parent})", path) from None
    return path


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON (and a final newline) atomically."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
