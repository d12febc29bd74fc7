"""Per-run summaries over clients (docs/METHOD.md section 6)."""

from __future__ import annotations

import math

import numpy as np


def tail_size(num_clients: int) -> int:
    """Clients in the tail: the lowest ceil(M/4) (2 of 7)."""
    return max(1, math.ceil(num_clients / 4))


def summarize(accuracies) -> dict[str, float]:
    """Unweighted mean, worst client, tail mean and std across clients."""
    acc = np.sort(np.asarray(accuracies, dtype=np.float64))
    if acc.size == 0:
        raise ValueError("no client accuracies to summarise")
    return {"mean": float(acc.mean()), "worst": float(acc[0]), "tail": float(acc[:tail_size(acc.size)].mean()),
            "std": float(acc.std())}
