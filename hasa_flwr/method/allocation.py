"""Subnet widths under a fixed size-weighted compute budget (docs/METHOD.md sections 1-2).

Every rule produces preliminary widths and then goes through the same scale-and-project step, so
all rules spend the same budget: sum_i (n_i/N) cost(w_i) = cost(B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hasa_flwr.method.scores import random_scores
from hasa_flwr.method.subnet import own_fits

RULES = ("hasa", "hasa-inverse", "hasa-random", "uniform", "tiers", "focus", "midsize")
TOLERANCE = 1e-9
MAX_PASSES = 100


@dataclass(frozen=True)
class Allocation:
    widths: np.ndarray   # [M] final widths
    used: float          # sum (n_i/N) w_i
    cost_used: float     # sum (n_i/N) cost(w_i): what the budget constrains (= used for cost(w) = w)
    cost_target: float   # cost(B)
    passes: int          # scale-and-project passes until the budget held
    ranks: np.ndarray    # [M] normalised ranks in [0, 1] the rule used
    scores: np.ndarray   # [M] scores the ranks came from (random ones for hasa-random)


def normalized_ranks(scores: np.ndarray) -> np.ndarray:
    """(rank - 1) / (M - 1) with average ranks for ties (paper Eq. 13)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 1:
        return np.array([0.5])
    # average ranks (scipy's rankdata "average") in numpy: importing scipy costs the ServerApp ~0.5 s per run
    _, which, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    ranks = ((last - counts + 1 + last) / 2.0)[which]
    return (ranks - 1.0) / (len(scores) - 1.0)


def check_feasible(budget: float, shares: np.ndarray, caps: np.ndarray, w_min: float, w_max: float,
                   cost: Callable[[np.ndarray], np.ndarray]) -> None:
    """Raise ValueError, naming the setting to change, if no allocation can meet the budget."""
    if not 0.0 < w_min <= w_max <= 1.0:
        raise ValueError(f"width bounds must satisfy 0 < width-min <= width-max <= 1, got "
                         f"width-min={w_min}, width-max={w_max}")
    bad = np.flatnonzero((caps < w_min) | (caps > 1.0))
    if len(bad):
        raise ValueError(f"width cap {caps[bad[0]]:g} of client {bad[0]} is outside [width-min={w_min:g}, 1]; "
                         "raise the cap or lower width-min")
    if not 0.0 < budget <= 1.0:  # (also NaN)
        raise ValueError(f"budget {budget:g} is outside (0, 1]: B is a width, a fraction of the supernet's; "
                         "set budget to e.g. 0.5")
    if budget < w_min:
        raise ValueError(f"budget {budget:g} is below width-min {w_min:g}: every client needs at least "
                         "width-min; raise budget or lower width-min")
    ceiling = float(np.sum(shares * cost(caps)))
    if cost(np.array([budget]))[0] > ceiling + TOLERANCE:
        raise ValueError(f"budget {budget:g} exceeds what the width caps allow (sum (n_i/N) cost(cap_i) = "
                         f"{ceiling:.4g} in cost units); lower budget or raise width-cap")


def linear_cost(w: np.ndarray) -> np.ndarray:
    return np.asarray(w, dtype=np.float64)


