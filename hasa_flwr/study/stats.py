"""Across-seed statistics (docs/METHOD.md section 6): mean, std and a t-based 95% CI of a per-run
summary, and paired comparisons against `uniform` over matched seeds.

Pure numpy/scipy; every value returned is a plain float/int/None so it can go into JSON as is.
Undefined quantities (a CI from one seed, a t-test on constant differences) are None, never NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps

SPREAD_RTOL = 1e-9  # differences this close to constant (relative to their size) have no spread: t is undefined


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def describe(values) -> dict[str, float | int | None]:
    """Mean, sample std (ddof=1) and the t-based 95% half-width ``t_{0.975, n-1} * std / sqrt(n)``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to describe")
    n = int(v.size)
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n}
    std = float(v.std(ddof=1))
    ci95 = float(sps.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci95": ci95, "n": n}


def paired(values, baseline) -> dict[str, float | int | None]:
    """Paired comparison of ``values`` against ``baseline`` (same order = matched seeds).

    mean_diff: mean of values - baseline. wilcoxon_p: two-sided Wilcoxon signed-rank test
    (zero differences dropped; 1.0 when every difference is zero). ttest_p: two-sided paired
    t-test (1.0 when every difference is zero; None when undefined: fewer than 2 pairs, or
    constant non-zero differences, also up to float rounding, where scipy would say 0.0 or 1e-31).
    wins: pairs where values > baseline.
    """
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no matched pairs to compare")
    d = a - b
    out: dict[str, float | int | None] = {"mean_diff": float(d.mean()), "wilcoxon_p": None, "ttest_p": None,
                                          "wins": int((d > 0).sum()), "ties": int((d == 0).sum()),
                                          "n": int(d.size)}
    if np.all(d == 0):
        out["wilcoxon_p"] = out["ttest_p"] = 1.0
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["wilcoxon_p"] = _finite(sps.wilcoxon(a, b).pvalue)
        except ValueError:
            out["wilcoxon_p"] = None
        if d.size >= 2 and not constant(d):
            out["ttest_p"] = _finite(sps.ttest_rel(a, b).pvalue)
    return out


def constant(d: np.ndarray) -> bool:
    """No spread beyond float rounding: 0.11 - 0.10 and 0.12 - 0.11 differ in the 17th digit."""
    return float(np.ptp(d)) <= SPREAD_RTOL * float(np.abs(d).max())


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p of n non-zero differences (all of one
    sign): 2 / 2^n, so 0.25 at 3 pairs, 0.125 at 4, 0.002 at 10."""
    return min(1.0, 2.0 ** (1 - n)) if n > 0 else 1.0


def spearman(x, y) -> dict[str, float | int | None]:
    """Spearman's rank correlation and its two-sided p-value (None when a side is constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 3:
        return {"rho": None, "p": None, "n": int(x.size)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.spearmanr(x, y)
    return {"rho": _finite(res.statistic), "p": _finite(res.pvalue), "n": int(x.size)}
