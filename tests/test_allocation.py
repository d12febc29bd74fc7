"""Tests for hasa_flwr.method.allocation: budget, bounds, rule semantics, feasibility errors (docs/METHOD.md sections 1-2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hasa_flwr.method.allocation import RULES, Allocation, allocate, focus_client, normalized_ranks
from hasa_flwr.method.models import LSTMLanguageModel, WidthCNN, mac_cost

BUDGET_TOL = 1e-6
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- strategies


@st.composite
def problems(draw, equal_caps: bool = False):
    """A random feasible allocation problem: scores (with ties), sizes, bounds, caps, budget."""
    m = draw(st.integers(2, 12))
    # scores drawn from a small pool so ties are common
    pool = draw(st.lists(st.floats(-5, 5, allow_nan=False, allow_infinity=False), min_size=1, max_size=m))
    scores = np.array(draw(st.lists(st.sampled_from(pool), min_size=m, max_size=m)), dtype=np.float64)
    sizes = np.array(draw(st.lists(st.integers(1, 5000), min_size=m, max_size=m)), dtype=np.float64)
    w_min = draw(st.floats(0.05, 0.5))
    w_max = draw(st.floats(w_min, 1.0))
    if equal_caps:
        caps = np.full(m, draw(st.floats(w_min, 1.0)))
    else:
        caps = np.array(draw(st.lists(st.floats(w_min, 1.0), min_size=m, max_size=m)), dtype=np.float64)
    shares = sizes / sizes.sum()
    ceiling = float(shares @ caps)
    # budget exactly at w_min is covered by test_budget_exactly_width_min (once a known failure, now fixed)
    frac = draw(st.floats(1e-6, 1.0))
    budget = max(w_min, min(w_min + frac * (ceiling - w_min), ceiling))
    return dict(scores=scores, sizes=sizes, w_min=w_min, w_max=w_max, caps=caps, budget=budget, shares=shares)


def run(rule: str, p: dict, **kw) -> Allocation:
    return allocate(rule, p["scores"], p["sizes"], budget=p["budget"], w_min=p["w_min"], w_max=p["w_max"],
                    caps=p["caps"], **kw)


# ----------------------------------------------------------------------------- properties over every rule


@SETTINGS
@given(problems())
def test_every_rule_meets_budget_and_bounds(p):
    for rule in RULES:
        a = run(rule, p)
        w = a.widths
        assert w.shape == (len(p["sizes"]),)
        used = float(p["shares"] @ w)
        assert abs(used - p["budget"]) <= BUDGET_TOL, (rule, used, p["budget"])
        assert abs(a.used - used) <= 1e-12, rule
        assert (w >= p["w_min"] - 1e-12).all(), rule
        assert (w <= p["caps"] + 1e-12).all(), (rule, w, p["caps"])  # caps never exceeded
        assert isinstance(a.passes, int) and a.passes >= 1
        assert ((a.ranks >= 0) & (a.ranks <= 1)).all()


@SETTINGS
@given(problems(equal_caps=True))
def test_hasa_monotone_in_score_and_inverse_antitone(p):
    s = p["scores"]
    w = run("hasa", p).widths
    wi = run("hasa-inverse", p).widths
    order = np.argsort(s, kind="stable")
    assert (np.diff(w[order]) >= -1e-12).all(), (s, w)
    assert (np.diff(wi[order]) <= 1e-12).all(), (s, wi)
    # ties -> exactly equal widths (equal caps)
    for i in range(len(s)):
        for j in range(len(s)):
            if s[i] == s[j]:
                assert w[i] == pytest.approx(w[j], abs=1e-12)
                assert wi[i] == pytest.approx(wi[j], abs=1e-12)


@SETTINGS
@given(problems(equal_caps=True))
def test_uniform_and_tiers_with_equal_caps_give_budget_to_everyone(p):
    u = run("uniform", p).widths
    t = run("tiers", p).widths
    np.testing.assert_allclose(u, p["budget"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(t, u, rtol=0, atol=1e-9)


@SETTINGS
@given(problems())
def test_uniform_and_tiers_with_unequal_caps(p):
    caps, b = p["caps"], p["budget"]
    u = run("uniform", p).widths
    # clients below their cap share one width, at least B; capped clients sit at their cap
    free = u < caps - 1e-9
    if free.any():
        assert np.ptp(u[free]) <= 1e-9
        assert u[free].min() >= b - 1e-9
    np.testing.assert_allclose(u[~free], caps[~free], atol=1e-9)
    # tiers: device caps order the widths
    t = run("tiers", p).widths
    order = np.argsort(caps, kind="stable")
    assert (np.diff(t[order]) >= -1e-12).all()


@SETTINGS
@given(problems(), st.integers(0, 2**31 - 1))
def test_hasa_random_ignores_input_scores_and_is_seeded(p, seed):
    a = run("hasa-random", p, seed=seed)
    b = run("hasa-random", {**p, "scores": -p["scores"][::-1] + 3.0}, seed=seed)
    np.testing.assert_array_equal(a.widths, b.widths)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, p["scores"])
    # it is hasa applied to its own random scores
    h = run("hasa", {**p, "scores": a.scores})
    np.testing.assert_allclose(a.widths, h.widths, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- example-based


def test_normalized_ranks_average_ties():
    np.testing.assert_allclose(normalized_ranks(np.array([1.0, 2.0, 2.0, 3.0])), [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(normalized_ranks(np.array([3.0, 1.0, 2.0])), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(normalized_ranks(np.array([7.0, 7.0, 7.0])), [0.5, 0.5, 0.5])


def test_normalized_ranks_match_scipy():
    """The numpy ranks (no scipy import in the ServerApp) are scipy's average ranks, ties included."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    for m in (2, 3, 7, 50, 1000):
        for scores in (rng.normal(size=m), rng.integers(0, 4, size=m).astype(float), -np.abs(rng.normal(size=m))):
            np.testing.assert_array_equal(normalized_ranks(scores), (rankdata(scores) - 1.0) / (m - 1.0))