def scale_and_project(prelim: np.ndarray, shares: np.ndarray, budget: float, w_min: float, caps: np.ndarray,
                      cost: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """Scale widths to the budget, clip to [w_min, cap_i], repeat until the budget holds (paper Eq. 17).

    With the paper's linear cost we repeat the paper's two-pass step until convergence; if it
    converges slowly (most clients pinned at a bound) or the cost is not linear, the scale factor
    is solved exactly with Brent's method instead, counted as one more pass.
    """
    w = prelim.astype(np.float64)
    passes = 0
    if cost is None:
        for passes in range(1, MAX_PASSES + 1):
            new = np.clip(budget / float(shares @ w) * w, w_min, caps)
            done = abs(float(shares @ new) - budget) <= TOLERANCE or np.allclose(new, w, rtol=0, atol=1e-15)
            w = new
            if done:
                return w, passes
        cost = linear_cost
    target = float(cost(np.array([budget]))[0])

    def gap(s: float) -> float:
        return float(shares @ cost(np.clip(s * w, w_min, caps))) - target

    hi = float(caps.max() / w.min()) + 1.0
    if gap(0.0) >= 0.0:  # budget at width-min (up to rounding): everybody at width-min
        return np.clip(0.0 * w, w_min, caps), passes + 1
    if gap(hi) <= 0.0:  # budget at the caps' ceiling
        return caps.astype(np.float64), passes + 1
    from scipy.optimize import brentq

    s = brentq(gap, 0.0, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
    return np.clip(s * w, w_min, caps), passes + 1


def focus_client(scores: np.ndarray, sizes: np.ndarray) -> int:
    """The client that gets the spare width under ``focus``: the highest score among the clients
    holding at least the median number of training samples.

    With prefix slicing only the widest client trains the units beyond the second-widest, so spare
    width becomes one client's own capacity. A client needs data to train it: on Medium the small
    clients HASA widens lose accuracy at width 0.8, while the mid-sized, divergent UX Collective gains
    (benchmarks/focus/dev; README "Rules that earn their budget").
    """
    candidates = np.flatnonzero(sizes >= np.median(sizes))
    return int(candidates[np.argmax(scores[candidates])])  # argmax: the lowest client number on ties


def midsize_clients(sizes: np.ndarray) -> np.ndarray:
    """The clients ``midsize`` widens: at least the median number of training samples (enough to
    train units of their own) and less than an equal share 1/M of all samples (too little to shape
    the shared units, which size-weighted averaging fits to the largest clients)."""
    return np.flatnonzero((sizes >= np.median(sizes)) & (sizes / sizes.sum() < 1.0 / len(sizes)))


def midsize_widths(sizes: np.ndarray, shares: np.ndarray, budget: float, w_min: float, w_max: float,
                   caps: np.ndarray, cost: Callable[[np.ndarray], np.ndarray] | None,
                   supernet: dict[str, int] | None) -> tuple[np.ndarray, int]:
    """Widths and passes of ``midsize``: preliminary width w for ``midsize_clients`` and B for the
    others, then scale-and-project. w is the largest in [B, w_max] whose projected widths still give
    every widened client a block of its own (extraction ``own``) in ``supernet`` (w_max if None)."""
    chosen = midsize_clients(sizes)

    def project(w: float) -> tuple[np.ndarray, int]:
        prelim = np.full(len(sizes), budget)
        prelim[chosen] = w
        return scale_and_project(prelim, shares, budget, w_min, caps, cost)

    if supernet is None or own_fits(list(project(w_max)[0]), supernet):
        return project(w_max)
    low, high = budget, w_max  # low fits (every width B), high does not; more width needs more units
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if own_fits(list(project(mid)[0]), supernet) else (low, mid)
    return project(low)


def allocate(rule: str, scores: np.ndarray, sizes: np.ndarray, *, budget: float = 0.5, w_min: float = 0.2,
             w_max: float = 0.8, caps: np.ndarray | None = None, seed: int = 0,
             cost: Callable[[np.ndarray], np.ndarray] | None = None,
             supernet: dict[str, int] | None = None) -> Allocation:
    """Widths for M clients under sum_i (n_i/N) cost(w_i) = cost(budget) (cost(w) = w by default).

    hasa: wider subnets for higher scores. hasa-inverse: narrower (directionality ablation).
    hasa-random: HASA on seeded random scores. uniform: every client B. tiers: widths proportional
    to the device caps (HeteroFL-style deployments). focus: every client B but ``focus_client``,
    which gets w_max (meant with selective aggregation, so its extra units are trained by it alone).
    midsize: every client B but ``midsize_clients``, which get the widest width their own blocks fit
    (meant with extraction ``own`` and selective aggregation). ``supernet``: the model's scalable
    dimensions (name -> full size), which only midsize needs.
    """
    if rule not in RULES:
        raise ValueError(f"unknown allocation '{rule}': choose one of {', '.join(RULES)}")
    sizes = np.asarray(sizes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    m = len(sizes)
    if m == 0 or scores.shape != (m,) or (sizes <= 0).any():
        raise ValueError(f"need one score and a positive size per client, got {scores.shape} scores "
                         f"for {m} sizes")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    caps = np.full(m, w_max) if caps is None else np.asarray(caps, dtype=np.float64)
    if caps.shape != (m,):
        raise ValueError(f"need one width cap per client, got {caps.shape[0]} for {m} clients")
    shares = sizes / sizes.sum()
    check_feasible(budget, shares, caps, w_min, w_max, cost or linear_cost)

    if rule == "hasa-random":
        scores = random_scores(m, seed)
    ranks = normalized_ranks(scores)
    if rule == "hasa-inverse":
        ranks = 1.0 - ranks
    if rule == "midsize":  # its preliminary widths depend on what the projection gives them
        widths, passes = midsize_widths(sizes, shares, budget, w_min, w_max, caps, cost, supernet)
    else:
        if rule in ("hasa", "hasa-inverse", "hasa-random"):
            prelim = w_min + (w_max - w_min) * ranks
        elif rule == "tiers":
            prelim = caps.copy()
        else:  # uniform, focus
            prelim = np.full(m, budget)
        if rule == "focus":
            prelim[focus_client(scores, sizes)] = w_max
        widths, passes = scale_and_project(prelim, shares, budget, w_min, caps, cost)
    cost = cost or linear_cost
    return Allocation(widths=widths, used=float(shares @ widths), cost_used=float(shares @ cost(widths)),
                      cost_target=float(cost(np.array([budget]))[0]), passes=passes, ranks=ranks, scores=scores)
