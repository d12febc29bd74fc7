"""The strategy averages updates in client order, whatever order the replies arrive in: with several
simulation actors (or devices) the arrival order varies, and float sums depend on their order."""

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from hasa_flwr.federation.strategy import ClientInfo, HasaStrategy
from hasa_flwr.method.models import LSTMLanguageModel

SIZES = {"embed": 8, "hidden": 16}


def strategy(aggregation: str) -> HasaStrategy:
    clients = [ClientInfo(node_id=100 + i, partition_id=i, name=f"c{i}", n_train=10 + 7 * i, n_test=5,
                          label_counts=None, node_cap=None, width=w) for i, w in enumerate([0.5, 0.75, 1.0, 0.5])]
    return HasaStrategy(clients, LSTMLanguageModel.slicing_spec(), SIZES, extraction="prefix",
                        aggregation=aggregation, seed=0, num_rounds=1)


def replies(strat: HasaStrategy, state: dict[str, torch.Tensor]) -> list[Message]:
    sent = strat.configure_train(1, ArrayRecord(state), ConfigRecord({}), grid=None)
    out = []
    for k, msg in enumerate(sent):
        g = torch.Generator().manual_seed(k)
        trained = {name: t + torch.randn(t.shape, generator=g) for name, t in msg.content["arrays"].to_torch_state_dict().items()}
        metrics = MetricRecord({"num-examples": 10 + 7 * k, "train-loss": 1.0 + k / 3})
        out.append(Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg))
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
