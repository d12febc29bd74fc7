"""Tests for hasa_flwr.method.aggregation: FedAvg equivalence at width 1, hand-computed examples for
``full`` and ``selective``, a brute-force reference on random overlaps, and update validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hasa_flwr.method.aggregation import Update, aggregate, check_update
from hasa_flwr.method.models import LSTMLanguageModel
from hasa_flwr.method.subnet import Axis, extract, select_units

# ----------------------------------------------------------------------------- FedAvg at width 1


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_width_one_equals_fedavg(mode):
    model = LSTMLanguageModel(17, 6, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = model.slicing_spec()
    sizes = {"embed": 6, "hidden": 5}
    idx = {"embed": torch.arange(6), "hidden": torch.arange(5)}
    g = torch.Generator().manual_seed(0)
    weights = [3.0, 5.0, 11.0]
    params = [{k: torch.randn(v.shape, generator=g) for k, v in state.items()} for _ in weights]
    out = aggregate(state, [Update(idx, p, w) for p, w in zip(params, weights)], spec, sizes, mode)
    assert set(out) == set(state)
    for name in state:
        want = sum(w * p[name].double() for p, w in zip(params, weights)) / sum(weights)
        assert out[name].dtype == state[name].dtype
        torch.testing.assert_close(out[name].double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("extraction", ["prefix", "rolling"])
def test_equal_units_make_full_and_selective_bit_identical(extraction):
    """Every client training the same units (uniform widths, prefix or FedRolex): the two modes
    give the same bits, so `uniform` runs serve as the baseline of a `selective` ablation."""
    model = LSTMLanguageModel(17, 6, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {"embed": 6, "hidden": 5}
    idx = select_units(extraction, 0.5, sizes, server_round=3, seed=0, client=0)
    sub = extract(state, model.slicing_spec(), idx, sizes)
    g = torch.Generator().manual_seed(1)
    updates = [Update(idx, {k: v + torch.randn(v.shape, generator=g) for k, v in sub.items()}, w)
               for w in (3.0, 17.0, 5.0)]
    full = aggregate(state, updates, model.slicing_spec(), sizes, "full")
    selective = aggregate(state, updates, model.slicing_spec(), sizes, "selective")
    for name in state:
        assert torch.equal(full[name], selective[name]), name


# ----------------------------------------------------------------------------- hand example

TINY_SPEC = {"a": (Axis("h"),), "b": (None, Axis("h")), "g": (Axis("h", blocks=2),)}
TINY_SIZES = {"h": 4}


def tiny_state():
    return {
        "a": torch.tensor([10.0, 20.0, 30.0, 40.0]),
        "b": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),
        "g": torch.arange(8.0),
    }


def tiny_updates():
    # client 1 trains units {0, 1} with weight 1, client 2 units {1, 3} with weight 3
    u1 = Update({"h": torch.tensor([0, 1])}, {
        "a": torch.tensor([1.0, 2.0]),
        "b": torch.tensor([[11.0, 12.0], [15.0, 16.0]]),
        "g": torch.tensor([100.0, 101.0, 104.0, 105.0]),  # positions 0, 1 | 4, 5
    }, 1.0)
    u2 = Update({"h": torch.tensor([1, 3])}, {
        "a": torch.tensor([5.0, 7.0]),
        "b": torch.tensor([[21.0, 23.0], [25.0, 27.0]]),
        "g": torch.tensor([201.0, 203.0, 205.0, 207.0]),  # positions 1, 3 | 5, 7
    }, 3.0)
    return [u1, u2]


def test_hand_example_selective():
    out = aggregate(tiny_state(), tiny_updates(), TINY_SPEC, TINY_SIZES, "selective")
    # unit 0: client 1 only; unit 1: (1*x1 + 3*x2)/4; unit 2: nobody (old value); unit 3: client 2 only
    torch.testing.assert_close(out["a"], torch.tensor([1.0, 17 / 4, 30.0, 7.0]))
    torch.testing.assert_close(out["b"], torch.tensor([[11.0, 75 / 4, 3.0, 23.0], [15.0, 91 / 4, 7.0, 27.0]]))
    torch.testing.assert_close(out["g"], torch.tensor([100.0, 176.0, 2.0, 203.0, 104.0, 180.0, 6.0, 207.0]))


def test_hand_example_full():
    out = aggregate(tiny_state(), tiny_updates(), TINY_SPEC, TINY_SIZES, "full")
    # every client counts everywhere; untrained coordinates contribute the broadcast (old) value
    torch.testing.assert_close(out["a"], torch.tensor([31 / 4, 17 / 4, 30.0, 61 / 4]))
    torch.testing.assert_close(out["b"], torch.tensor([[14 / 4, 75 / 4, 3.0, 73 / 4], [30 / 4, 91 / 4, 7.0, 89 / 4]]))
    torch.testing.assert_close(out["g"], torch.tensor([25.0, 176.0, 2.0, 153.0, 29.0, 180.0, 6.0, 157.0]))


def test_no_updates_returns_copy_and_unknown_mode():
    state = tiny_state()
    out = aggregate(state, [], TINY_SPEC, TINY_SIZES, "selective")
    for k in state:
        assert torch.equal(out[k], state[k]) and out[k] is not state[k]
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(state, tiny_updates(), TINY_SPEC, TINY_SIZES, "median")


# ----------------------------------------------------------------------------- brute-force reference

SPEC = {
    "emb": (None, Axis("e")),
    "w_ih": (Axis("h", blocks=4), Axis("e")),
    "w_hh": (Axis("h", blocks=4), Axis("h")),
    "bias": (Axis("h", blocks=4),),
    "head": (None, Axis("h", inner=3)),
    "head_b": (None,),
}
SIZES = {"e": 5, "h": 6}
SHAPES = {"emb": (7, 5), "w_ih": (24, 5), "w_hh": (24, 6), "bias": (24,), "head": (2, 18), "head_b": (2,)}


def sub_position(axis, coord: int, idx: list[int], full: int):
    """Where global coordinate ``coord`` of an axis lands in a client's sub-tensor, or None."""
    if axis is None:
        return coord
    block, rest = divmod(coord, full * axis.inner)
    unit, off = divmod(rest, axis.inner)
    if unit not in idx:
        return None
    return block * len(idx) * axis.inner + idx.index(unit) * axis.inner + off


