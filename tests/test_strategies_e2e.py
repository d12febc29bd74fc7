"""Baselines on the image study through the real `flwr run` (issue: matched-budget baselines)."""

import pytest
from conftest import ROOT
from test_e2e import check_results, run

from hasa_flwr.study.launch import read_preset


@pytest.mark.parametrize("strategy", ["fedrolex", "fjord", "hasa"])
def test_digits_two_rounds(superlink, tmp_path, strategy):
    preset = read_preset(ROOT / "conf" / "digits.toml")
    caps = "0.8,0.8,0.6,0.8,0.5,0.8,0.8"
    # hasa also exercises the query round for `loss` and the budget in MACs
    score, cost = ("loss", "macs") if strategy == "hasa" else ("jsd", "width")
    outcome, log = run(superlink, tmp_path, {**preset, "strategy": strategy, "num-server-rounds": 2,
                                             "embed-dim": 8, "hidden-dim": 16, "width-cap": caps, "score": score,
                                             "budget-cost": cost})
    assert outcome.results is not None, log[-3000:]
    res = check_results(outcome.results)
    assert res["strategy"] == strategy and res["config"]["dataset"] == "digits"
    assert [c["cap"] for c in res["clients"]] == [float(c) for c in caps.split(",")]
    assert res["extraction"] == {"fedrolex": "rolling", "fjord": "ordered", "hasa": "prefix"}[strategy]
    assert res["budget"]["cost"] == cost
    if cost == "macs":  # conv MACs grow faster than width: the cost target sits below B
        assert 0.0 < res["budget"]["cost_target"] < res["config"]["budget"]
    if score == "loss":  # initial cross-entropy over 10 classes sits near ln 10
        assert all(1.5 < c["score"] < 3.5 for c in res["clients"])
    assert res["summary"]["mean"] > 0.1  # 10 classes: two rounds already beat chance
