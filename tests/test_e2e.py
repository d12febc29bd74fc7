"""End to end through the real `flwr run` CLI (simulation engine on Ray)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, medium_csv
from test_images import write_images

from hasa_flwr.study.launch import flwr_env, flwr_run, read_preset

SMALL = {"num-server-rounds": 2, "embed-dim": 16, "hidden-dim": 32}


def run(superlink, tmp_path, overrides, num_supernodes=7, timeout=600):
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = (tmp_path / "flwr.log").open("w")
    with log:
        outcome = flwr_run(ROOT, {"results-dir": str(tmp_path / "results"), **overrides},
                           num_supernodes=num_supernodes, env=superlink, log=log, timeout=timeout)
    return outcome, (tmp_path / "flwr.log").read_text()


def check_results(path, num_clients=7, rounds=2):
    res = json.loads(path.read_text())
    b = res["budget"]
    shares = [c["n_train"] for c in res["clients"]]
    used = sum(n * c["width"] for n, c in zip(shares, res["clients"])) / sum(shares)
    assert abs(used - b["used"]) <= 1e-9 and abs(b["cost_used"] - b["cost_target"]) <= 1e-6
    if b["cost"] == "width":
        assert abs(b["used"] - b["B"]) <= 1e-6 and b["cost_target"] == pytest.approx(b["B"])
    assert b["passes"] >= 1
    assert sorted(c["partition_id"] for c in res["clients"]) == list(range(num_clients))
    cfg = res["config"]
    for c in res["clients"]:
        assert cfg["width_min"] - 1e-12 <= c["width"] <= c["cap"] + 1e-12
        assert 0.0 <= c["accuracy"] <= c["top3"] <= 1.0
        assert c["full_width_accuracy"] is not None and c["n_train"] > 0 and c["n_test"] > 0
    assert [h["round"] for h in res["history"]] == list(range(1, rounds + 1))
    for h in res["history"]:  # each trained client's own report of its train message's seconds
        assert sorted(map(int, h["client_seconds"])) == h["trained"] and all(s > 0 for s in h["client_seconds"].values())
    assert res["summary"]["worst"] <= res["summary"]["tail"] <= res["summary"]["mean"]
    assert res["history"][-1]["mean"] == pytest.approx(res["summary"]["mean"])
    return res


def test_synthetic_hasa_two_rounds(superlink, tmp_path):
    given = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.6]  # score="given": the user's own score per partition id
    outcome, log = run(superlink, tmp_path, {**SMALL, "score": "given", "score-values": ",".join(map(str, given))})
    assert outcome.results is not None, log[-3000:]
    res = check_results(outcome.results)
    assert res["strategy"] == "hasa" and res["config"]["dataset"] == "synthetic"
    assert [c["score"] for c in sorted(res["clients"], key=lambda c: c["partition_id"])] == given
    # HASA: the widest subnet goes to a client with the highest score
    by_score = sorted(res["clients"], key=lambda c: c["score"])
    assert by_score[-1]["width"] >= by_score[0]["width"]
    # the per-client table was printed: its header, then one row per client
    assert re.search(r"^\s*id\s+client\s+n_train\s+score\s+width\s+acc\s+majority\s+full\s*$", log, re.M), log[-3000:]
    assert all(re.search(rf"^\s*{c['partition_id']}\s+{re.escape(c['name'])}\s", log, re.M) for c in res["clients"])
    check_saved_models(outcome.results)
    # init-from a saved supernet whose sizes do not fit the run stops it in one line
    bad, log = run(superlink, tmp_path / "b", {**SMALL, "hidden-dim": 48, "init-from": str(outcome.results.parent)})
    assert bad.results is None and "init-from" in bad.error and "does not fit this run" in bad.error, log[-3000:]


def check_saved_models(results_path):
    """The supernet and each client's subnet are saved next to results.json; each subnet is the
    supernet's prefix bit for bit and gives back exactly the accuracy the run reported."""
    import torch

    from hasa_flwr.federation.config import Settings
    from hasa_flwr.method.model_files import load_model
    from hasa_flwr.method.train import evaluate

    res = json.loads(results_path.read_text())
    run_dir = results_path.parent
    supernet = load_model(run_dir)
    assert supernet.width == 1.0 and supernet.meta["vocab"][:2] == ["<pad>", "<unk>"]
    assert supernet.meta["model"]["sizes"] == {"embed": 16, "hidden": 32}
    fed = Settings.from_dict(res["config"]).load_data()
    for row, data in zip(res["clients"], fed.clients):
        sub = load_model(run_dir, client=row["name"])
        assert sub.width == row["width"] and sub.meta["client"] == row["name"] == data.name
        assert evaluate(sub.build(), data.x_test, data.y_test)["accuracy"] == row["accuracy"]
        same = supernet.build(row["width"]).state_dict()
        assert all(torch.equal(v, same[k]) for k, v in sub.state.items())




