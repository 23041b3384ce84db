"""Vector helpers shared by the detectors and the clustering (numpy only)."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Return the rows of `x` scaled to unit length, as `dtype` (zero rows stay zero)."""
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
