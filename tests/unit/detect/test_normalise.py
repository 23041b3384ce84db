"""Tests for asdtool/detect/normalise.py: domain-z and local-density, through the detector that applies them."""

import numpy as np
import pytest

from asdtool.data import store
from asdtool.detect import knn as detect
from asdtool.detect.settings import DetectorSettings as S
from asdtool.detect.smote import smote_target_domain


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)



# --- domain-wise normalisation -----------------------------------------------------------------

C = 1e-3  # unit of the hand-made cosine distances


def _arc(start, gaps, dim=3):
    """Unit vectors on the xy great circle from angle `start`, consecutive cosine distances `gaps`."""
    angles = start + np.concatenate([[0.0], np.cumsum(np.arccos(1.0 - np.asarray(gaps, dtype=np.float64)))])
    v = np.zeros((len(angles), dim))
    v[:, 0], v[:, 1] = np.cos(angles), np.sin(angles)
    return v


def _tilted(points, distance):
    """Unit vectors at cosine distance `distance` from (the directions of) `points`, tilted along z."""
    phi = np.arccos(1.0 - np.asarray(distance, dtype=np.float64))
    out = _unit(points) * np.cos(phi)[:, None]
    out[:, 2] = np.sin(phi)
    return out


def _group(values, domain):
    n = len(values)
    return store.Group([f"c{i:03d}.wav" for i in range(n)], domain, [0] * n, [""] * n, values)


def _cos(a, b):
    return 1.0 - np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)


def _two_domains(scale=3.0):
    """Source arc of 6 clips, target arc far from it with `scale` x the gaps; test clips tilted off each."""
    gaps = C * np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # leave-one-out 1-NN distances: [1, 1, 2, 3, 4, 5] C
    src, tgt = _arc(0.0, gaps), _arc(np.pi / 2, scale * gaps)
    u = C * np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    train = _group(np.concatenate([src, tgt]), [0] * 6 + [1] * 6)
    test = _group(np.concatenate([_tilted(src, u), _tilted(tgt, scale * u)]), [0] * 6 + [1] * 6)
    return train, test, u


