"""Extraction `own` (a shared prefix plus a block of units per wider client) and the `midsize`
allocation rule: pure functions first, then whole runs on the loopback federation and the saved models."""

import numpy as np
import pytest
import torch

from hasa_flwr.method.aggregation import Update, aggregate
from hasa_flwr.method.allocation import allocate, midsize_clients
from hasa_flwr.method.subnet import deployed_units, extract, num_units, own_fits, own_units, select_units
from hasa_flwr.method.models import build_model
from test_model_files import VOCAB, settings
from test_participation import loopback_run

MEDIUM_SIZES = np.array([15089, 7074, 3719, 2946, 2066, 1445, 162.0])  # samples per publication (seed 0)


def test_own_units_share_the_narrowest_prefix_and_give_each_wider_client_its_own_block():
    widths = {0: 0.25, 1: 0.5, 2: 0.25, 3: 0.375}
    units = own_units(widths, {"hidden": 16, "embed": 8})
    assert {pid: len(u["hidden"]) for pid, u in units.items()} == {p: num_units(w, 16) for p, w in widths.items()}
    shared = torch.arange(4)  # the narrowest clients' 4 of 16 units
    for u in units.values():
        assert torch.equal(u["hidden"][:4], shared)
    assert torch.equal(units[0]["hidden"], shared) and torch.equal(units[2]["hidden"], shared)
    assert units[1]["hidden"][4:].tolist() == [4, 5, 6, 7]   # blocks in client-number order
    assert units[3]["hidden"][4:].tolist() == [8, 9]
    assert units[1]["embed"].tolist() == [0, 1, 2, 3] and units[3]["embed"].tolist() == [0, 1, 4]
    # a client alone above the rest holds exactly its prefix: `own` is `prefix` with one wider client
    one = own_units({0: 0.25, 1: 0.75}, {"hidden": 16})
    assert torch.equal(one[1]["hidden"], select_units("prefix", 0.75, {"hidden": 16})["hidden"])


def test_own_units_refuse_blocks_that_do_not_fit_and_own_fits_agrees():
    assert own_fits([0.25, 0.5, 0.5], {"hidden": 16})            # 4 shared + 4 + 4
    with pytest.raises(ValueError, match=r"extraction 'own' needs 28 units of hidden .* has 16: lower width-max"):
        own_units({0: 0.25, 1: 0.75, 2: 0.75, 3: 0.75}, {"hidden": 16})
    assert not own_fits([0.25, 0.75, 0.75, 0.75], {"hidden": 16})
    with pytest.raises(ValueError, match="use own_units"):
        select_units("own", 0.5, {"hidden": 16})
    prefix = deployed_units("rolling", {0: 0.5, 1: 0.25}, {"hidden": 16})  # others deploy their prefix
    assert prefix[0]["hidden"].tolist() == list(range(8))


def test_selective_aggregation_leaves_a_clients_own_block_to_it_alone():
    sizes = {"embed": 4, "hidden": 8}
    model = build_model("lstm", 12, sizes, 1.0)
    spec, state = model.slicing_spec(), {k: v.clone() for k, v in model.state_dict().items()}
    units = own_units({0: 0.5, 1: 0.75, 2: 0.75}, sizes)
    updates = [Update(units[p], {k: v + (p + 1) for k, v in extract(state, spec, units[p], sizes).items()}, 10.0)
               for p in range(3)]
    new = aggregate(state, updates, spec, sizes, "selective")
    w = "lstm.weight_hh_l0"  # rows: 4 gates x 8 hidden units; columns: 8 hidden units
    rows = lambda units_: torch.cat([g * 8 + units_ for g in range(4)])  # noqa: E731
    shared, own1, own2 = torch.arange(4), torch.tensor([4, 5]), torch.tensor([6, 7])
    delta = new[w] - state[w]
    assert torch.allclose(delta[rows(shared)][:, shared], torch.full((16, 4), 2.0))  # mean of +1, +2, +3
    assert torch.allclose(delta[rows(own1)][:, own1], torch.full((8, 2), 2.0))      # client 1 alone
    assert torch.allclose(delta[rows(own2)][:, own2], torch.full((8, 2), 3.0))      # client 2 alone
    assert torch.equal(delta[rows(own1)][:, own2], torch.zeros(8, 2))               # nobody trains across blocks


