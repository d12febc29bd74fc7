"""Beyond one machine: Flower's simulation engine on an existing Ray cluster (RAY_ADDRESS).

A local cluster (`ray start --head` on 127.0.0.1, its own temp dir) stands in for a real one; the
SuperLink is started with RAY_ADDRESS, so every run's ClientApp actors run on the cluster's
workers instead of a Ray instance of its own. Every process is stopped by PID afterwards."""

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from conftest import ROOT
from flower_procs import simulation_superlink

from hasa_flwr.study.processes import BIN, alive, cmdline, free_port, kill_tree, pids_with_env

from hasa_flwr.study.launch import flwr_run


def test_two_rounds_on_a_local_ray_cluster(tmp_path):
    marker = f"HASA_RAY_TEST={uuid.uuid4().hex}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths are length-limited
    port = free_port()
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        started = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                                  "--port", str(port), "--temp-dir", str(ray_tmp), "--num-cpus", "2",
                                  "--include-dashboard", "false", "--disable-usage-stats"],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"127.0.0.1:{port}"
        with simulation_superlink({"RAY_ADDRESS": address}) as sl_env:
            with (tmp_path / "flwr.log").open("w") as log:
                outcome = flwr_run(ROOT, {"num-server-rounds": 2, "embed-dim": 16, "hidden-dim": 32,
                                          "save-model": False, "results-dir": str(tmp_path / "results")},
                                   num_supernodes=7, env={**sl_env, "RAY_ADDRESS": address}, log=log, timeout=600)
            text = (tmp_path / "flwr.log").read_text()
            assert outcome.results is not None, text[-3000:]
            res = json.loads(outcome.results.read_text())
            assert [h["round"] for h in res["history"]] == [1, 2] and res["rejected_updates"] == []
            # the actors ran on the cluster: its workers' logs name them; no second Ray was started
            logs = "".join(p.read_text(errors="replace") for p in (ray_tmp / "session_latest" / "logs").glob("*")
                           if p.is_file() and p.suffix in (".out", ".err"))
            assert "ClientAppActor" in logs
            raylets = [p for p in pids_with_env(f"RAY_ADDRESS={address}") if "raylet" in cmdline(p)]
            assert raylets == []
    finally:
        for pid in pids_with_env(marker):
            if alive(pid):
                kill_tree(pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
