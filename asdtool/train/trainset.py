"""What fine-tuning trains on: the training clips, their classes, and the batches of every step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from asdtool.data import dcase
from asdtool.data.audio import read_clip, views
from asdtool.core.errors import AsdError


@dataclass
class TrainingSet:
    """Training clips with their class indices."""

    clips: list[dcase.Clip]
    targets: np.ndarray  # int64 [N]
    class_map: dict[str, int]  # class key -> index


def read_pseudo_labels(path: str | Path) -> dict[tuple[str, str], str]:
    """Return {(machine, file_name): pseudo label} from a `file_name,machine,pseudo_label` file."""
    path = Path(path)
    if not path.is_file():
        raise AsdError("pseudo-label file does not exist", path)
    out: dict[tuple[str, str], str] = {}
    rows = dcase.read_csv_rows(path, "the pseudo-label file")
    if not rows or rows[0][:3] != ["file_name", "machine", "pseudo_label"]:
        raise AsdError("pseudo-label file has no 'file_name,machine,pseudo_label' header", path)
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 3 or not row[2].strip():
            raise AsdError(f"line {line_no} is not file_name,machine,pseudo_label", path)
        out[(row[1], row[0])] = row[2].strip()
    return out


def training_set(dataset: dcase.Dataset, pseudo_labels: str | Path | None = None) -> TrainingSet:
    """Return the training clips and their classes: one per (machine type, attribute combination).

    With pseudo labels, the clips of every machine type the file covers take the class
    `<machine>/pseudo_<label>` instead (the paper's second stage); the file must cover all the
    training clips of those machine types and name no other clip. Classes are numbered in sorted order.
    """
    clips = dataset.select(split="train") + dataset.select(split=dcase.SUPPLEMENTAL)  # supplemental: read only when asked
    if not clips:
        raise AsdError("no training clips found", dataset.root)
    roots = ", ".join(dcase.root_label(r) for r in dataset.roots or [dataset.root])
    keys = [c.class_key for c in clips]
    if pseudo_labels is not None:
        pseudo = read_pseudo_labels(pseudo_labels)
        known = {(c.machine, c.file_name) for c in clips}
        unknown = [f"{m}/{n}" for m, n in pseudo if (m, n) not in known]
        if unknown:
            raise AsdError(f"names {len(unknown)} clip(s) that are not training clips of {roots}, e.g. {unknown[0]}", pseudo_labels)
        covered = {m for m, _ in pseudo}
        missing = [c for c in clips if c.machine in covered and (c.machine, c.file_name) not in pseudo]
        if missing:
            raise AsdError(f"misses {len(missing)} training clip(s) of {missing[0].machine}, e.g. {missing[0].file_name}", pseudo_labels)
        keys = [f"{c.machine}/pseudo_{pseudo[(c.machine, c.file_name)]}" if c.machine in covered else k for c, k in zip(clips, keys)]
    class_map = {k: i for i, k in enumerate(sorted(set(keys)))}
    return TrainingSet(clips, np.array([class_map[k] for k in keys], dtype=np.int64), class_map)


class ClipDataset(torch.utils.data.Dataset):
    """(wave, class) pairs of training clips, each padded or cut to `seconds`, one `channel` of stereo clips.

    `channel="both"` makes each stereo clip two examples of its class, its left and its right channel.
    """

    def __init__(self, clips: Sequence[dcase.Clip], targets: np.ndarray, seconds: float, channel: str = "left"):
        self.items = [(c.path, ch, int(t)) for c, t in zip(clips, targets) for ch in views(c.path, channel)]
        self.seconds = seconds

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, channel, target = self.items[i]
        return torch.from_numpy(read_clip(path, self.seconds, channel=channel)), target


class StepBatches(torch.utils.data.Sampler):
    """Yield the index lists of micro-batches from optimiser step `start` on, as a pure function of the seed.

    Micro-batch g covers positions g*B .. g*B+B-1 of an endless sequence of epoch permutations,
    epoch e being `np.random.default_rng([seed, e]).permutation(N)`; each process keeps its share.
    """

    def __init__(self, n: int, batch_size: int, grad_accum: int, steps: int, seed: int, start: int = 0,
                 rank: int = 0, world: int = 1):  # fmt: skip
        self.n, self.batch, self.accum, self.steps, self.seed = n, batch_size, grad_accum, steps, seed
        self.start, self.rank, self.world = start, rank, world
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def micro_batch(self, g: int) -> list[int]:
        """Return this process's dataset indices of micro-batch g (every world-th, from its rank)."""
        pos = range(g * self.batch, (g + 1) * self.batch)
        idx = [int(self._perm(p // self.n)[p % self.n]) for p in pos]
        return idx[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[int]]:
        for g in range(self.start * self.accum, self.steps * self.accum):
            yield self.micro_batch(g)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum
