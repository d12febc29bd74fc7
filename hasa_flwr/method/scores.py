"""Heterogeneity scores, computed from training-split label histograms (docs/METHOD.md section 3).

The server gets integer label counts from each client once, so scores need no raw data.
"""

from __future__ import annotations

import numpy as np

# given: one value per partition id from the run config (`score-values`), for scores measured
# elsewhere, e.g. the need for width that `hasa calibrate` measures (an oracle check of the rule)
SCORES = ("jsd", "entropy", "loss", "random", "given")


def smoothed(counts: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Laplace smoothing, row-wise: (c + a) / (sum c + a V)."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + alpha) / (counts.sum(axis=-1, keepdims=True) + alpha * counts.shape[-1])


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0), axis=-1)


def jsd_scores(counts: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Jensen-Shannon divergence (nats) between each client's smoothed label distribution and the
    smoothed pooled one (paper Eq. 11): how far a client's data sits from the federation's."""
    counts = np.asarray(counts)
    if counts.ndim != 2 or (counts < 0).any():
        raise ValueError("counts must be a non-negative [clients, labels] array")
    return jsd_to_pooled(counts, counts.sum(axis=0), alpha)


def jsd_to_pooled(counts: np.ndarray, pooled: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The JSD score of each row of ``counts`` against given pooled counts: what a client computes
    itself under secure-stats, where only the pooled histogram (a secure sum) is shared."""
    counts, pooled = np.asarray(counts), np.asarray(pooled)
    if pooled.shape != counts.shape[-1:] or (pooled < 0).any():
        raise ValueError(f"the pooled histogram has shape {pooled.shape}, the client's {counts.shape[-1:]}: both must "
                         "count the same labels (the same vocabulary)")
    p = smoothed(counts, alpha)
    q = smoothed(pooled, alpha)[None, :]
    m = 0.5 * (p + q)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def entropy_scores(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy of each client's own label histogram, divided by log V (in [0, 1])."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    return h / np.log(counts.shape[1]) if counts.shape[1] > 1 else np.zeros(len(counts))


def random_scores(num_clients: int, seed: int) -> np.ndarray:
    """Seeded uniform scores: the control for whether the score carries information."""
    return np.random.default_rng([seed, 7919]).uniform(size=num_clients)


def scores_from_counts(name: str, counts: np.ndarray, seed: int) -> np.ndarray:
    """Scores the server can compute from label counts alone (``loss`` needs the clients)."""
    if name == "jsd":
        return jsd_scores(counts)
    if name == "entropy":
        return entropy_scores(counts)
    if name == "random":
        return random_scores(len(counts), seed)
    raise ValueError(f"score '{name}' is not computed from label counts; choose one of jsd, entropy, random")