def test_midsize_widens_clients_with_enough_data_and_less_than_an_equal_share():
    assert midsize_clients(MEDIUM_SIZES).tolist() == [2, 3]          # Data Driven Investor, UX Collective
    assert midsize_clients(np.full(5, 100.0)).tolist() == []          # equal shares: nobody is under-served
    a = allocate("midsize", np.zeros(7), MEDIUM_SIZES, supernet={"embed": 64, "hidden": 128})
    w = a.widths
    assert abs(float(MEDIUM_SIZES / MEDIUM_SIZES.sum() @ w) - 0.5) < 1e-9
    assert w[2] == w[3] > 0.7 and np.allclose(np.delete(w, [2, 3]), w[0]) and w[0] < 0.5
    # width-max 1: two blocks at the projected width would need 53 + 2 x 53 of 128 units, so the
    # widened clients get the widest width whose blocks still fit
    free = allocate("midsize", np.zeros(7), MEDIUM_SIZES, w_max=1.0).widths
    supernet = {"hidden": 128}
    fitted = allocate("midsize", np.zeros(7), MEDIUM_SIZES, w_max=1.0, supernet=supernet).widths
    assert not own_fits(list(free), supernet) and own_fits(list(fitted), supernet) and w[2] < fitted[2] < free[2]
    bigger = fitted.copy()
    bigger[[2, 3]] += 1 / 128  # one more unit each no longer fits
    assert not own_fits(list(bigger), supernet)
    assert allocate("midsize", np.zeros(5), np.full(5, 100.0)).widths.tolist() == [0.5] * 5


def test_a_midsize_run_trains_and_evaluates_each_clients_own_units_in_one_exchange_or_two():
    """The loopback federation (synthetic text, real ClientApp): one exchange per round evaluates
    exactly what the separate evaluate exchange does, and the widened clients get blocks of their own."""
    fused, clients = loopback_run({"strategy": "midsize", "one-exchange": True})
    separate, _ = loopback_run({"strategy": "midsize", "one-exchange": False})
    assert fused.exchanges == {"train": 3, "evaluate": 1} and separate.exchanges == {"train": 3, "evaluate": 3}
    assert [h["accuracies"] for h in fused.history] == [h["accuracies"] for h in separate.history]
    widths = {c.partition_id: c.width for c in clients}
    wide = [p for p, w in widths.items() if w > min(widths.values())]
    assert len(wide) >= 2, widths  # the synthetic federation has several mid-sized clients
    units = fused.deployed
    hidden = [set(units[p]["hidden"].tolist()) - set(range(num_units(min(widths.values()), 16))) for p in wide]
    assert all(hidden) and all(not (a & b) for i, a in enumerate(hidden) for b in hidden[i + 1:])


def test_a_clients_saved_subnet_is_its_own_units(tmp_path):
    s = settings(strategy="midsize")
    model = s.initial_model(len(VOCAB))
    state = model.state_dict()
    clients = [{"name": "a", "partition_id": 0, "width": 0.25, "cap": 0.8},
               {"name": "b", "partition_id": 1, "width": 0.5, "cap": 0.8},
               {"name": "c", "partition_id": 2, "width": 0.5, "cap": 0.8}]
    from hasa_flwr.federation.run_models import save_run_models
    from hasa_flwr.method.model_files import load_model

    save_run_models(tmp_path, s, state, model.slicing_spec(), num_classes=len(VOCAB), input_shape=None, vocab=VOCAB,
                    clients=clients, run_id=1)
    units = own_units({0: 0.25, 1: 0.5, 2: 0.5}, s.sizes)
    saved = load_model(tmp_path, client="c")
    want = extract(state, model.slicing_spec(), units[2], s.sizes)
    assert all(torch.equal(saved.state[k], v) for k, v in want.items())
    prefix = load_model(tmp_path).build(0.5).state_dict()  # client c's units are not the supernet's prefix
    assert not all(torch.equal(saved.state[k], v) for k, v in prefix.items())
    saved.build()  # a width-0.5 model of the family: loads as any client model does
