"""`hasa sweep --shared-ray`: every run of a sweep on one local Ray, stopped at the end."""

import json
from pathlib import Path

from conftest import ROOT

from hasa_flwr.study.processes import MARKER, marked_pids
from hasa_flwr.study.shared_ray import shared_ray
from hasa_flwr.study.sweep import sweep


def test_a_sweep_on_one_shared_ray_and_nothing_left_running(tmp_path):
    out = tmp_path / "sweep"
    with shared_ray(num_cpus=2) as env:
        value = env[MARKER]
        outcome = sweep(ROOT, out, preset=None, strategies=["uniform", "hasa"], seeds=[0], progress=False,
                        sets={"num-server-rounds": 1, "embed-dim": 8, "hidden-dim": 16, "save-model": False},
                        env=env, run_timeout=600)
        assert not outcome.failed and len(outcome.done) == 2
        # both runs' ClientApp actors ran on the shared Ray: its one session holds their workers' logs
        logs = Path(env["RAY_TMPDIR"]) / "session_latest" / "logs"
        actors = [p for p in logs.glob("worker-*.out") if "ClientAppActor" in p.read_text(errors="replace")]
        assert len(actors) >= 2, sorted(p.name for p in logs.iterdir())
        assert marked_pids(value)  # Ray and the SuperLink are still up for further runs
    assert marked_pids(value) == []  # and stopped at the end
    runs = [json.loads((out / s / "seed-0" / "results.json").read_text()) for s in ("uniform", "hasa")]
    assert [r["strategy"] for r in runs] == ["uniform", "hasa"] and all(r["history"] for r in runs)


def test_shared_ray_refuses_parallel_jobs(tmp_path, capsys):
    from hasa_flwr.cli import main

    assert main(["sweep", "--app", str(ROOT), "--shared-ray", "--jobs", "2", "--out", str(tmp_path)]) != 0
    assert "--shared-ray runs one run at a time" in capsys.readouterr().err


def test_a_sweep_stopped_with_sigterm_stops_its_ray_and_superlink(tmp_path):
    """`kill <pid>` (or a job scheduler) stops a sweep like Ctrl-C does: Ray's daemons run in their
    own session, so only the sweep's own clean-up can stop them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from hasa_flwr.study.processes import descendants, kill_tree

    out = tmp_path / "sweep"
    sweep_proc = subprocess.Popen([sys.executable, "-m", "hasa_flwr.cli", "sweep", "--app", str(ROOT), "--out", str(out),
                                   "--strategies", "uniform", "--seeds", "0", "--shared-ray", "--no-progress",
                                   "--set", "num-server-rounds=50"], cwd=ROOT, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=(tmp_path / "sweep.err").open("w"))
    value = None
    try:
        deadline = time.monotonic() + 240
        while value is None and time.monotonic() < deadline and sweep_proc.poll() is None:
            time.sleep(1)
            for pid in descendants(sweep_proc.pid):  # the flwr CLI of the first run carries the marker
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                found = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(MARKER.encode() + b"=")]
                if found and (out / "uniform" / "seed-0" / "flwr.log").exists():
                    value = found[0]
        assert value is not None, "the sweep's first run never started"
        assert marked_pids(value)
        os.kill(sweep_proc.pid, signal.SIGTERM)
        sweep_proc.wait(timeout=120)  # (stderr goes to a file: a pipe nobody reads while polling could fill)
        err = (tmp_path / "sweep.err").read_text()
        assert sweep_proc.returncode == 130, err
        assert "interrupted; re-run the same command to resume" in err
        assert marked_pids(value) == []
    finally:
        kill_tree(sweep_proc.pid)
        if value is not None:
            from hasa_flwr.study.processes import stop_marked
            stop_marked(value, 3.0)
