"""Partial participation and round deadlines: the seeded sample, and whole runs of the strategy on
an in-process federation (the real ClientApp through the loopback grid; no Ray, no processes)."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.data import vocab_hash
from hasa_flwr.study.launch import app_defaults
from hasa_flwr.method.participation import round_sample
from hasa_flwr.federation.phases import allocation_round, initial_supernet
from hasa_flwr.study.dry_run import statistics_phases
from hasa_flwr.federation.strategy import FederationError, HasaStrategy
from conftest import ROOT


def test_round_sample_is_seeded_sized_and_strategy_free():
    ids = list(range(10))
    a = round_sample(ids, 0.3, 0, seed=4, server_round=2)
    assert len(a) == 3 and a == sorted(set(a)) and set(a) <= set(ids)
    assert a == round_sample(list(reversed(ids)), 0.3, 0, seed=4, server_round=2)  # order of the roster is irrelevant
    assert round_sample(ids, 1.0, 0, 4, 2) == ids and len(round_sample(ids, 0.01, 0, 4, 2)) == 1
    assert len(round_sample(ids, 0.1, 5, 4, 2)) == 5  # at least min-train-clients
    draws = {tuple(round_sample(ids, 0.3, 0, 4, r)) for r in range(1, 30)}
    assert len(draws) > 10  # a new sample every round
    counts = np.bincount([i for r in range(1, 2001) for i in round_sample(ids, 0.3, 0, 4, r)], minlength=10)
    assert counts.min() > 0.8 * 600 and counts.max() < 1.2 * 600  # uniform over clients
    assert round_sample(ids, 0.3, 0, 4, 2, stream=1) != a or round_sample(ids, 0.3, 0, 4, 3, stream=1) != \
        round_sample(ids, 0.3, 0, 4, 3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        round_sample(ids, 0.0, 0, 4, 2)


def loopback_run(overrides, drop=None):
    """A whole run of the strategy on the loopback federation: (strategy, clients)."""
    rc = {**app_defaults(ROOT), "embed-dim": 8, "hidden-dim": 16, "num-server-rounds": 3, **overrides}
    settings = settings_from_run_config(rc)
    p = statistics_phases(rc)
    vocab, clients = p["vocab"], p["clients"]
    model = initial_supernet(settings, len(vocab), None, vocab)
    allocation_round(settings, clients, np.array([p["scores"][c.node_id] for c in clients]), model)
    strategy = HasaStrategy(clients, model.slicing_spec(), settings.sizes, extraction=settings.extraction,
                            aggregation=settings.aggregation, seed=settings.seed, num_rounds=settings.num_rounds,
                            fused=settings.fused_evaluation, fraction_train=settings.fraction_train,
                            fraction_evaluate=settings.fraction_evaluate,
                            min_train_clients=settings.min_train_clients, deadline=settings.deadline)
    config = ConfigRecord({"vocab-hash": vocab_hash(vocab)})
    p["grid"].drop = drop
    strategy.start(p["grid"], ArrayRecord(model.state_dict()), num_rounds=settings.num_rounds,
                   timeout=settings.deadline, train_config=config, evaluate_config=config)
    return strategy, clients


def test_partial_participation_trains_a_seeded_sample_and_evaluates_everyone_at_the_end():
    strategy, clients = loopback_run({"fraction-train": 0.4, "seed": 3})
    ids = [c.partition_id for c in clients]
    hist = strategy.history
    assert [h["round"] for h in hist] == [1, 2, 3]
    for h in hist:
        assert h["trained"] == round_sample(ids, 0.4, 0, 3, h["round"]) and len(h["trained"]) == 3
    # round r's model is evaluated by the clients that train in round r+1; the last by everybody
    assert [h["clients"] for h in hist] == [3, 3, 7]
    assert [k for k, v in hist[0]["accuracies"].items() if v is not None] == [str(i) for i in hist[1]["trained"]]
    assert strategy.exchanges == {"train": 3, "evaluate": 1}
    # uniform at the same seed trains exactly the same clients in every round
    uniform, _ = loopback_run({"fraction-train": 0.4, "seed": 3, "strategy": "uniform"})
    assert [h["trained"] for h in uniform.history] == [h["trained"] for h in hist]


def test_a_round_below_min_train_clients_stops_the_run():
    def drop(msg, node):  # two devices die as round 2 starts
        return msg.metadata.message_type == "train" and node in (101, 102) and \
            int(msg.content["config"]["server-round"]) == 2
    with pytest.raises(FederationError, match=r"round 2: 5 of 7 sampled clients .* fewer than 6 \(min-train-clients=6\)"):
        loopback_run({"min-train-clients": 6}, drop=drop)
    strategy, clients = loopback_run({"min-train-clients": 5}, drop=drop)  # goes on with 5
    assert [len(h["trained"]) for h in strategy.history] == [7, 5, 5]
    late = {(r["round"], r["partition_id"]) for r in strategy.rejected if r["phase"] == "train"}
    assert {r for r, _ in late} == {2, 3} and all("deadline" in r["reason"] for r in strategy.rejected)