def brute_force(state, updates, mode):
    out = {}
    total = sum(u.weight for u in updates)
    for name, axes in SPEC.items():
        old = state[name].double()
        new = old.clone()
        for coord in itertools.product(*(range(n) for n in old.shape)):
            contrib = []
            for u in updates:
                pos = [sub_position(a, c, u.indices[a.dim].tolist() if a else [], SIZES[a.dim] if a else 0)
                       for a, c in zip(axes, coord)]
                if all(p is not None for p in pos):
                    contrib.append((u.weight, float(u.params[name][tuple(pos)])))
            if mode == "selective":
                if contrib:
                    new[coord] = sum(w * v for w, v in contrib) / sum(w for w, _ in contrib)
            else:
                covered = sum(w for w, _ in contrib)
                new[coord] = (sum(w * v for w, v in contrib) + (total - covered) * float(old[coord])) / total
        out[name] = new
    return out


def random_case(seed: int, extraction: str, n_clients: int):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    rng = np.random.default_rng(seed)
    updates = []
    for c in range(n_clients):
        w = float(rng.choice([0.2, 0.35, 0.5, 0.8, 1.0]))
        idx = select_units(extraction, w, SIZES, server_round=seed, seed=seed, client=c)
        sub = extract(state, SPEC, idx, SIZES)
        params = {k: v + torch.randn(v.shape, generator=g) for k, v in sub.items()}
        updates.append(Update(idx, params, float(rng.integers(1, 100))))
    return state, updates


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("seed,extraction,n", [(0, "random", 3), (1, "rolling", 2), (2, "prefix", 4), (3, "random", 1)])
def test_matches_brute_force(mode, seed, extraction, n):
    state, updates = random_case(seed, extraction, n)
    out = aggregate(state, updates, SPEC, SIZES, mode)
    want = brute_force(state, updates, mode)
    for name in SPEC:
        torch.testing.assert_close(out[name].double(), want[name], atol=1e-6, rtol=0)