def test_hasa_ties_equal_widths_and_average_ranks():
    a = allocate("hasa", np.array([1.0, 2.0, 2.0, 3.0]), np.array([10, 20, 30, 40]), budget=0.5)
    np.testing.assert_allclose(a.ranks, [0.0, 0.5, 0.5, 1.0])
    assert a.widths[1] == a.widths[2]
    assert a.widths[0] < a.widths[1] < a.widths[3]


def test_hand_example_design_steps():
    """METHOD.md section 2, steps 1-3, by hand: scores [0.1, 0.3, 0.2], sizes [1, 1, 2], B = 0.4.

    1. ranks r = [0, 1, 0.5]; 2. prelim w = 0.2 + 0.6 r = [0.2, 0.8, 0.5] (mean 0.5);
    3. s = 0.4/0.5 = 0.8 -> [0.16, 0.64, 0.4] -> clip -> [0.2, 0.64, 0.4] (used 0.41 > B), so more
    passes. At the fixed point client 0 stays at w_min and the others keep the ratio 0.8 : 0.5:
    0.05 + 0.25 a + 0.5 b = 0.4, a = 1.6 b  ->  b = 0.35/0.9, a = 1.6 b.
    """
    a = allocate("hasa", np.array([0.1, 0.3, 0.2]), np.array([1, 1, 2]), budget=0.4)
    np.testing.assert_allclose(a.ranks, [0.0, 1.0, 0.5])
    b = 0.35 / 0.9
    np.testing.assert_allclose(a.widths, [0.2, 1.6 * b, b], rtol=0, atol=1e-8)
    assert a.used == pytest.approx(0.4, abs=1e-9)
    assert a.passes >= 2  # one pass leaves used = 0.41

    inv = allocate("hasa-inverse", np.array([0.1, 0.3, 0.2]), np.array([1, 1, 2]), budget=0.4)
    np.testing.assert_allclose(inv.ranks, [1.0, 0.0, 0.5])
    # inverse: prelim [0.8, 0.2, 0.5], s = 0.8 -> [0.64, 0.16->0.2, 0.4]: same fixed point mirrored
    np.testing.assert_allclose(inv.widths, [1.6 * b, 0.2, b], rtol=0, atol=1e-8)


