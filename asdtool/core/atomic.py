"""Atomic file and folder writes: a crash never leaves a complete-looking output."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from asdtool.core.errors import AsdError


def _tmp_prefix(target: Path) -> str:
    """Return the prefix of this process's temporary files for `target`: .asdtool-tmp-<pid>-<name>."""
    from asdtool.core.outputs import TMP_PREFIX

    return f"{TMP_PREFIX}{os.getpid()}-{target.name}."


def clean_leftovers(target: str | Path) -> list[Path]:
    """Remove the temporary files and folders of `target` that a killed asdtool process left; return them.

    A temporary name records its writer's process id; one whose process no longer runs on this
    machine is a leftover of a killed run (SIGKILL, a power cut) and goes. Another process's live
    temporary files stay.
    """
    from asdtool.core.outputs import TMP_PREFIX

    target = Path(target)
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        name = p.name
        if not name.startswith(TMP_PREFIX) or not name.endswith(".tmp"):
            continue
        pid, dash, rest = name[len(TMP_PREFIX):].partition("-")
        if not dash or not pid.isdigit() or not rest.startswith(target.name + "."):
            continue
        if _alive(int(pid)):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    """Return whether a process of this id runs (or may run: one we may not signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The temporary file is named .asdtool-tmp-<pid>-<target name>.<random>.tmp; it is removed on any
    error or interrupt, and a later run removes one that a killed process left (`clean_leftovers`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
        tmp_path = Path(tmp)
        os.close(fd)
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp's private 0600 would become the file's mode
        os.replace(tmp_path, target)
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp_path = None
    try:
        tmp_path = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
        yield tmp_path
        os.chmod(tmp_path, 0o777 & ~current_umask())  # mkdtemp's private 0700 would become the folder's mode
        replace_dir(tmp_path, target)
    finally:
        if tmp_path is not None and tmp_path.exists():
            shutil.rmtree(tmp_path)


def staging_dir(target: str | Path) -> Path:
    """Return a new temporary folder beside `target` (the folder's usual mode), after removing killed runs' leftovers.

    The caller removes it when done (a `finally`); one a killed process left goes at the next run.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    path = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(path, 0o777 & ~current_umask())  # mkdtemp's private 0700 would become the output's mode
    except BaseException:  # an interrupt here: the caller never got the folder to remove
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move folder `src` onto `dst`; an existing `dst` is swapped out in one step, so `dst` is always whole.

    Where the system swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`), `src` and `dst`
    trade places and the old folder, now at `src` (a temporary name), is removed. Elsewhere the old
    folder is moved aside and the new one renamed in with SIGINT and SIGTERM held back between the two
    renames, so an interrupt lands after the swap.
    """
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
        return
    if dst.is_dir() and not dst.is_symlink() and _exchange(src, dst):
        shutil.rmtree(src)  # the old folder; a kill before this leaves a leftover the next run removes
        return
    old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dst), suffix=".tmp", dir=dst.parent))
    try:
        with _signals_held():
            os.replace(dst, old / "x")
            try:
                os.replace(src, dst)
            except BaseException:
                os.replace(old / "x", dst)  # the new one did not go in: the old one goes back
                raise
    finally:  # also when a held interrupt is delivered on leaving the block
        if not (old / "x").exists() or dst.exists():  # never remove the only copy of the old folder
            shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):  # kernel or file system without it
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (main thread only); a held one is delivered right after.

    The Python handlers are swapped for ones that only take note, rather than masking the signals: a
    signal sent to the process may be taken by any of its threads, and a mask holds back only its own.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler is not None:  # None: set outside Python, which we leave alone
            previous[number] = signal.signal(number, lambda n, _frame: caught.append(n))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def current_umask() -> int:
    """Return the process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path) -> Path:
    """Return `path` after refusing, before any work starts, a place that cannot be written.

    Refused: a read-only file system, a parent that is a file or a broken link. Nothing is created.
    What may be replaced there is the output rule's business (`asdtool.core.outputs`).
    """
    path = Path(path)
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
