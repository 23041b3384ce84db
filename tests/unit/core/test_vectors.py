"""Tests for asdtool/core/vectors.py: unit rows and nearest-neighbour cosine distance against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from asdtool.core.errors import AsdError
from asdtool.core.vectors import l2_normalise, nearest_cosine_distance


def _brute(bank: np.ndarray, query: np.ndarray, k: int = 1, excluded=None) -> np.ndarray:
    """Mean cosine distance of each query row to its k nearest bank rows, one pair at a time."""
    out = []
    for i, q in enumerate(query):
        ds = []
        for j, b in enumerate(bank):
            if excluded is not None and j in set(np.asarray(excluded[i]).tolist()):
                continue
            nq, nb = np.linalg.norm(q), np.linalg.norm(b)
            cos = 0.0 if nq == 0 or nb == 0 else float(np.dot(q, b) / (nq * nb))
            ds.append(min(max(1.0 - cos, 0.0), 2.0))
        out.append(np.mean(sorted(ds)[:k]))
    return np.array(out)


# ----------------------------------------------------------------------------- l2_normalise


def test_rows_become_unit_length_in_their_own_direction():
    x = np.random.default_rng(0).normal(size=(7, 5)) * np.arange(1, 8)[:, None]
    u = l2_normalise(x)
    assert u.dtype == np.float64 and u.shape == x.shape
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(u * np.linalg.norm(x, axis=1, keepdims=True), x, rtol=1e-12)


def test_zero_rows_stay_zero_and_other_rows_are_unaffected():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    u = l2_normalise(x)
    assert np.all(np.isfinite(u))
    np.testing.assert_array_equal(u[[0, 2]], 0.0)
    np.testing.assert_allclose(u[1], [0.6, 0.8, 0.0], atol=1e-15)


def test_dtype_and_a_single_vector():
    x = np.array([[1, 2, 2]], dtype=np.int64)
    u32 = l2_normalise(x, np.float32)
    assert u32.dtype == np.float32
    np.testing.assert_allclose(u32, [[1 / 3, 2 / 3, 2 / 3]], rtol=1e-6)
    np.testing.assert_allclose(l2_normalise(np.array([0.0, 5.0])), [0.0, 1.0])  # 1-D: the one vector
    assert l2_normalise(np.zeros((0, 4))).shape == (0, 4)


# ----------------------------------------------------------------------------- nearest_cosine_distance


@pytest.mark.parametrize("k", [1, 2, 5, 30])
def test_matches_brute_force_on_random_data(k):
    rng = np.random.default_rng(k)
    bank = rng.normal(size=(30, 6)) * rng.uniform(0.1, 10, size=(30, 1))  # lengths must not matter
    query = rng.normal(size=(9, 6))
    got = nearest_cosine_distance(bank, query, k=k)
    assert got.shape == (9,) and got.dtype == np.float64
    np.testing.assert_allclose(got, _brute(bank, query, k), rtol=0, atol=1e-12)


def test_float32_computation_stays_close_to_float64():
    rng = np.random.default_rng(3)
    bank, query = rng.normal(size=(40, 16)), rng.normal(size=(10, 16))
    d32 = nearest_cosine_distance(bank, query, k=3, dtype=np.float32)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, _brute(bank, query, 3), atol=1e-5)


def test_known_geometry_and_clipping():
    bank = np.array([[1.0, 0.0], [0.0, 2.0]])
    query = np.array([[5.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    np.testing.assert_allclose(nearest_cosine_distance(bank, query), [0.0, 1.0, 1 - np.sqrt(0.5), 1.0], atol=1e-15)
    np.testing.assert_allclose(nearest_cosine_distance(bank, query, k=2), [0.5, 1.5, 1 - np.sqrt(0.5), 1.5], atol=1e-15)
    # identical directions: rounding may give a cosine just above 1, the distance is clipped at exactly 0
    v = np.random.default_rng(0).normal(size=(50, 33))
    d = nearest_cosine_distance(v, v * 3.7)
    assert np.all(d >= 0.0) and np.all(d < 1e-12)
    opposite = nearest_cosine_distance(v[:1], -v[:1])
    assert opposite[0] <= 2.0 and opposite[0] == pytest.approx(2.0, abs=1e-12)


def test_zero_rows_are_at_distance_one_from_everything():
    bank = np.array([[1.0, 0.0], [0.0, 0.0]])
    query = np.array([[0.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(nearest_cosine_distance(bank, query), [1.0, 1.0])  # the zero bank row: cosine 0


def test_excluded_rows_give_leave_one_out_scores():
    rng = np.random.default_rng(7)
    train = rng.normal(size=(12, 5))
    plain = nearest_cosine_distance(train, train)
    np.testing.assert_allclose(plain, 0.0, atol=1e-12)  # every clip finds itself
    excluded = [np.array([i]) for i in range(12)]
    for k in (1, 3):
        loo = nearest_cosine_distance(train, train, k=k, excluded=excluded)
        np.testing.assert_allclose(loo, _brute(train, train, k, excluded), atol=1e-12)
        assert np.all(loo > 1e-3)
    several = [np.array([i, (i + 1) % 12]) for i in range(12)]  # a clip and its neighbour in the list both left out
    np.testing.assert_allclose(nearest_cosine_distance(train, train, k=2, excluded=several),
                               _brute(train, train, 2, several), atol=1e-12)  # fmt: skip


def test_an_empty_query_gives_no_distances():
    bank = np.ones((3, 4))
    assert nearest_cosine_distance(bank, np.zeros((0, 4))).shape == (0,)
    assert nearest_cosine_distance(bank, np.zeros((0, 4)), k=2).shape == (0,)


def test_too_few_reference_rows_are_refused():
    query = np.ones((2, 3))
    with pytest.raises(AsdError, match=r"^too few reference embeddings to score with k=1$"):
        nearest_cosine_distance(np.zeros((0, 3)), query)
    with pytest.raises(AsdError, match=r"^too few reference embeddings to score with k=4$"):
        nearest_cosine_distance(np.ones((3, 3)), query, k=4)
    assert nearest_cosine_distance(np.ones((3, 3)), query, k=3).shape == (2,)  # exactly k rows suffice
    # leave-one-out on a bank of k rows leaves k - 1 for the first query: refused, not scored on infinity
    with pytest.raises(AsdError, match="with k=3"):
        nearest_cosine_distance(np.eye(3), np.eye(3)[:2], k=3, excluded=[np.array([0]), np.array([], dtype=int)])