def test_hand_example_no_clipping_single_pass():
    # prelim [0.2, 0.8, 0.5] with shares [.25, .25, .5] has mean 0.5 = B: s = 1, nothing changes
    a = allocate("hasa", np.array([0.1, 0.3, 0.2]), np.array([1, 1, 2]), budget=0.5)
    np.testing.assert_allclose(a.widths, [0.2, 0.8, 0.5], atol=1e-12)
    assert a.passes == 1


def test_caps_respected_and_budget_redistributed():
    # client 2 would get the most but is capped at 0.3; the budget moves to the others
    a = allocate("hasa", np.array([0.0, 1.0, 2.0]), np.array([1, 1, 1]), budget=0.5, caps=np.array([0.8, 0.8, 0.3]))
    assert a.widths[2] == pytest.approx(0.3)
    assert a.used == pytest.approx(0.5, abs=1e-9)
    assert a.widths[1] > 0.5


def test_tiers_follow_caps():
    caps = np.array([0.3, 0.6, 1.0, 0.6])
    a = allocate("tiers", np.zeros(4), np.array([5, 1, 2, 3]), budget=0.5, caps=caps)
    assert a.used == pytest.approx(0.5, abs=1e-9)
    assert a.widths[0] < a.widths[1] < a.widths[2]
    assert a.widths[1] == a.widths[3]


def test_hasa_random_seed_changes_widths_and_is_reproducible():
    scores, sizes = np.arange(8.0), np.arange(1, 9) * 10
    a0 = allocate("hasa-random", scores, sizes, seed=0)
    a0b = allocate("hasa-random", scores, sizes, seed=0)
    a1 = allocate("hasa-random", scores, sizes, seed=1)
    np.testing.assert_array_equal(a0.widths, a0b.widths)
    assert not np.allclose(a0.widths, a1.widths)
    assert not np.allclose(a0.scores, a1.scores)


@pytest.mark.parametrize("budget", [0.25, 0.4, 0.5, 0.7])
def test_nonlinear_mac_cost_budget(budget):
    cost = mac_cost(LSTMLanguageModel(50, 16, 32))
    rng = np.random.default_rng(3)
    scores, sizes = rng.normal(size=7), rng.integers(1, 5000, size=7)
    shares = sizes / sizes.sum()
    for rule in RULES:
        a = allocate(rule, scores, sizes, budget=budget, cost=cost, caps=np.full(7, 0.9))
        spent = float(shares @ cost(a.widths))
        assert abs(spent - float(cost(np.array([budget]))[0])) <= 1e-6, (rule, spent)
        assert (a.widths >= 0.2 - 1e-12).all() and (a.widths <= 0.9 + 1e-12).all()
        assert a.used == pytest.approx(float(shares @ a.widths), abs=1e-12)
        assert a.cost_used == pytest.approx(spent, abs=1e-12)
        assert a.cost_target == pytest.approx(float(cost(np.array([budget]))[0]), abs=1e-12)
    # nonlinear cost: with unequal widths the size-weighted mean width differs from B
    h = allocate("hasa", scores, sizes, budget=budget, cost=cost, caps=np.full(7, 0.9))
    assert abs(h.used - budget) > 1e-4


def test_nonlinear_cnn_cost_budget():
    cost = mac_cost(WidthCNN(10, 8, 16))
    sizes = np.array([100, 2000, 50, 700])
    a = allocate("hasa", np.array([0.3, 0.1, 0.9, 0.5]), sizes, budget=0.45, cost=cost)
    spent = float((sizes / sizes.sum()) @ cost(a.widths))
    assert spent == pytest.approx(float(cost(np.array([0.45]))[0]), abs=1e-6)


# ----------------------------------------------------------------------------- infeasible settings


SC, SZ = np.array([0.1, 0.2, 0.3]), np.array([10, 20, 30])


def test_budget_below_width_min():
    with pytest.raises(ValueError, match="budget"):
        allocate("hasa", SC, SZ, budget=0.1, w_min=0.2)


def test_budget_that_is_not_a_width():
    """NaN compares False both ways, so it once passed every check and failed later inside Brent."""
    for budget in (math.nan, 0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"^budget .* is outside \(0, 1\]"):
            allocate("hasa", SC, SZ, budget=budget, w_min=0.2)


