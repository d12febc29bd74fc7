"""`hasa bench overhead`'s in-process model of what Flower adds per round (message_costs)."""

from __future__ import annotations

from conftest import ROOT

from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.study.bench import message_costs
from hasa_flwr.study.launch import app_defaults


def costs(one_exchange: bool) -> dict[str, float]:
    config = {**app_defaults(ROOT), "num-clients": 3, "embed-dim": 8, "hidden-dim": 16, "one-exchange": one_exchange}
    return message_costs(settings_from_run_config(config), config, [0.3, 0.5, 0.8])


def test_one_exchange_round_sends_no_full_model():
    """The default round is one train message per client; one-exchange=false adds an evaluate message
    holding the full model, so it carries more than twice the bytes to the clients."""
    fused, separate = costs(True), costs(False)
    assert all(v > 0 for v in fused.values())
    assert separate["bytes_to_clients"] > 2 * fused["bytes_to_clients"]
    assert separate["bytes_from_clients"] > fused["bytes_from_clients"]