def coverage(updates, name):
    """Number of clients that trained each coordinate, from the brute-force layout."""
    axes = SPEC[name]
    cov = torch.zeros(SHAPES[name])
    for coord in itertools.product(*(range(n) for n in SHAPES[name])):
        for u in updates:
            if all(sub_position(a, c, u.indices[a.dim].tolist() if a else [], SIZES[a.dim] if a else 0) is not None
                   for a, c in zip(axes, coord)):
                cov[coord] += 1
    return cov


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_untouched_keep_value_and_single_trainer_semantics(mode):
    state, updates = random_case(5, "random", 2)
    out = aggregate(state, updates, SPEC, SIZES, mode)
    total = sum(u.weight for u in updates)
    checked_untouched = checked_single = 0
    for name in ("w_ih", "w_hh", "head"):
        cov = coverage(updates, name)
        untouched = cov == 0
        assert torch.equal(out[name][untouched], state[name][untouched])
        checked_untouched += int(untouched.sum())
        # coordinates trained by exactly one client: selective takes its value, full mixes it with
        # the broadcast value in proportion n_i / N
        u0 = updates[0]
        only0 = torch.zeros_like(cov, dtype=torch.bool)
        for coord in itertools.product(*(range(n) for n in SHAPES[name])):
            pos0 = [sub_position(a, c, u0.indices[a.dim].tolist() if a else [], SIZES[a.dim] if a else 0)
                    for a, c in zip(SPEC[name], coord)]
            if cov[coord] == 1 and all(p is not None for p in pos0):
                only0[coord] = True
                v = float(u0.params[name][tuple(pos0)])
                want = v if mode == "selective" else (u0.weight * v + (total - u0.weight) * float(state[name][coord])) / total
                assert float(out[name][coord]) == pytest.approx(want, abs=1e-5)
        checked_single += int(only0.sum())
    assert checked_untouched > 0 and checked_single > 0


def test_single_client_round_trip_is_identity():
    state, updates = random_case(7, "random", 1)
    u = updates[0]
    u = Update(u.indices, extract(state, SPEC, u.indices, SIZES), u.weight)  # sends back what it got
    for mode in ("full", "selective"):
        out = aggregate(state, [u], SPEC, SIZES, mode)
        for name in SPEC:
            torch.testing.assert_close(out[name], state[name], atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------- check_update


def valid_update():
    state, updates = random_case(11, "random", 1)
    return state, updates[0]


def test_check_update_accepts_valid():
    state, u = valid_update()
    check_update(u, state, SPEC, SIZES)  # does not raise


def test_check_update_rejects_wrong_shape():
    state, u = valid_update()
    u.params["w_hh"] = u.params["w_hh"][:, :-1]
    with pytest.raises(ValueError, match="shape"):
        check_update(u, state, SPEC, SIZES)


def test_check_update_rejects_shape_of_other_indices():
    state, u = valid_update()
    bigger = select_units("prefix", 1.0, SIZES)
    with pytest.raises(ValueError, match="shape"):
        check_update(Update(bigger, u.params, u.weight), state, SPEC, SIZES)


def test_check_update_rejects_missing_and_unexpected_names():
    state, u = valid_update()
    del u.params["bias"]
    with pytest.raises(ValueError, match="bias"):
        check_update(u, state, SPEC, SIZES)
    state, u = valid_update()
    u.params["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        check_update(u, state, SPEC, SIZES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_update_rejects_non_finite(bad):
    state, u = valid_update()
    u.params["head"][0, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_update(u, state, SPEC, SIZES)


@pytest.mark.parametrize("weight", [0.0, -3.0, float("nan"), float("inf")])
def test_check_update_rejects_bad_weight(weight):
    state, u = valid_update()
    u.weight = weight
    with pytest.raises(ValueError, match="weight"):
        check_update(u, state, SPEC, SIZES)


# ----------------------------------------------------------------------------- thread count


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_server_tensor_work_is_bit_identical_at_one_thread(mode):
    """A simulation's ServerApp runs torch on one thread (federation/cores.py) so that its idle
    OpenMP threads do not spin on the actors' cores: slicing and aggregation (elementwise work) give
    the same bits at one thread as at several, at the Medium preset's model size."""
    from hasa_flwr.federation.cores import leave_cores_to_clients
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    model = LSTMLanguageModel(3000, 64, 128)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec, sizes = model.slicing_spec(), {"embed": 64, "hidden": 128}
    g = torch.Generator()   # seeded before each round: both rounds draw the same updates

    def server_round() -> dict[str, torch.Tensor]:
        updates = []
        for client, (width, weight) in enumerate([(0.32, 15150.0), (0.8, 152.0), (0.63, 2200.0)]):
            idx = select_units("prefix", width, sizes, server_round=1, seed=0, client=client)
            sub = extract(state, spec, idx, sizes)
            updates.append(Update(idx, {k: v + torch.randn(v.shape, generator=g) for k, v in sub.items()}, weight))
        return aggregate(state, updates, spec, sizes, mode)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, before))
        g.manual_seed(2)
        several = server_round()
        leave_cores_to_clients(object())               # a deployed grid: torch's default stays
        assert torch.get_num_threads() == max(2, before)
        leave_cores_to_clients(InMemoryGrid.__new__(InMemoryGrid))
        assert torch.get_num_threads() == 1
        g.manual_seed(2)
        one = server_round()
    finally:
        torch.set_num_threads(before)
    for name in state:
        assert torch.equal(several[name], one[name]), name
