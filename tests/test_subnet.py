"""Tests for hasa_flwr.method.subnet: unit counts, unit selection (prefix / rolling / random / ordered),
position arithmetic and extraction (docs/METHOD.md sections 1 and 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hasa_flwr.method.subnet import (
    EXTRACTIONS,
    Axis,
    expected_shapes,
    extract,
    gather,
    num_units,
    open_grid,
    select_units,
    sub_sizes,
)

# ----------------------------------------------------------------------------- unit counts


@pytest.mark.parametrize("width,size,want", [
    (0.3, 10, 3), (0.05, 10, 1), (1.0, 10, 10), (0.5, 7, 3), (0.7, 10, 7), (0.6, 10, 6),
    (0.29, 100, 29), (0.2, 4, 1), (0.01, 1, 1), (0.999, 1000, 999), (0.8, 5, 4),
])
def test_num_units_floor_with_min_one(width, size, want):
    assert num_units(width, size) == want


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_num_units_exact_fractions(size, data):
    k = data.draw(st.integers(1, size))
    assert num_units(k / size, size) == k
    # strictly below the next unit stays at k
    if k < size:
        assert num_units((k + 0.5) / size, size) == k


def test_sub_sizes():
    assert sub_sizes(0.5, {"embed": 12, "hidden": 7}) == {"embed": 6, "hidden": 3}
    assert sub_sizes(0.05, {"c1": 8, "c2": 16}) == {"c1": 1, "c2": 1}
    assert sub_sizes(1.0, {"c1": 8, "c2": 16}) == {"c1": 8, "c2": 16}


# ----------------------------------------------------------------------------- unit selection

SIZES = {"embed": 12, "hidden": 20}


@pytest.mark.parametrize("extraction", ["prefix", "ordered"])
def test_prefix_and_ordered_take_first_units(extraction):
    idx = select_units(extraction, 0.35, SIZES, server_round=5, seed=3, client=2)
    assert set(idx) == {"embed", "hidden"}
    assert torch.equal(idx["embed"], torch.arange(4))
    assert torch.equal(idx["hidden"], torch.arange(7))


@pytest.mark.parametrize("server_round", [0, 1, 7, 19, 20, 33])
def test_rolling_window_wraps(server_round):
    idx = select_units("rolling", 0.35, SIZES, server_round=server_round)
    for dim, size in SIZES.items():
        k = math.floor(0.35 * size)
        want = {(j + server_round) % size for j in range(k)}
        got = idx[dim].tolist()
        assert set(got) == want
        assert got == sorted(got) and len(got) == k


def test_rolling_union_over_k_rounds_covers_every_unit():
    for start in (0, 4, 37):
        for dim, size in SIZES.items():
            seen = set()
            for r in range(start, start + size):  # exactly K consecutive rounds
                seen.update(select_units("rolling", 0.25, SIZES, server_round=r)[dim].tolist())
            assert seen == set(range(size)), (start, dim)
    # fewer rounds than K do not cover everything at width 0.25 of 20 (5 units, 10 rounds -> 14 units)
    seen = set()
    for r in range(10):
        seen.update(select_units("rolling", 0.25, {"hidden": 20}, server_round=r)["hidden"].tolist())
    assert len(seen) == 14


def test_random_selection_properties():
    sizes = {"embed": 64, "hidden": 100}
    a = select_units("random", 0.5, sizes, server_round=3, seed=11, client=2)
    for dim, size in sizes.items():
        t = a[dim]
        k = size // 2
        assert t.shape == (k,)
        assert t.dtype == torch.int64
        assert torch.equal(t, torch.sort(t).values)
        assert len(set(t.tolist())) == k
        assert 0 <= int(t.min()) and int(t.max()) < size
        assert not torch.equal(t, torch.arange(k))  # not the prefix
    again = select_units("random", 0.5, sizes, server_round=3, seed=11, client=2)
    for dim in sizes:
        assert torch.equal(a[dim], again[dim])
    for other in (dict(server_round=4, seed=11, client=2), dict(server_round=3, seed=11, client=3),
                  dict(server_round=3, seed=12, client=2)):
        b = select_units("random", 0.5, sizes, **other)
        for dim in sizes:
            assert not torch.equal(a[dim], b[dim]), (other, dim)


def test_random_selection_covers_units_over_clients():
    seen = set()
    for c in range(40):
        seen.update(select_units("random", 0.2, {"hidden": 30}, server_round=0, seed=0, client=c)["hidden"].tolist())
    assert seen == set(range(30))


def test_unknown_extraction():
    with pytest.raises(ValueError, match="unknown extraction"):
        select_units("strided", 0.5, SIZES)
    assert set(EXTRACTIONS) == {"prefix", "rolling", "random", "ordered", "own"}


# ----------------------------------------------------------------------------- positions, gather, extract

SPEC = {
    "vec": (Axis("h"),),
    "mat": (None, Axis("h")),
    "gated": (Axis("h", blocks=3), Axis("e")),
    "flat": (None, Axis("e", inner=2)),
    "fixed": (None,),
}
FULL = {"h": 5, "e": 4}


def make_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "vec": torch.randn(5, generator=g),
        "mat": torch.randn(2, 5, generator=g),
        "gated": torch.randn(15, 4, generator=g),
        "flat": torch.randn(3, 8, generator=g),
        "fixed": torch.randn(6, generator=g),
    }


def test_extract_hand_positions():
    state = make_state()
    idx = {"h": torch.tensor([1, 4]), "e": torch.tensor([0, 3])}
    sub = extract(state, SPEC, idx, FULL)
    assert torch.equal(sub["vec"], state["vec"][[1, 4]])
    assert torch.equal(sub["mat"], state["mat"][:, [1, 4]])
    rows = [1, 4, 6, 9, 11, 14]  # gate blocks of 5: g*5 + {1, 4}
    assert torch.equal(sub["gated"], state["gated"][rows][:, [0, 3]])
    assert torch.equal(sub["flat"], state["flat"][:, [0, 1, 6, 7]])  # unit u spans columns 2u, 2u+1
    assert torch.equal(sub["fixed"], state["fixed"])
    # independent copies
    sub["fixed"].add_(1.0)
    assert not torch.equal(sub["fixed"], state["fixed"])
    assert {k: tuple(v.shape) for k, v in sub.items()} == expected_shapes(state, SPEC, idx, FULL)


def test_gather_gradient_reaches_selected_entries_only():
    state = {k: v.clone().requires_grad_(True) for k, v in make_state().items()}
    idx = {"h": torch.tensor([0, 2]), "e": torch.tensor([3])}
    total = sum(t.sum() for t in gather(state, SPEC, idx, FULL).values())
    total.backward()
    want_gated = torch.zeros(15, 4)
    for g in range(3):
        for u in (0, 2):
            want_gated[g * 5 + u, 3] = 1.0
    assert torch.equal(state["gated"].grad, want_gated)
    assert torch.equal(state["vec"].grad, torch.tensor([1.0, 0, 1, 0, 0]))
    want_flat = torch.zeros(3, 8)
    want_flat[:, 6:8] = 1.0
    assert torch.equal(state["flat"].grad, want_flat)
    assert torch.equal(state["fixed"].grad, torch.ones(6))


def test_open_grid_matches_numpy_ix():
    a = np.arange(15 * 4).reshape(15, 4)
    rows, cols = torch.tensor([1, 6, 11]), torch.tensor([0, 2])
    got = torch.as_tensor(a)[open_grid([rows, cols], torch.Size([15, 4]))]
    assert np.array_equal(got.numpy(), a[np.ix_(rows.numpy(), cols.numpy())])
    got = torch.as_tensor(a)[open_grid([None, cols], torch.Size([15, 4]))]
    assert np.array_equal(got.numpy(), a[:, [0, 2]])
