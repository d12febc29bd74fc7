"""`hasa bench overhead`'s in-process model of what Flower adds per round (message_costs)."""

from __future__ import annotations

import json
import os

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


def test_simulation_floor_runs_the_noop_app(tmp_path, superlink):
    """Flower's empty round in simulation: the no-op app under a real `flwr run`, one time per round."""
    from hasa_flwr.study.bench import simulation_floor

    seconds = simulation_floor(tmp_path, rounds=3, num_clients=2,
                               federation_config="num-supernodes=2 client-resources-num-cpus=1", env=superlink,
                               timeout=600)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert (tmp_path / "noop" / "noop_app.py").is_file()


def test_one_actor_limits_ray_to_the_actors_cpus():
    """--one-actor: Ray gets only the actor's CPUs, so Flower starts one actor whatever the core count."""
    from hasa_flwr.study.bench import simulation_resources

    assert simulation_resources(7, 1, True) == ("num-supernodes=7 client-resources-num-cpus=1 init-args-num-cpus=1", 1)
    config, actors = simulation_resources(7, 1, False)
    assert config == "num-supernodes=7 client-resources-num-cpus=1" and actors == max(1, os.cpu_count() or 1)


def test_cpu_sampler_attributes_cpu_to_the_processes_under_the_superlink():
    """The sampler finds the SuperLink by its port, walks every process below it and charges each
    its own CPU seconds: a child that burns ~0.3 s of CPU shows up, under its parent, with about that."""
    import subprocess
    import sys
    import time

    from hasa_flwr.study.bench import FlowerCpuSampler
    from hasa_flwr.study.processes import alive, descendants, free_port, kill_tree

    port = free_port()
    child = "import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)"
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)")
    # the command line reads like a SuperLink's: "... flower-superlink --port <port>"
    proc = subprocess.Popen([sys.executable, "-c", parent, "flower-superlink", "--port", str(port)],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        with FlowerCpuSampler(str(port), interval=0.1) as sampler:
            while time.monotonic() < deadline:
                snap = sampler.snapshot()
                if len(snap) == 2 and sum(cpu for _, cpu in snap.values()) >= 0.3:
                    break
                time.sleep(0.1)
        assert sampler.root() == proc.pid and set(snap) == set(descendants(proc.pid))
        assert snap[proc.pid][0] == "superlink"
        (burner,) = set(snap) - {proc.pid}
        assert 0.25 <= snap[burner][1] < 5 and snap[proc.pid][1] < 0.25
    finally:
        kill_tree(proc.pid)
    assert not alive(proc.pid)


def test_report_reads_old_overhead_files_and_places_the_clientapps_share():
    """Committed overhead.json files predate the clients' own timings; newer ones split the round by them."""
    from hasa_flwr.study.bench import format_report

    old = json.loads((ROOT / "benchmarks/overhead/9efbb48-server-one-thread-try1/overhead.json").read_text())
    lines = format_report(old)
    assert lines[2].startswith("overhead ratio: 1.14") and not any("ClientApp's own work" in x for x in lines)
    new = {**old, "clientapp_round_seconds": [2.1, 1.9, 2.4], "around_clientapp_s": 0.21}
    line = next(x for x in format_report(new) if "ClientApp's own work" in x)
    assert "2.100, 1.900, 2.400 s in rounds 2-4" in line and "train + evaluate: 1.821 s" in line and "0.210 s" in line
