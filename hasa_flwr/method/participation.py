"""Which clients take part in a round: a seeded sample, the same for every strategy at one seed.

The allocation is solved once over every registered client (the budget is the federation's);
each round then trains ``fraction`` of them. The sample depends only on (seed, round, the roster),
never on the strategy, so matched comparisons stay matched, and a resumed run draws the same
samples as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np


def round_sample(clients: list[int], fraction: float, minimum: int, seed: int, server_round: int,
                 stream: int = 0) -> list[int]:
    """The clients (server numbers) of round ``server_round``: ceil(fraction x M), at least
    ``minimum``, all of them at fraction 1. ``stream`` separates the training and evaluation samples."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a participation fraction must be in (0, 1], got {fraction}")
    ids = sorted(clients)
    k = min(len(ids), max(minimum, math.ceil(fraction * len(ids) - 1e-9)))
    if k >= len(ids):
        return ids
    rng = np.random.default_rng([seed, server_round, 7727, stream])
    return sorted(int(i) for i in rng.choice(ids, size=k, replace=False))