@pytest.mark.skipif(medium_csv() is None, reason="HASA_DATA_DIR has no medium_data.csv")
def test_medium_local_files_equal_the_pooled_file(superlink, tmp_path):
    """Each simulated client reads only its own publication's file: the run equals the pooled one."""
    import pandas as pd

    folder = tmp_path / "per-publication"
    folder.mkdir()
    frame = pd.read_csv(medium_csv(), dtype=str, keep_default_na=False)
    for pub, rows in frame.groupby("publication", sort=False):
        rows.to_csv(folder / f"{pub}.csv", index=False)
    preset = {**read_preset(ROOT / "conf" / "medium.toml"), **SMALL, "seed": 1}
    pooled, log = run(superlink, tmp_path / "pooled", {**preset, "data-path": str(medium_csv())})
    assert pooled.results is not None, log[-3000:]
    res = check_results(pooled.results)
    assert res["clients"][0]["name"] == "The Startup"  # numbered largest first, as the paper does
    assert {c["name"] for c in res["clients"]} >= {"Towards Data Science", "Better Humans"}
    local, log = run(superlink, tmp_path / "local", {**preset, "data-path": str(folder), "client-column": ""})
    assert local.results is not None, log[-3000:]
    a, b = (json.loads(r.results.read_text()) for r in (pooled, local))
    assert a["vocabulary"] == b["vocabulary"] and a["vocabulary"]["source"] == "round"
    keys = ("partition_id", "name", "n_train", "n_test", "score", "rank", "width", "accuracy", "top3", "loss",
            "full_width_accuracy")
    assert [[c[k] for k in keys] for c in a["clients"]] == [[c[k] for k in keys] for c in b["clients"]]
    assert [h["accuracies"] for h in a["history"]] == [h["accuracies"] for h in b["history"]]
    assert "word_counts" in a["privacy"]["server_saw_per_client"]


def test_one_exchange_per_round_gives_the_same_results(superlink, tmp_path):
    """Evaluation riding on the next round's train message == a separate evaluate exchange."""
    base = {**SMALL, "num-server-rounds": 3, "save-model": False}
    runs = {}
    for fused in (True, False):
        outcome, log = run(superlink, tmp_path / str(fused), {**base, "one-exchange": fused})
        assert outcome.results is not None, log[-3000:]
        runs[fused] = json.loads(outcome.results.read_text())
    a, b = runs[True], runs[False]
    assert a["exchanges"] == {"train": 3, "evaluate": 1} and b["exchanges"] == {"train": 3, "evaluate": 3}
    keys = ("round", "mean", "worst", "tail", "accuracies", "train_loss")
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert [c["accuracy"] for c in a["clients"]] == [c["accuracy"] for c in b["clients"]]
    assert [c["full_width_accuracy"] for c in a["clients"]] == [c["full_width_accuracy"] for c in b["clients"]]


def test_fewer_nodes_than_clients_stops_with_advice(superlink, tmp_path):
    outcome, log = run(superlink, tmp_path, {**SMALL, "wait-seconds": 5.0}, num_supernodes=3)
    assert outcome.results is None
    assert outcome.error and "only 3 of 7 SuperNodes" in outcome.error and "num-supernodes=7" in outcome.error
    assert not (tmp_path / "results").exists()


