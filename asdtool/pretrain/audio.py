"""What pre-training reads: every audio file under the given folders, never a test or anomalous clip.

Any folder tree of WAV or FLAC files is a corpus. DCASE layouts are recognised so that pointing
`asdtool pretrain --audio` at a data root can never leak evaluation data into pre-training:

- a folder named `test` or `*_test` (DCASE `<machine>/test/`, 2021's `source_test/` and
  `target_test/`) is skipped with everything below it;
- a file whose name is a DCASE clip name of the test split or labelled anomalous
  (`section_00_source_test_...`, `..._anomaly_...`) is skipped wherever it lies.

So a DCASE root contributes exactly its `<machine>/train/` clips (normal by definition), and the
supplemental or corpus folders beside it contribute everything they hold.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from asdtool.data.audio import SAMPLE_RATE, read_clip
from asdtool.core.errors import AsdError
from asdtool.train.trainset import StepBatches

AUDIO_SUFFIXES = (".wav", ".flac")
_HELD_OUT_NAME = re.compile(r"(^|_)(test|anomaly)(_|$)")


@dataclass
class Corpus:
    """The files pre-training reads and what was left out."""

    files: list[Path]
    skipped: int  # test or anomalous clips found and left out

    def fingerprint(self) -> str:
        """Return a sha256 over the file paths and sizes (a resumed run must read the same corpus)."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f}\0{f.stat().st_size}\n".encode())
        return h.hexdigest()


def held_out(rel: Path) -> bool:
    """Return whether a file (its path below the given folder) is under a test folder or named as a test/anomalous clip."""
    return any(is_test_folder(part) for part in rel.parent.parts) or bool(_HELD_OUT_NAME.search(rel.stem))


def is_test_folder(name: str) -> bool:
    """Return whether a folder holds test clips: `test`, or a domain's test folder (`source_test`, `target_test`)."""
    return name == "test" or name.endswith("_test")


def find_audio(paths: Sequence[str | Path]) -> Corpus:
    """Return the audio files under `paths` (files or folder trees), sorted, without test or anomalous clips."""
    files: dict[Path, None] = {}
    skipped: set[Path] = set()  # held-out clips, each counted once however many given folders reach it
    for given in paths:
        given = Path(given)
        if given.is_file():
            if given.suffix.lower() not in AUDIO_SUFFIXES:
                raise AsdError(f"not an audio file (expected {', '.join(AUDIO_SUFFIXES)})", given)
            if is_test_folder(given.parent.name) or held_out(Path(given.name)):
                raise AsdError("is a test or anomalous clip; pre-training never reads those", given)
            files[given] = None
            continue
        if not given.is_dir():
            raise AsdError("audio folder or file does not exist", given)
        if is_test_folder(given.name):
            raise AsdError("is a test folder; pre-training never reads test clips", given)
        found = 0
        for folder, dirs, names in os.walk(given):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(folder) / name
                if path.suffix.lower() not in AUDIO_SUFFIXES or name.startswith("."):
                    continue
                if held_out(path.relative_to(given)):
                    skipped.add(path)
                    continue
                files[path] = None
                found += 1
        if not found:
            raise AsdError(f"holds no audio files ({', '.join(AUDIO_SUFFIXES)}) outside test folders", given)
    return Corpus(sorted(files), len(skipped))


class CropDataset(torch.utils.data.Dataset):
    """Random crops of `seconds` from clips (one `channel` of stereo ones); item (clip index, key) -> wave,
    the crop start a pure function of (seed, key)."""

    def __init__(self, files: Sequence[Path], seconds: float, seed: int, channel: str = "left"):
        self.files, self.seed, self.channel = list(files), seed, channel
        self.n = int(round(seconds * SAMPLE_RATE))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, key = item
        wave = read_clip(self.files[index], seconds=None, channel=self.channel)
        if wave.shape[0] > self.n:
            start = int(np.random.default_rng([self.seed, key]).integers(0, wave.shape[0] - self.n + 1))
            wave = wave[start : start + self.n]
        elif wave.shape[0] < self.n:
            wave = np.pad(wave, (0, self.n - wave.shape[0]))
        return torch.from_numpy(np.ascontiguousarray(wave))


class CropBatches(StepBatches):
    """StepBatches whose items carry their global position too, which seeds each crop."""

    def micro_batch(self, g: int) -> list[tuple[int, int]]:
        """Return this process's items of micro-batch g: (clip index, global position), the position seeding the crop."""
        pos = list(range(g * self.batch, (g + 1) * self.batch))
        items = [(int(self._perm(p // self.n)[p % self.n]), p) for p in pos]
        return items[self.rank :: self.world]
