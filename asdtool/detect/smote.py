"""SMOTE of the target domain: synthetic target-domain points that balance a section's memory bank.

The target domain has a handful of training clips (DCASE: 10 per section, against 990 of the
source); imbalanced-learn's SMOTE interpolates new points between each target clip and one of its
nearest target neighbours until the two domains weigh as `ratio` asks (the paper's domain
equalisation). SMOTE does not say which two clips a point was made from; `smote_target_domain`
finds them (leave-one-out scoring and the local-density normalisation need them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.neighbors import NearestNeighbors

from asdtool.core.errors import AsdError

SOURCE, TARGET = 0, 1  # the domain codes of a store's `domain` column (-1: unknown)
_PARENT_TOL = 1e-9  # squared distance of a synthetic point to its parents' segment (unit-norm inputs, float64)


@dataclass
class SmoteResult:
    """What SMOTE added to the target domain."""

    n_target: int  # original target-domain clips
    synthetic: np.ndarray  # (S, D) new target-domain points
    parents: np.ndarray  # (S, 2) indices into the target clips of the two points each one lies between; -1 unknown
    skipped: str = ""  # why no points were made ("" when SMOTE ran)
    k: int = 0  # neighbours SMOTE used (after clipping to n_target - 1)

    @property
    def target_count(self) -> int:
        """Target-domain points in the bank: the originals plus the synthetic ones."""
        return self.n_target + len(self.synthetic)


def smote_target_domain(
    source: np.ndarray, target: np.ndarray, ratio: float = 1.0, k: int = 5, seed: int = 0
) -> SmoteResult:
    """Return synthetic target-domain points so that target count = round(ratio x source count).

    imbalanced-learn's SMOTE interpolates between each target point and one of its `k` nearest target
    neighbours (k is clipped to n_target - 1). Nothing is made, and `skipped` says why, when ratio is 0,
    when there are fewer than 2 target clips, or when the target domain already has enough points.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    dim = source.shape[1] if source.ndim == 2 else target.shape[-1]
    n_s, n_t = len(source), len(target)
    goal = int(round(ratio * n_s))

    def nothing(reason: str) -> SmoteResult:
        return SmoteResult(n_t, np.zeros((0, dim)), np.zeros((0, 2), dtype=np.int64), reason)

    if ratio < 0 or not np.isfinite(ratio):
        raise AsdError(f"SMOTE ratio must be 0 or more, got {ratio}")
    if k < 1:
        raise AsdError(f"SMOTE k must be 1 or more, got {k}")
    if ratio == 0:
        return nothing("disabled (ratio 0)")
    if n_t < 2:
        return nothing(f"{n_t} target training clip(s): SMOTE needs at least 2")
    if goal <= n_t:
        return nothing(f"target domain already has {n_t} clips >= {ratio:g} x {n_s} source clips")
    k_eff = min(k, n_t - 1)
    x = np.concatenate([source, target])
    y = np.concatenate([np.full(n_s, SOURCE), np.full(n_t, TARGET)])
    sampler = SMOTE(sampling_strategy={TARGET: goal}, k_neighbors=k_eff, random_state=seed)
    x_res, _ = sampler.fit_resample(x, y)
    synthetic = np.asarray(x_res[len(x):], dtype=np.float64)  # imbalanced-learn appends the new points
    return SmoteResult(n_t, synthetic, _smote_parents(target, synthetic, k_eff), "", k_eff)


def _smote_parents(target: np.ndarray, synthetic: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Return (S, 2) the target points each synthetic point lies between (-1 where none fits).

    SMOTE does not report them; every synthetic point lies on the segment between a target point and
    one of its k nearest target neighbours, so the segment it lies on (to float precision) is found.
    """
    parents = np.full((len(synthetic), 2), -1, dtype=np.int64)
    if not len(synthetic):
        return parents
    nns = NearestNeighbors(n_neighbors=k + 1).fit(target).kneighbors(target, return_distance=False)
    pairs = np.array(sorted({(min(i, int(j)), max(i, int(j))) for i, row in enumerate(nns) for j in row if j != i}))
    a, b = target[pairs[:, 0]], target[pairs[:, 1]]
    d = b - a  # (P, D)
    dd = np.einsum("pd,pd->p", d, d)
    ad = np.einsum("pd,pd->p", a, d)
    aa = np.einsum("pd,pd->p", a, a)
    for lo in range(0, len(synthetic), chunk):
        z = synthetic[lo : lo + chunk]  # (s, D)
        zz = np.einsum("sd,sd->s", z, z)
        proj = z @ d.T - ad  # (z - a).d  (s, P)
        dist2 = zz[:, None] - 2.0 * (z @ a.T) + aa  # |z - a|^2
        t = proj / np.where(dd > 0, dd, 1.0)
        residual = dist2 - t * proj  # squared distance from z to the line through a and b
        residual[(t < -1e-9) | (t > 1 + 1e-9)] = np.inf
        best = np.argmin(residual, axis=1)
        ok = residual[np.arange(len(z)), best] <= _PARENT_TOL * (1.0 + zz)
        parents[lo : lo + chunk][ok] = pairs[best[ok]]
    return parents