def test_budget_above_caps():
    # sum (n_i/N) cap_i = (10*0.8 + 20*0.3 + 30*0.3)/60 = 0.3833
    with pytest.raises(ValueError, match="budget.*cap"):
        allocate("hasa", SC, SZ, budget=0.4, caps=np.array([0.8, 0.3, 0.3]))
    with pytest.raises(ValueError, match="budget"):
        allocate("uniform", SC, SZ, budget=0.85)  # default caps = w_max = 0.8


def test_width_min_above_width_max():
    with pytest.raises(ValueError, match="width-min"):
        allocate("hasa", SC, SZ, budget=0.5, w_min=0.6, w_max=0.4)


def test_cap_below_width_min():
    with pytest.raises(ValueError, match="cap"):
        allocate("hasa", SC, SZ, budget=0.3, caps=np.array([0.8, 0.1, 0.8]))


def test_cap_above_one():
    with pytest.raises(ValueError, match="cap"):
        allocate("hasa", SC, SZ, budget=0.3, caps=np.array([0.8, 1.2, 0.8]))


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown allocation"):
        allocate("greedy", SC, SZ)


def test_bad_shapes_and_values():
    with pytest.raises(ValueError):
        allocate("hasa", SC[:2], SZ)
    with pytest.raises(ValueError):
        allocate("hasa", SC, np.array([10, 0, 30]))
    with pytest.raises(ValueError, match="finite"):
        allocate("hasa", np.array([0.1, np.nan, 0.3]), SZ)
    with pytest.raises(ValueError, match="cap"):
        allocate("hasa", SC, SZ, caps=np.array([0.8, 0.8]))


@pytest.mark.parametrize("rule", ["hasa", "hasa-random"])
def test_budget_exactly_width_min(rule):
    a = allocate(rule, np.arange(11.0), np.ones(11), budget=0.2, w_min=0.2)
    np.testing.assert_allclose(a.widths, 0.2, atol=1e-9)
    assert abs(a.used - 0.2) <= BUDGET_TOL


def test_feasible_edges():
    # budget exactly w_min: everyone at w_min; budget exactly the caps' ceiling: everyone at cap
    a = allocate("hasa", SC, SZ, budget=0.2)
    np.testing.assert_allclose(a.widths, 0.2, atol=1e-9)
    caps = np.array([0.5, 0.7, 0.9])
    ceiling = float((SZ / SZ.sum()) @ caps)
    b = allocate("hasa-inverse", SC, SZ, budget=ceiling, caps=caps)
    np.testing.assert_allclose(b.widths, caps, atol=1e-6)
    assert abs(b.used - ceiling) <= BUDGET_TOL


def test_focus_widens_the_most_heterogeneous_client_with_enough_data():
    # sizes: clients 2 and 3 are below the median (300); client 3 has the highest score but too
    # little data, so client 1 (highest score among the rest) gets w_max before scaling
    scores = np.array([0.02, 0.06, 0.05, 0.17, 0.04])
    sizes = np.array([1500, 700, 100, 50, 300])
    assert focus_client(scores, sizes) == 1
    a = allocate("focus", scores, sizes, budget=0.5, w_min=0.2, w_max=0.8)
    others = np.delete(a.widths, 1)
    np.testing.assert_allclose(others, others[0], atol=1e-12)  # everyone else keeps one common width
    shares = sizes / sizes.sum()
    # prelim [B, ..., w_max, ...] scaled by s = B / (B (1 - p_1) + w_max p_1); nothing clips
    s = 0.5 / (0.5 * (1 - shares[1]) + 0.8 * shares[1])
    np.testing.assert_allclose(a.widths, np.where(np.arange(5) == 1, 0.8 * s, 0.5 * s), atol=1e-9)
    assert a.used == pytest.approx(0.5, abs=1e-9)


def test_focus_ties_go_to_the_lowest_client_number_and_equal_sizes_all_qualify():
    assert focus_client(np.array([0.1, 0.3, 0.3]), np.array([10, 10, 10])) == 1