def test_serverapp_rejects_bad_names_and_client_data_errors(superlink, tmp_path):
    outcome, _ = run(superlink, tmp_path, {**SMALL, "extraction": "nope"})
    assert outcome.results is None and "unknown extraction 'nope'" in outcome.error
    outcome, _ = run(superlink, tmp_path, {**SMALL, "dataset": "text", "client-column": "publication",
                                           "data-path": str(tmp_path / "none.csv")})
    assert outcome.results is None and "none.csv not found" in outcome.error
    assert not (tmp_path / "results").exists()


def test_timeout_stops_the_run_on_the_superlink(superlink, tmp_path):
    """Past its timeout a run is stopped on the SuperLink too, else the simulation would go on there."""
    outcome, log = run(superlink, tmp_path, {**SMALL, "num-server-rounds": 500}, timeout=25)
    assert outcome.results is None and outcome.run_id is not None, log[-3000:]
    assert "did not finish within 25 s" in outcome.error
    assert run_status(superlink, outcome.run_id) == "finished:stopped"


def run_status(superlink, run_id: int) -> str:
    ls = subprocess.run(["flwr", "ls", "--run-id", str(run_id), "--format", "json"], env=flwr_env(superlink),
                        capture_output=True, text=True, timeout=60)
    return json.loads(ls.stdout)["runs"][0]["status"]


def test_ctrl_c_stops_the_run_on_the_superlink(superlink, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the process group) ends `flwr run` and stops the run itself."""
    config = {**SMALL, "num-server-rounds": 500, "results-dir": str(tmp_path / "results")}
    code = ("import sys; from pathlib import Path; from hasa_flwr.study.launch import flwr_run; "
            f"flwr_run(Path({str(ROOT)!r}), {config!r}, num_supernodes=7, log=sys.stdout, timeout=600)")
    # a terminal delivers Ctrl-C; pytest itself may run with SIGINT ignored (e.g. started as a background
    # job of a non-interactive shell), and an ignored SIGINT is inherited: restore the terminal's default
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **superlink}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, found, training = [], {}, threading.Event()

    def read() -> None:  # to the end: a full pipe would block the child's last writes and its exit
        for line in proc.stdout:
            seen.append(line)
            if "run_id" not in found and (m := re.search(r"Successfully started run (\d+)", line)):
                found["run_id"] = int(m.group(1))
            if "run_id" in found and "[ROUND 1/" in line:
                training.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert training.wait(timeout=300), "".join(seen)[-3000:]  # never a hang if round 1 never comes
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)  # `flwr stop` (up to 60 s) and teardown are slow on a loaded 2-core machine
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    run_id = found.get("run_id")
    assert run_id is not None, "".join(seen)[-3000:]
    assert proc.returncode != 0
    assert run_status(superlink, run_id) == "finished:stopped"


def test_images_one_folder_per_client(superlink, tmp_path):
    """Users' images, one imagefolder per client; the server builds the CNN for the 3x6x6 shape the
    query round reports, and south, which has no fox, labels with the agreed class-names."""
    root = tmp_path / "cameras"
    write_images(root / "north", {"cat": 8, "dog": 6, "fox": 4})
    write_images(root / "south", {"cat": 3, "dog": 9})
    write_images(root / "west", {"cat": 5, "dog": 5, "fox": 5})
    config = {"num-server-rounds": 2, "embed-dim": 4, "hidden-dim": 8, "dataset": "images", "data-path": str(root),
              "num-clients": 3, "class-names": "cat,dog,fox"}
    outcome, log = run(superlink, tmp_path, config, num_supernodes=3)
    assert outcome.results is not None, log[-3000:]
    res = check_results(outcome.results, num_clients=3)
    clients = sorted(res["clients"], key=lambda c: c["partition_id"])
    assert [(c["name"], c["n_train"] + c["n_test"]) for c in clients] == [("north", 18), ("west", 15), ("south", 12)]
    assert res["config"]["dataset"] == "images" and res["config"]["class_names"] == "cat,dog,fox"
    assert {"input_shape", "class_names_hash"} <= set(res["privacy"]["server_saw_per_client"])
