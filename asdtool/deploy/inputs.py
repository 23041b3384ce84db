"""What `asdtool score` and `asdtool serve` score: files, folders, globs, stdin and uploads, each with its machine type and section.

`expand_paths` turns the command line's files, folders and glob patterns into audio files,
`read_audio_bytes` decodes the bytes of stdin or of an upload with the checks a file gets, and
`recording_of` tells each recording's machine type and section, from the caller's options or else
from its name. The two callers differ only in what a name may tell and in how their users give what
it does not (an `Origin`): `FILES` for the command line, whose names are files here, and `UPLOADS`
for the service, whose names are the client's and never looked up on the server's disk. A machine
type or section the bundle has no detector for is a `NoDetector`, which the service answers with 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from asdtool.core.errors import AsdError
from asdtool.deploy.bundle import Bundle

AUDIO_SUFFIXES = (".wav", ".flac")
STDIN = "-"


@dataclass
class Recording:
    """One input of `asdtool score`: where its audio is, what to call it, and its machine type and section."""

    name: str
    path: Path
    machine: str
    section: str


@dataclass(frozen=True)
class Origin:
    """Where a caller's recordings come from: which folders their names tell, and how its user gives what they do not."""

    on_disk: bool  # True: a file here, the folders above it (resolved) count; False: only the name's own folders
    machine_option: str  # what the messages ask the user to give
    section_option: str


FILES = Origin(True, "--machine", "--section")  # asdtool score
UPLOADS = Origin(False, "?machine=", "?section=")  # asdtool serve: the client's name, nothing on the server's disk


class NoDetector(AsdError):
    """A recording of a machine type or section the bundle has no detector for (the service answers it with 404)."""


def expand_paths(items: Sequence[str]) -> list[str | Path]:
    """Return the audio files that files, folders (every .wav/.flac below) and glob patterns name, in order, once each; `-` stays."""
    import glob

    out: dict[str | Path, None] = {}
    for item in items:
        if item == STDIN:
            out[STDIN] = None
            continue
        path = Path(item)
        if path.is_file():
            out[path] = None
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                raise AsdError("holds no .wav or .flac files", path)
            out.update(dict.fromkeys(found))
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise AsdError("matches no file", item)
            out.update(dict.fromkeys(found))
        else:
            raise AsdError("no such file or folder", path)
    return list(out)


def read_audio_bytes(data: bytes, name: str, max_seconds: float | None = None) -> np.ndarray:
    """Return the channels [C, T] of WAV/FLAC bytes (stdin, an upload), checked as a file is; errors name `name`.

    With `max_seconds`, a recording whose header declares more audio is refused before decoding
    (`asdtool.data.audio.TooLong`).
    """
    import os
    import tempfile

    from asdtool.data.audio import read_channels

    fd, tmp = tempfile.mkstemp(prefix="asdtool-audio-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return read_channels(tmp, seconds=None, max_seconds=max_seconds)
    except AsdError as exc:
        raise type(exc)(exc.problem, name) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def recording_of(bundle: Bundle, path: Path, name: str, machine: str | None, section: str | None,
                 origin: Origin = FILES) -> Recording:  # fmt: skip
    """Return a recording with its machine type (given, or the nearest folder above it named as one of the bundle's) and section.

    Without `machine`, the machine type is the nearest folder that is one of the bundle's, else the
    bundle's only one; without `section`, the section comes from the file name, else it is the
    machine type's only one. With `UPLOADS` the folders are the name's own (`fan/test/section_00_...wav`,
    `\\` read as `/`) and nothing on disk is looked at. A type or section the bundle lacks is a `NoDetector`.
    """
    from asdtool.data.layouts import section_of

    known = bundle.machines
    named = Path(name) if origin.on_disk else PurePosixPath(name.replace("\\", "/"))
    if machine is None and name != STDIN:
        folders = (p.name for p in path.resolve().parents) if origin.on_disk else reversed(named.parts[:-1])
        machine = next((f for f in folders if f in known), None)
    if machine is None and len(known) == 1:
        machine = next(iter(known))
    if machine is None:
        where = "above it" if origin.on_disk else "in its name"
        raise AsdError(f"cannot tell its machine type: no folder {where} is one of the bundle's ({', '.join(known)}); "
                       f"give {origin.machine_option}", name)  # fmt: skip
    if machine not in known:
        raise NoDetector(f"the bundle has no machine type {machine!r} (it has {', '.join(known)})", name)
    if section is None:
        try:
            section = section_of(named.name)
        except ValueError:
            if len(known[machine]) != 1:
                raise AsdError(f"cannot tell its section from its name; give {origin.section_option} (one of "
                               f"{', '.join(known[machine])})", name) from None  # fmt: skip
            section = known[machine][0]
    if section not in known[machine]:
        raise NoDetector(f"the bundle has no section {section} of {machine} (it has {', '.join(known[machine])})", name)
    return Recording(name, path, machine, section)
