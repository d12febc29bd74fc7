"""Tests for hasa_flwr.method.scores: JSD against scipy, entropy, random scores (docs/METHOD.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import jensenshannon

from hasa_flwr.method.scores import entropy_scores, jsd_scores, random_scores, scores_from_counts


def reference_jsd(counts: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Independent computation: Laplace smoothing by hand, JSD (nats) via scipy."""
    counts = np.asarray(counts, dtype=np.float64)
    v = counts.shape[1]
    pooled = counts.sum(axis=0)
    q = (pooled + alpha) / (pooled.sum() + alpha * v)
    out = []
    for row in counts:
        p = (row + alpha) / (row.sum() + alpha * v)
        out.append(jensenshannon(p, q, base=np.e) ** 2)
    return np.array(out)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(2, 30)), elements=st.integers(0, 500)),
       st.sampled_from([1.0, 0.5, 2.0]))
def test_jsd_matches_scipy(counts, alpha):
    got = jsd_scores(counts, alpha=alpha)
    np.testing.assert_allclose(got, reference_jsd(counts, alpha), rtol=1e-9, atol=1e-12)
    assert (got >= -1e-15).all() and (got <= np.log(2) + 1e-12).all()


def test_jsd_hand_values():
    counts = np.array([[10, 0, 0], [0, 0, 10], [3, 4, 3]])
    np.testing.assert_allclose(jsd_scores(counts), reference_jsd(counts), rtol=1e-12)
    s = jsd_scores(counts)
    # the two skewed clients are mirror images of each other around the pooled histogram [13, 4, 13]
    assert s[0] == pytest.approx(s[1], rel=1e-12)
    assert s[2] < s[0]


def test_identical_histograms_score_equally():
    counts = np.array([[5, 1, 0, 7], [2, 2, 9, 0], [5, 1, 0, 7], [0, 0, 3, 3]])
    s = jsd_scores(counts)
    assert s[0] == s[2]
    assert s[0] != s[1]


def test_client_equal_to_pool_scores_zero():
    # the only non-empty client *is* the pool: identical smoothed distributions
    s = jsd_scores(np.array([[5, 3, 2, 0], [0, 0, 0, 0]]))
    assert s[0] == pytest.approx(0.0, abs=1e-15)
    assert s[1] > 0.0
    # proportional to the pool with many counts: near zero (smoothing adds a tiny gap)
    # (pool = [10000, 20000, 30000]; the last two clients are skewed but sum to a multiple of [1, 2, 3])
    counts = np.array([[1000, 2000, 3000], [3000, 6000, 9000], [6000, 0, 0], [0, 12000, 18000]])
    s = jsd_scores(counts)
    assert s[0] < 1e-6 and s[1] < 1e-6
    assert s[2] > 0.1 and s[3] > 0.01
    np.testing.assert_allclose(s, reference_jsd(counts), rtol=1e-9, atol=1e-15)


def test_jsd_rejects_bad_counts():
    with pytest.raises(ValueError):
        jsd_scores(np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        jsd_scores(np.array([[1, -2, 3]]))


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(2, 20)), elements=st.integers(0, 100)))
def test_entropy_in_unit_interval_and_matches_reference(counts):
    e = entropy_scores(counts)
    assert ((e >= -1e-12) & (e <= 1 + 1e-12)).all()
    for row, got in zip(counts, e):
        if row.sum() == 0:
            continue
        p = row[row > 0] / row.sum()
        assert got == pytest.approx(-(p * np.log(p)).sum() / np.log(len(row)), abs=1e-12)


def test_entropy_extremes():
    e = entropy_scores(np.array([[4, 4, 4, 4], [9, 0, 0, 0], [1, 1, 0, 0]]))
    np.testing.assert_allclose(e, [1.0, 0.0, 0.5], atol=1e-12)


def test_random_scores_reproducible():
    a, b, c = random_scores(9, 3), random_scores(9, 3), random_scores(9, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (9,) and ((a >= 0) & (a < 1)).all()
    assert len(np.unique(a)) == 9


def test_scores_from_counts_dispatch():
    counts = np.array([[3, 1, 0], [0, 2, 5]])
    np.testing.assert_array_equal(scores_from_counts("jsd", counts, 0), jsd_scores(counts))
    np.testing.assert_array_equal(scores_from_counts("entropy", counts, 0), entropy_scores(counts))
    np.testing.assert_array_equal(scores_from_counts("random", counts, 5), random_scores(2, 5))
    with pytest.raises(ValueError, match="loss"):
        scores_from_counts("loss", counts, 0)
