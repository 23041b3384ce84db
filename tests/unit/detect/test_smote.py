"""Tests for asdtool/detect/smote.py: SMOTE of the target domain and the parents of its points."""

import itertools

import numpy as np
import pytest

from asdtool.core.errors import AsdError
from asdtool.detect import smote as detect


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)



def _domains(n_source=40, n_target=6, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(n_source, dim))), _unit(rng.normal(size=(n_target, dim)) + 1.0)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 2.0])
def test_smote_makes_target_count_ratio_times_source(ratio):
    src, tgt = _domains()
    r = detect.smote_target_domain(src, tgt, ratio=ratio, k=5, seed=0)
    assert r.skipped == "" and r.k == 5
    assert r.target_count == round(ratio * len(src))
    assert r.synthetic.shape == (round(ratio * len(src)) - len(tgt), src.shape[1])


def test_smote_points_are_convex_combinations_of_two_target_points():
    src, tgt = _domains()
    r = detect.smote_target_domain(src, tgt, ratio=1.0, k=3, seed=1)
    # independent check: each synthetic point lies on the segment of some pair of target points
    for z in r.synthetic:
        best = np.inf
        for a, b in itertools.combinations(tgt, 2):
            t = np.clip(np.dot(z - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
            best = min(best, np.linalg.norm(a + t * (b - a) - z))
        assert best < 1e-12
    # and the recovered parents are such a pair
    assert np.all(r.parents >= 0) and np.all(r.parents[:, 0] != r.parents[:, 1])
    a, b = tgt[r.parents[:, 0]], tgt[r.parents[:, 1]]
    t = np.einsum("sd,sd->s", r.synthetic - a, b - a) / np.einsum("sd,sd->s", b - a, b - a)
    assert np.all((t >= -1e-9) & (t <= 1 + 1e-9))
    np.testing.assert_allclose(a + t[:, None] * (b - a), r.synthetic, atol=1e-12)


def test_smote_ratio_zero_disables_and_few_targets_skip():
    src, tgt = _domains()
    off = detect.smote_target_domain(src, tgt, ratio=0.0)
    assert off.synthetic.shape == (0, src.shape[1]) and off.target_count == len(tgt) and "ratio 0" in off.skipped
    one = detect.smote_target_domain(src, tgt[:1], ratio=1.0)
    assert len(one.synthetic) == 0 and "needs at least 2" in one.skipped
    enough = detect.smote_target_domain(src[:4], tgt, ratio=1.0)
    assert len(enough.synthetic) == 0 and "already has 6" in enough.skipped


def test_smote_clips_k_and_is_deterministic():
    src, tgt = _domains(n_target=3)
    r = detect.smote_target_domain(src, tgt, ratio=1.0, k=5, seed=7)
    assert r.k == 2 and r.target_count == len(src)
    again = detect.smote_target_domain(src, tgt, ratio=1.0, k=5, seed=7)
    np.testing.assert_array_equal(r.synthetic, again.synthetic)
    other = detect.smote_target_domain(src, tgt, ratio=1.0, k=5, seed=8)
    assert not np.array_equal(r.synthetic, other.synthetic)
    with pytest.raises(AsdError, match="ratio must be 0 or more"):
        detect.smote_target_domain(src, tgt, ratio=-1.0)
