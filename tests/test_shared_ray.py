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
                        env=env)
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
