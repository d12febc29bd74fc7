"""End to end in deployment mode: a real SuperLink and 3 SuperNodes on 127.0.0.1, the real
`flwr run <app> <connection> --stream`, devices with different compute caps (node config
`max-width`). Every process is started by hasa_flwr/study/deployment.py and stopped by PID, also on failure.

Slow on purpose (each message starts a fresh `flwr-clientapp` process that imports torch):
about 2-3 minutes per test on a 2-core machine. See docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT

from hasa_flwr.study.credentials import make_node_keys
from hasa_flwr.study.deploy_bench import one_run
from hasa_flwr.study.deployment import deployment, run_app, start_process
from hasa_flwr.study.launch import to_flwr_args
from hasa_flwr.study.noop_app import write_noop_app
from hasa_flwr.study.processes import BIN, alive, free_ports, pids_with_env

CAPS = (0.8, 0.5, 0.3)          # one device per cap: the widest, a mid-range and a weak one
BUDGET = 0.4
RUN = {"num-clients": 3, "num-server-rounds": 2, "strategy": "hasa", "embed-dim": 16, "hidden-dim": 32,
       "budget": BUDGET, "width-cap": "0.8", "wait-seconds": 90.0, "round-timeout": 300.0}
RUN_TIMEOUT = 900.0             # the whole `flwr run`; never hang CI


def node_configs(caps=CAPS) -> list[dict]:
    return [{"partition-id": i, "num-partitions": len(caps), "max-width": cap, "threads": 1}
            for i, cap in enumerate(caps)]


def run(dep, tmp_path, overrides=None, on_line=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "flwr.log"
    with log_path.open("w") as log:
        outcome = run_app(dep, ROOT, {**RUN, "results-dir": str(tmp_path / "results"), **(overrides or {})},
                          log=log, timeout=RUN_TIMEOUT, on_line=on_line)
    return outcome, log_path.read_text()


def check_results(path, caps=CAPS, rounds=2) -> dict:
    res = json.loads(path.read_text())
    assert res["strategy"] == "hasa" and res["config"]["num_clients"] == len(caps)
    clients = res["clients"]
    assert [c["partition_id"] for c in clients] == list(range(len(caps)))
    cfg = res["config"]
    for c, cap in zip(clients, caps):
        assert c["cap"] == pytest.approx(cap), "the SuperNode's max-width must be the client's cap"
        assert cfg["width_min"] - 1e-12 <= c["width"] <= cap + 1e-12, c
        assert c["n_train"] > 0 and c["n_test"] > 0
    n = [c["n_train"] for c in clients]
    used = sum(ni * c["width"] for ni, c in zip(n, clients)) / sum(n)
    b = res["budget"]
    assert b["B"] == pytest.approx(BUDGET)
    assert abs(used - b["B"]) <= 1e-6 and abs(b["used"] - b["B"]) <= 1e-6
    assert [h["round"] for h in res["history"]] == list(range(1, rounds + 1))
    assert all(h["seconds"] > 0 for h in res["history"])
    for h in res["history"]:  # each device's own timing of its train message, within the server's round
        assert sorted(map(int, h["client_seconds"])) == h["trained"]
        assert all(0 < s < h["seconds"] for s in h["client_seconds"].values())
    # the weakest device is held at its cap: without it HASA would give it more (it ranks above client 0)
    assert clients[-1]["width"] == pytest.approx(caps[-1])
    return res


def assert_all_stopped(marker: str) -> None:
    left = [p for p in pids_with_env(marker) if alive(p)]
    assert not left, f"processes left running: {left}"


def test_deploy_insecure_mixed_caps(tmp_path):
    """Through `hasa run --superlink <connection>`, the command users run against a deployment."""
    with deployment(node_configs()) as dep:
        marker = dep.marker
        config = to_flwr_args({**RUN, "results-dir": str(tmp_path / "results")})
        proc = subprocess.run([sys.executable, "-m", "hasa_flwr.cli", "run", str(ROOT), "--superlink", dep.connection,
                               "--run-config", config], env=dep.env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, cwd=dep.home)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{log[-3000:]}\n{dep.logs()}"
        results = [line.split("results: ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("results: ")]
        res = check_results(Path(results[-1]))
        assert res["rejected_updates"] == []
        assert all(c["accuracy"] is not None for c in res["clients"])
        # every device has a cap below 1: none receives (or builds) the full supernet
        assert all(c["full_width_accuracy"] is None for c in res["clients"])
        assert "round 2: mean accuracy" in log and "(3 clients)" in log
        # `hasa bench deploy`'s floor under the same SuperLink and SuperNodes: the no-op app, one message per
        # device per round, each in its own flwr-clientapp process
        noop = one_run(dep, write_noop_app(tmp_path / "noop"), {"num-clients": 3, "num-server-rounds": 3}, tmp_path,
                       "noop")
        assert len(noop["rounds_s"]) == 3 and all(s > 0 for s in noop["rounds_s"])
        # a process per message (3 devices x 3 rounds; the sampler may also catch the hasa run's last one exiting)
        assert noop["clientapp_processes"] >= 9, dep.logs()
    assert_all_stopped(marker)


def test_deploy_tls_mixed_caps(tmp_path):
    """TLS (own CA, server certificate for 127.0.0.1/localhost) and SuperNode authentication
    (`--enable-supernode-auth`, keys registered with `flwr supernode register`)."""
    with deployment(node_configs(), tls=True, auth=True) as dep:
        marker = dep.marker
        # the SuperLink speaks HTTPS only
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{dep.address}/health", timeout=5.0, trust_env=False)
        # a device whose key was never registered is refused and exits
        private, _ = make_node_keys(dep.home / "keys", "rogue")
        port, = free_ports(1)
        rogue_log = dep.home / "rogue.log"
        rogue = start_process([str(BIN / "flower-supernode"), "--superlink", dep.address, "--port", str(port),
                        "--root-certificates", str(dep.tls.ca_cert), "--auth-supernode-private-key", str(private),
                        "--node-config", "partition-id=0 num-partitions=3"], dep.env, rogue_log)
        dep.started.append(rogue.pid)
        try:
            rogue.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"an unregistered SuperNode was not refused:\n{rogue_log.read_text()[-2000:]}")
        assert rogue.returncode != 0 and "Failed to activate SuperNode" in rogue_log.read_text()

        outcome, log = run(dep, tmp_path)
        assert outcome.results is not None, f"{outcome}\n{log[-3000:]}\n{dep.logs()}"
        res = check_results(outcome.results)
        assert res["rejected_updates"] == []
        assert "(3 clients)" in log
    assert_all_stopped(marker)


def test_deploy_node_drop_out(tmp_path):
    """A device loses power as round 1 starts (SIGKILL to its SuperNode and ClientApp). Once it has
    missed its heartbeats (2 x 30 s) the SuperLink answers for it with "Node Unavailable"; the
    strategy logs the lost update and finishes every round with the other devices. Later rounds
    get that answer at once. The allocation (made in the query round, with all 3) is kept."""
    with deployment(node_configs()) as dep:
        marker = dep.marker
        killed: list[float] = []

        def on_line(line: str) -> None:
            if "[ROUND 1/" in line and not killed:
                killed.append(time.monotonic())
                threading.Thread(target=dep.kill_node, args=(2, signal.SIGKILL), daemon=True).start()

        outcome, log = run(dep, tmp_path, on_line=on_line)
        assert killed, f"round 1 never started:\n{log[-3000:]}"
        assert outcome.results is not None, f"{outcome}\n{log[-3000:]}\n{dep.logs()}"
        res = json.loads(outcome.results.read_text())
        assert [h["round"] for h in res["history"]] == [1, 2]
        lost = {(r["round"], r["phase"]): r for r in res["rejected_updates"]}
        assert {1, 2} == {rnd for rnd, phase in lost if phase == "train"}, lost
        assert all(r["partition_id"] == 2 and "Node Unavailable" in r["reason"] for r in lost.values()), lost
        assert "round 1: mean accuracy" in log and "round 2: mean accuracy" in log
        assert log.count("(2 clients)") >= 2 and "no evaluate result from client 2" in log
        dropped = res["clients"][2]
        assert dropped["accuracy"] is None and dropped["full_width_accuracy"] is None
        assert all(c["accuracy"] is not None for c in res["clients"][:2])
        assert abs(res["budget"]["used"] - BUDGET) <= 1e-6
    assert_all_stopped(marker)


def write_device_files(root: Path) -> list[Path]:
    """Three devices, each a folder holding only its own file, in three of the supported formats."""
    from hasa_flwr.data.synthetic import synthetic_titles

    paths = []
    for i, ((_, titles), suffix) in enumerate(zip(synthetic_titles(3), (".csv", ".jsonl", ".txt"))):
        folder = root / f"device-{i}"
        folder.mkdir(parents=True)
        path = folder / f"titles{suffix}"
        if suffix == ".csv":
            path.write_text("title,extra\n" + "".join(f"{t},{n}\n" for n, t in enumerate(titles)))
        elif suffix == ".jsonl":
            path.write_text("".join(json.dumps({"title": t}) + "\n" for t in titles))
        else:
            path.write_text("\n".join(titles) + "\n")
        paths.append(path)
    return paths


def test_deploy_tls_local_files_and_bad_devices(tmp_path):
    """Each SuperNode runs in its own folder with only its own file (node config data-path and
    client-name; no partition id): a vocabulary round, then 2 rounds of hasa over TLS. Then a device
    whose file is missing, and two devices with the same client-name, stop the run before training
    with one line that names the device, and write no results.json."""
    files = write_device_files(tmp_path / "devices")
    names = ("startup", "science", "humans")
    configs = [{"data-path": str(p), "client-name": n, "max-width": cap, "threads": 1,
                "model-dir": str(p.parent / "models"), "cache-dir": str(p.parent / "cache")}
               for p, n, cap in zip(files, names, CAPS)]
    run_config = {**RUN, "dataset": "text", "data-path": "", "min-count": 1}
    with deployment(configs, tls=True, node_dirs=[p.parent for p in files]) as dep:
        marker = dep.marker
        outcome, log = run(dep, tmp_path, run_config)
        assert outcome.results is not None, f"{outcome}\n{log[-3000:]}\n{dep.logs()}"
        res = json.loads(outcome.results.read_text())
        clients = res["clients"]
        assert [c["name"] for c in clients] == list(names)  # numbered largest first
        assert [c["n_train_rows"] for c in clients] == sorted((c["n_train_rows"] for c in clients), reverse=True)
        for c, cap in zip(clients, CAPS):
            assert c["cap"] == pytest.approx(cap) and res["config"]["width_min"] - 1e-12 <= c["width"] <= cap + 1e-12
            assert c["accuracy"] is not None and c["majority_accuracy"] is not None
        n = [c["n_train"] for c in clients]
        assert abs(sum(ni * c["width"] for ni, c in zip(n, clients)) / sum(n) - BUDGET) <= 1e-6
        assert res["vocabulary"]["source"] == "round" and res["vocabulary"]["size"] > 100
        assert "word_counts" in res["privacy"]["server_saw_per_client"]
        assert [h["round"] for h in res["history"]] == [1, 2] and res["rejected_updates"] == []
        # each device prepared its data once (split titles + tensors under the agreed vocabulary)
        for path in files:
            assert len(list((path.parent / "cache").glob("split-*.json"))) == 1
            assert len(list((path.parent / "cache").glob("tensors-*.pt"))) == 1
        # each device stored its own final subnet (no wider than its width, so never above its cap)
        from hasa_flwr.method.model_files import load_model

        for c, path in zip(clients, files):
            stored = path.parent / "models" / f"run-{res['run_id']}"
            assert res["model"]["delivered"][c["name"]] == str(stored)
            sub = load_model(stored)
            assert sub.width == pytest.approx(c["width"]) and sub.meta["client"] == c["name"]
            assert sub.meta["vocab"] and sub.meta["run_id"] == res["run_id"]
            assert c["full_width_accuracy"] is None  # a device with a cap < 1 never gets the full supernet

    assert_all_stopped(marker)

    bad = {"missing": [configs[0], configs[1], {**configs[2], "data-path": str(files[2].parent / "gone.csv")}],
           "twins": [configs[0], configs[1], {**configs[2], "client-name": "startup"}]}
    for case, node_configs in bad.items():  # a fresh deployment each: a re-registered node would linger
        with deployment(node_configs, node_dirs=[p.parent for p in files]) as dep:
            marker = dep.marker
            outcome, log = run(dep, tmp_path / case, run_config)
            assert outcome.results is None and outcome.error, f"{log[-3000:]}\n{dep.logs()}"
            assert "\n" not in outcome.error
            if case == "missing":
                assert "device 'humans'" in outcome.error and "gone.csv not found" in outcome.error
            else:
                assert "'startup' used by more than one device" in outcome.error and "client-name" in outcome.error
            assert not (tmp_path / case / "results").exists()
    assert_all_stopped(marker)


def test_deploy_tls_secure_stats_survive_a_lost_device(tmp_path):
    """secure-stats over TLS with 4 devices; one loses power as the first SecAgg+ round starts. The
    SuperLink answers for it ("Node Unavailable") once it misses its heartbeats; SecAgg+ finishes
    (or is started again) with the 3 others, which min-train-clients=3 lets the run go on with."""
    from hasa_flwr.data.prepare import candidate_words, write_vocab

    caps = (0.8, 0.8, 0.5, 0.5)
    cands = tmp_path / "candidates.txt"
    write_vocab(candidate_words("synthetic", 10_000), cands)
    with deployment(node_configs(caps), tls=True) as dep:
        marker = dep.marker
        killed: list[float] = []

        def on_line(line: str) -> None:
            if "Secure aggregation commencing" in line and not killed:
                killed.append(time.monotonic())
                threading.Thread(target=dep.kill_node, args=(3, signal.SIGKILL), daemon=True).start()

        outcome, log = run(dep, tmp_path, {"num-clients": 4, "secure-stats": True, "vocab-candidates": str(cands),
                                           "min-train-clients": 3, "num-server-rounds": 1}, on_line=on_line)
        assert killed, f"no secure round started:\n{log[-3000:]}"
        assert outcome.results is not None, f"{outcome}\n{log[-3000:]}\n{dep.logs()}"
        res = json.loads(outcome.results.read_text())
        assert len(res["dropped"]) == 1 and res["dropped"][0]["phase"] == "secure vocab", res["dropped"]
        assert len(res["clients"]) == 3 and all(c["accuracy"] is not None for c in res["clients"])
        rounds = res["privacy"]["secure_rounds"]
        assert [r["what"] for r in rounds] == ["vocab", "labels"] and [r["clients"] for r in rounds] == [3, 3]
        assert rounds[0]["requested"] == 4 and "label_counts" not in res["privacy"]["server_saw_per_client"]
        assert [h["round"] for h in res["history"]] == [1] and res["rejected_updates"] == []
    assert_all_stopped(marker)