def test_domain_z_puts_a_sparser_target_domain_on_the_source_scale():
    train, test, u = _two_domains(scale=3.0)
    raw_train, raw_test, _ = detect.detect_machine(train, test, S(smote_ratio=0.0))
    loo = C * np.array([1.0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(raw_train, np.concatenate([loo, 3 * loo]), rtol=1e-9)
    np.testing.assert_allclose(raw_test, np.concatenate([u, 3 * u]), rtol=1e-9)
    assert raw_test[6:].mean() == pytest.approx(3 * raw_test[:6].mean())  # before: target 3x farther

    z_train, z_test, info = detect.detect_machine(train, test, S(smote_ratio=0.0, normalise="domain-z"))
    mean, std = loo.mean(), loo.std(ddof=1)  # 16/6 C, sqrt(2.6667) C
    assert info.normalisation.stats[0] == pytest.approx((mean, std))
    assert info.normalisation.stats[1] == pytest.approx((3 * mean, 3 * std))
    assert info.normalisation.test_nn_target == 6 and info.normalisation.fallback == ""
    np.testing.assert_allclose(z_test[:6], (u - mean) / std, rtol=1e-7)
    np.testing.assert_allclose(z_test[6:], z_test[:6], rtol=1e-7)  # after: the same distribution
    assert z_test[6:].mean() == pytest.approx(z_test[:6].mean())
    # training clips leave-one-out: the last source clip (5 C) against the other five [1, 1, 2, 3, 4] C
    assert z_train[5] == pytest.approx(2.8 / np.sqrt(1.7))
    for i in range(6):
        others = np.delete(loo, i)
        assert z_train[i] == pytest.approx((loo[i] - others.mean()) / others.std(ddof=1))
    np.testing.assert_allclose(z_train[6:], z_train[:6], rtol=1e-7)


def test_domain_z_counts_smote_points_as_target():
    train, _, _ = _two_domains()
    train = _group(train.values[:9], [0] * 6 + [1] * 3)  # 3 target clips, SMOTE makes 9 more
    raw_train, _, info = detect.detect_machine(train, None, S(smote_ratio=4.0, smote_k=2))
    x = _unit(train.values)
    sm = smote_target_domain(x[:6], x[6:], 4.0, 2, 0)
    assert len(sm.synthetic) == 21 and info.smote.target_count == 24
    query = _group(np.concatenate([sm.synthetic[:1], x[:1]]), [-1, -1])  # on a SMOTE point; on a source clip
    _, z, got = detect.detect_machine(train, query, S(smote_ratio=4.0, smote_k=2, normalise="domain-z"))
    t, s = raw_train[6:], raw_train[:6]
    np.testing.assert_allclose(z, [-t.mean() / t.std(ddof=1), -s.mean() / s.std(ddof=1)], atol=1e-6)
    assert got.normalisation.test_nn_target == 1


def test_local_density_divides_by_the_neighbours_knn_distance_in_its_domain():
    src = _arc(0.0, C * np.array([1.0, 2.0, 4.0]))  # s0 -1C- s1 -2C- s2 -4C- s3
    tgt = _arc(np.pi / 2, C * np.array([3.0, 5.0]))
    train = _group(np.concatenate([src, tgt]), [0] * 4 + [1] * 3)
    test = _group(_tilted(src[2:3], [C]), [-1])  # 1 C from s2
    d02, d03 = _cos(src[0], src[2]), _cos(src[0], src[3])
    assert d02 > 4 * C  # so s2's two nearest are s1 (2 C) and s3 (4 C)

    raw_train, raw_test, _ = detect.detect_machine(train, test, S(smote_ratio=0.0))
    for k, r_s2, r_s0_without_s1 in ((1, 2 * C, d02), (2, 3 * C, (d02 + d03) / 2)):
        tr, te, info = detect.detect_machine(train, test, S(smote_ratio=0.0, normalise="local-density", density_k=k))
        assert te[0] == pytest.approx(C / r_s2)  # 1/2 with k=1, 1/3 with k=2
        # s1 (1 C from s0) leave-one-out: s0's density radius without s1, not the 1 C that is s1 itself
        assert raw_train[1] == pytest.approx(C) and tr[1] == pytest.approx(C / r_s0_without_s1)
        # target clips t0 -3C- t1 -5C- t2: t1 is the neighbour of both ends, its radius without the clip
        # scored is the distance to the other end (k clipped to the one clip left)
        assert raw_train[4] == pytest.approx(3 * C) and tr[4] == pytest.approx(3 / 5)
        assert raw_train[6] == pytest.approx(5 * C) and tr[6] == pytest.approx(5 / 3)
        assert info.normalisation.density_k == {0: k, 1: k}


def test_local_density_leaves_smote_points_out_of_the_density_bank():
    src = _arc(0.0, C * np.ones(8))
    tgt = _arc(np.pi / 2, C * np.array([3.0, 5.0]))  # r(t0) = r(t1) = 3 C, r(t2) = 5 C with k=1
    train = _group(np.concatenate([src, tgt]), [0] * 9 + [1] * 3)
    x = _unit(train.values)
    sm = smote_target_domain(x[:9], x[9:], 2.0, 1, 0)
    z = sm.synthetic[0]
    a, b = sorted(sm.parents[0])
    t = np.dot(z - tgt[a], tgt[b] - tgt[a]) / np.dot(tgt[b] - tgt[a], tgt[b] - tgt[a])
    assert 0 < t < 1 and (a, b) in ((0, 1), (1, 2))
    radius = {0: 3 * C, 1: 3 * C, 2: 5 * C}
    test = _group(_tilted(z[None], [0.5 * C]), [-1])
    _, te, info = detect.detect_machine(train, test, S(smote_ratio=2.0, smote_k=1, normalise="local-density", density_k=1))
    assert te[0] == pytest.approx(0.5 * C / ((1 - t) * radius[a] + t * radius[b]), rel=1e-6)
    assert info.normalisation.test_nn_target == 1
