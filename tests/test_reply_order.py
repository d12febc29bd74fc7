"""The strategy's handling of replies: it averages updates in client order, whatever order the replies
arrive in (with several simulation actors or devices the arrival order varies, and float sums depend
on their order), and it rejects a malformed reply instead of stopping the run."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from hasa_flwr.federation.strategy import ClientInfo, FederationError, HasaStrategy
from hasa_flwr.method.models import LSTMLanguageModel

SIZES = {"embed": 8, "hidden": 16}


def strategy(aggregation: str, **kw) -> HasaStrategy:
    clients = [ClientInfo(node_id=100 + i, partition_id=i, name=f"c{i}", n_train=10 + 7 * i, n_test=5,
                          label_counts=None, node_cap=None, width=w) for i, w in enumerate([0.5, 0.75, 1.0, 0.5])]
    return HasaStrategy(clients, LSTMLanguageModel.slicing_spec(), SIZES, extraction="prefix",
                        aggregation=aggregation, seed=0, **{"num_rounds": 1, **kw})


def replies(strat: HasaStrategy, state: dict[str, torch.Tensor], server_round: int = 1, extra: dict | None = None,
            metrics_of: dict[int, dict | None] | None = None) -> list[Message]:
    """Each client's reply; ``metrics_of`` replaces client k's metrics (None: no metrics record)."""
    sent = strat.configure_train(server_round, ArrayRecord(state), ConfigRecord({}), grid=None)
    out = []
    for k, msg in enumerate(sent):
        g = torch.Generator().manual_seed(k)
        trained = {name: t + torch.randn(t.shape, generator=g) for name, t in msg.content["arrays"].to_torch_state_dict().items()}
        metrics = {"num-examples": 10 + 7 * k, "train-loss": 1.0 + k / 3, **(extra or {})}
        metrics = (metrics_of or {}).get(k, metrics)
        content = {"arrays": ArrayRecord(trained), **({"metrics": MetricRecord(metrics)} if metrics else {})}
        out.append(Message(RecordDict(content), reply_to=msg))
    return out


def test_the_average_is_bit_identical_for_every_arrival_order(task_identity):
    torch.manual_seed(0)
    state = LSTMLanguageModel(40, SIZES["embed"], SIZES["hidden"]).state_dict()
    for aggregation in ("full", "selective"):
        results = []
        for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
            strat = strategy(aggregation)
            got = replies(strat, state)
            arrays, metrics = strat.aggregate_train(1, [got[i] for i in order])
            results.append((arrays.to_torch_state_dict(), metrics["train-loss"] if metrics else None))
        first, loss = results[0]
        for other, other_loss in results[1:]:
            assert all(torch.equal(first[k], other[k]) for k in first), aggregation
            assert other_loss == loss
        assert not np.isnan(loss)


def test_a_malformed_reply_is_rejected_and_the_round_goes_on(task_identity):
    torch.manual_seed(0)
    state = LSTMLanguageModel(40, SIZES["embed"], SIZES["hidden"]).state_dict()
    strat = strategy("full")
    got = replies(strat, state, metrics_of={1: None,                                         # no metrics record
                                            2: {"num-examples": 24, "train-loss": math.nan},  # a non-finite loss
                                            3: {"num-examples": 3}})                          # no train-loss
    arrays, metrics = strat.aggregate_train(1, got)
    assert arrays is not None and metrics["clients"] == 1 and metrics["train-loss"] == 1.0
    reasons = {r["partition_id"]: r["reason"] for r in strat.rejected}
    assert reasons == {1: "the reply has no metrics record", 2: "metric 'train-loss' is nan, not a finite number",
                       3: "the reply's metrics lack train-loss"}


def test_a_round_without_one_valid_update_stops_the_run(task_identity):
    """min-train-clients=0 means one valid update suffices, not none."""
    state = LSTMLanguageModel(40, SIZES["embed"], SIZES["hidden"]).state_dict()
    strat = strategy("full")
    got = replies(strat, state, metrics_of={k: {"num-examples": [1, 2], "train-loss": 1.0} for k in range(4)})
    with pytest.raises(FederationError, match=r"round 1: 0 of 4 sampled clients .* fewer than 1 \(min-train-clients=0\)"):
        strat.aggregate_train(1, got)
    assert len(strat.rejected) == 4 and "'num-examples' is [1, 2]" in strat.rejected[0]["reason"]


def test_a_bad_evaluation_leaves_that_client_without_an_accuracy(task_identity):
    """One exchange per round: round 1's model is evaluated inside round 2's train replies."""
    state = LSTMLanguageModel(40, SIZES["embed"], SIZES["hidden"]).state_dict()
    strat = strategy("full", num_rounds=3, fused=True)
    got = replies(strat, state, server_round=2, extra={"eval-accuracy": 0.5, "eval-loss": 2.0},
                  metrics_of={1: {"num-examples": 17, "train-loss": 1.0, "eval-accuracy": 1.5, "eval-loss": 2.0}})
    arrays, _ = strat.aggregate_train(2, got)
    assert arrays is not None  # its update still counts: only its evaluation was malformed
    row = strat.history[-1]
    assert row["round"] == 1 and row["accuracies"] == {"0": 0.5, "1": None, "2": 0.5, "3": 0.5}
    assert strat.rejected == [{"round": 1, "phase": "evaluate", "partition_id": 1, "node": 101,
                               "reason": "evaluation: accuracy 1.5 is outside [0, 1]"}]


def test_score_loss_refuses_a_device_that_may_not_build_width_b():
    """Scores must be comparable: every client's loss is taken at width B, so a SuperNode whose own
    max-width is below B stops the run with one line instead of refusing the query mid-way."""
    from hasa_flwr.federation.strategy import query_losses

    clients = [ClientInfo(node_id=100 + i, partition_id=i, name=f"c{i}", n_train=10, n_test=5, label_counts=None,
                          node_cap=cap) for i, cap in enumerate([None, 0.4, 1.0])]
    with pytest.raises(FederationError, match=r"^score=loss .* width B=0.5, but client 'c1' has max-width 0.4: raise"):
        query_losses(None, clients, ArrayRecord({}), 0.5, 1.0, LSTMLanguageModel.slicing_spec(), SIZES)


class StatsGrid:
    """Answers the query round as devices named ``names`` would (node 100 + i)."""

    def __init__(self, names: list[str], lengths: list[int] | None = None) -> None:
        self.names, self.lengths = names, lengths or [3] * len(names)

    def send_and_receive(self, messages, *, timeout=None):
        from hasa_flwr.data import LOCAL

        out = []
        for m in messages:
            i = m.metadata.dst_node_id - 100
            stats = MetricRecord({"partition-id": LOCAL, "num-partitions": -1, "n-train": 10, "n-test": 2,
                                  "n-train-rows": 5, "num-classes": 3, "max-width": -1.0,
                                  "label-counts": [1] * self.lengths[i]})
            out.append(Message(RecordDict({"stats": stats, "info": ConfigRecord({"name": self.names[i]})}),
                               reply_to=m))
        return out


def test_the_query_round_refuses_names_that_share_a_model_folder(task_identity):
    """Each client's subnet is saved under its name as a folder name: 'a/b' and 'a_b' would
    overwrite each other's model, so the run stops before training."""
    from hasa_flwr.federation.strategy import query_stats

    clients, _, _ = query_stats(StatsGrid(["a", "b"]), [100, 101], 2, "text", 1.0)
    assert sorted(c.name for c in clients) == ["a", "b"]
    with pytest.raises(FederationError, match=r"^client names 'a/b' and 'a_b' would save their models to the same "
                                              r"folder 'a_b': give those SuperNodes"):
        query_stats(StatsGrid(["a/b", "a_b"]), [100, 101], 2, "text", 1.0)
    with pytest.raises(FederationError, match=r"label histograms of different lengths \(\[3, 4\]\)"):
        query_stats(StatsGrid(["a", "b"], lengths=[3, 4]), [100, 101], 2, "text", 1.0)
