"""Vector helpers shared by the detectors and the clustering: unit rows, nearest-neighbour cosine distance."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Return the rows of `x` scaled to unit length, as `dtype` (zero rows stay zero)."""
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_cosine_distance(
    bank: np.ndarray, query: np.ndarray, k: int = 1, excluded: list[np.ndarray] | None = None, dtype=np.float64
) -> np.ndarray:
    """Return each query row's mean cosine distance to its k nearest bank rows, computed in `dtype`.

    `excluded[i]` lists bank rows query i must not use (leave-one-out scoring of training clips).
    Distances are clipped to [0, 2], as rounding can push identical directions just below 0.
    """
    from asdtool.core.errors import AsdError

    d = 1.0 - l2_normalise(query, dtype) @ l2_normalise(bank, dtype).T  # (Q, N)
    np.clip(d, 0.0, 2.0, out=d)
    if excluded is not None:
        for i, rows in enumerate(excluded):
            d[i, rows] = np.inf
    if len(bank) == 0 or np.any(np.isinf(d).sum(axis=1) > len(bank) - k):
        raise AsdError(f"too few reference embeddings to score with k={k}")
    if k == 1:
        return d.min(axis=1)
    return np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1).mean(axis=1)
