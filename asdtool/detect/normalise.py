"""Domain-wise normalisation of k-NN scores: `domain-z` and `local-density`.

Domain-wise normalisation (`normalise`) puts source and target scores on one scale: the target bank is
6-10 real clips plus their SMOTE interpolants, so normal target clips lie farther from it than normal
source clips from the source bank. The domain of a clip is the domain of its nearest bank point (SMOTE
points count as target), since DCASE 2024 and later hide the test clips' domain.

- `domain-z`: (distance - mean) / std, with the mean and std of the leave-one-out scores of the
  training clips of that domain. A training clip's own score is left out of its statistics (it plays
  a test clip); a domain with fewer than 2 such scores uses those of all training clips.
- `local-density`: distance / r(nearest bank point), where r(o) is the mean cosine distance of o to
  its `density_k` nearest real training clips of its domain (LOF-like; k clipped to the clips there).
  SMOTE points are left out of these density banks: each lies on the segment between two target
  clips, often close to one, so counting them would shrink r to a fraction of the real spacing and
  inflate every score near the target domain. A SMOTE point that is itself the nearest point takes
  r interpolated between its two parents, r = (1 - t) r(a) + t r(b), as it stands for that segment.
  A training clip scored leave-one-out is also left out of its neighbour's density bank (else its
  neighbour's r would be its own distance). A domain with no other clip uses all training clips.
  The default k = 2 is the smallest that one near-duplicate clip cannot shrink to about 0, and it
  stays local with 6-10 target clips (a target neighbour has 4-8 others left in leave-one-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asdtool.core.errors import AsdError
from asdtool.core.vectors import l2_normalise
from asdtool.detect.smote import SOURCE, TARGET, SmoteResult

SCALE_FLOOR = 1e-6  # smallest std or density radius divided by (cosine distances of identical clips are 0)


@dataclass
class Normalisation:
    """How the scores of one machine type were normalised (for the command's table)."""

    mode: str
    test_nn_target: int = 0  # test clips whose nearest bank point is of the target domain (a clip or a SMOTE point)
    stats: dict[int, tuple[float, float]] = field(default_factory=dict)  # domain-z: domain -> (mean, std)
    density_k: dict[int, int] = field(default_factory=dict)  # local-density: domain -> k of its density bank
    fallback: str = ""  # which domain fell back to all training clips ("" when none did)


def nearest_rows(bank: np.ndarray, query: np.ndarray, excluded: list[np.ndarray] | None = None) -> np.ndarray:
    """Return the index of each query row's nearest bank row by cosine distance (the lowest index on ties)."""
    d = 1.0 - l2_normalise(query) @ l2_normalise(bank).T  # (Q, N)
    np.clip(d, 0.0, 2.0, out=d)
    if excluded is not None:
        for i, rows in enumerate(excluded):
            d[i, rows] = np.inf
    return d.argmin(axis=1)


def _mean_std(values: np.ndarray) -> tuple[float, float] | None:
    """Return (mean, sample std floored at SCALE_FLOOR) of 2 or more values, None for fewer."""
    if len(values) < 2:
        return None
    return float(np.mean(values)), max(float(np.std(values, ddof=1)), SCALE_FLOOR)


def domain_z(
    train_scores: np.ndarray, train_domain: np.ndarray, train_nn_domain: np.ndarray,
    test_scores: np.ndarray, test_nn_domain: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, Normalisation]:  # fmt: skip
    """Return (training, test scores) standardised by the statistics of their nearest bank point's domain.

    The statistics of domain d are the mean and std of the (leave-one-out) scores of d's training
    clips. A training clip's own score is left out of the statistics it is standardised with, so it
    is scored like a test clip; a domain with fewer than 2 scores uses those of all training clips.
    """
    train_scores, test_scores = np.asarray(train_scores, np.float64), np.asarray(test_scores, np.float64)
    info = Normalisation("domain-z")
    fell_back: set[int] = set()
    for d in (SOURCE, TARGET):
        stats = _mean_std(train_scores[train_domain == d])
        if stats is None:
            stats = _mean_std(train_scores)
            fell_back.add(d)
        if stats is None:
            raise AsdError(f"{len(train_scores)} training clip(s) are too few for domain-z normalisation")
        info.stats[d] = stats
    test_z = np.empty_like(test_scores)
    for d, (mean, std) in info.stats.items():
        on = test_nn_domain == d
        test_z[on] = (test_scores[on] - mean) / std
    train_z = np.empty_like(train_scores)
    others = np.ones(len(train_scores), dtype=bool)
    for i, d in enumerate(train_nn_domain):
        others[i] = False
        stats = _mean_std(train_scores[others & (train_domain == d)])
        if stats is None:
            stats = _mean_std(train_scores[others])
            fell_back.add(int(d))
        others[i] = True
        if stats is None:
            raise AsdError(f"{len(train_scores)} training clip(s) are too few for domain-z normalisation")
        train_z[i] = (train_scores[i] - stats[0]) / stats[1]
    info.test_nn_target = int(np.sum(test_nn_domain == TARGET))
    info.fallback = fallback_note(fell_back)
    return train_z, test_z, info


def fallback_note(domains: set[int]) -> str:
    """Return the note of the domains whose statistics fell back to all training clips ("" for none)."""
    names = [name for d, name in ((SOURCE, "source"), (TARGET, "target")) if d in domains]
    return " and ".join(names) + " used all training clips" if names else ""


class DensityBanks:
    """Mean cosine distance of a training clip to its k nearest real training clips of its own domain."""

    def __init__(self, x: np.ndarray, domain: np.ndarray, k: int):
        self.x, self.domain, self.k = x, np.asarray(domain), k
        self.d = 1.0 - x @ x.T  # (N, N) cosine distances of the unit rows
        np.clip(self.d, 0.0, 2.0, out=self.d)
        self.fell_back: set[int] = set()

    def members(self, d: int, leave_out: tuple[int, ...]) -> np.ndarray:
        """Return the mask of domain d's clips, less `leave_out`; all clips less `leave_out` when that is empty."""
        mask = self.domain == d
        mask[list(leave_out)] = False
        if not mask.any():
            self.fell_back.add(d)
            mask = np.ones(len(self.domain), dtype=bool)
            mask[list(leave_out)] = False
        if not mask.any():
            raise AsdError(f"{len(self.domain)} training clip(s) are too few for local-density normalisation")
        return mask

    def of_clip(self, j: int, leave_out: int = -1) -> float:
        """Return r of training clip j: mean distance to its k nearest other clips of its domain (never `leave_out`)."""
        mask = self.members(int(self.domain[j]), (j,) if leave_out < 0 else (j, leave_out))
        return _mean_smallest(self.d[j, mask], self.k)

    def of_point(self, z: np.ndarray, parents: np.ndarray, tgt_idx: np.ndarray, leave_out: int = -1) -> float:
        """Return r of a SMOTE point: its parents' r interpolated along their segment (k-NN over target clips if unknown)."""
        if parents[0] >= 0:
            a, b = tgt_idx[parents[0]], tgt_idx[parents[1]]
            ab = self.x[b] - self.x[a]
            t = float(np.clip(np.dot(z - self.x[a], ab) / max(float(np.dot(ab, ab)), 1e-300), 0.0, 1.0))
            return (1.0 - t) * self.of_clip(a, leave_out) + t * self.of_clip(b, leave_out)
        mask = self.members(TARGET, () if leave_out < 0 else (leave_out,))
        return _mean_smallest(1.0 - self.x[mask] @ l2_normalise(z), self.k)

    def k_used(self, d: int) -> int:
        """Return the k of domain d's density bank for a test clip's neighbour (k clipped to the clips there)."""
        n = int(np.sum(self.domain == d))
        return min(self.k, n - 1 if n > 1 else len(self.domain) - 1)


def _mean_smallest(values: np.ndarray, k: int) -> float:
    k = min(k, len(values))
    return float(np.partition(np.clip(values, 0.0, 2.0), k - 1)[:k].mean())


def density_radius(banks: DensityBanks, sm: SmoteResult, tgt_idx: np.ndarray, row: int, leave_out: int = -1) -> float:
    """Return r of bank row `row` (training clips first, then the SMOTE points), never using clip `leave_out`."""
    n = len(banks.x)
    if row < n:
        return banks.of_clip(row, leave_out)
    return banks.of_point(sm.synthetic[row - n], sm.parents[row - n], tgt_idx, leave_out)


def local_density(
    x: np.ndarray, domain: np.ndarray, sm: SmoteResult, tgt_idx: np.ndarray, density_k: int,
    train_scores: np.ndarray, train_nn: np.ndarray,
) -> tuple[np.ndarray, DensityBanks, Normalisation]:  # fmt: skip
    """Return (training scores divided by the density radius r of each one's nearest bank point, the banks, info).

    Bank rows are the training clips `x` (unit rows, store order) then the SMOTE points `sm.synthetic`;
    `train_nn` are the nearest bank rows. Training clip i (scored leave-one-out) is left out of the
    density bank of its neighbour. New clips are divided by `density_radius(banks, ...)` of their neighbour.
    """
    banks = DensityBanks(x, domain, density_k)
    r_train = np.array([density_radius(banks, sm, tgt_idx, int(j), i) for i, j in enumerate(train_nn)], dtype=np.float64)
    info = Normalisation("local-density")
    info.density_k = {d: banks.k_used(d) for d in (SOURCE, TARGET) if np.any(domain == d)}
    info.fallback = fallback_note(banks.fell_back)
    return np.asarray(train_scores, np.float64) / np.maximum(r_train, SCALE_FLOOR), banks, info
