"""Checkpoints and resume: a run killed mid-way and resumed equals an uninterrupted one exactly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from flower_procs import simulation_superlink

from hasa_flwr.study.processes import alive, cmdline, kill_tree, pids_with_env

from hasa_flwr.method.allocation import Allocation
from hasa_flwr.federation.checkpoint import (LATEST, ResumeError, allocation_from_record, allocation_record, claim,
                                  read_checkpoint, release, write_checkpoint)
from hasa_flwr.study.launch import flwr_run

RUN = {"num-server-rounds": 5, "embed-dim": 16, "hidden-dim": 32, "fraction-train": 0.6, "save-model": False}


def test_checkpoints_are_atomic_pruned_and_locked(tmp_path):
    import numpy as np

    from hasa_flwr.federation.config import settings_from_run_config
    from hasa_flwr.study.launch import app_defaults
    from hasa_flwr.federation.run_models import meta_for

    settings = settings_from_run_config(app_defaults(ROOT))
    state = settings.build(12).state_dict()
    meta = meta_for(settings, num_classes=12, input_shape=None, vocab=[str(i) for i in range(12)], clients=[],
                    run_id=1)
    alloc = Allocation(np.array([0.3, 0.7]), 0.5, 0.5, 0.5, 2, np.array([0.0, 1.0]), np.array([0.1, 0.2]))
    assert allocation_from_record(json.loads(json.dumps(allocation_record(alloc)))).__repr__() == alloc.__repr__()
    with pytest.raises(ResumeError, match="no checkpoint in"):
        read_checkpoint(tmp_path)
    claim(tmp_path)
    for r in (1, 2, 3):
        write_checkpoint(tmp_path, r, {k: v + r for k, v in state.items()}, meta, {"round": r})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("round-*")) == ["round-0002", "round-0003"]
    assert not list(root.glob(".*tmp*")) and (root / LATEST).read_text().strip() == "round-0003"
    cp = read_checkpoint(tmp_path)
    assert cp.round == 3 and all(torch.equal(cp.state[k], v + 3) for k, v in state.items())
    # another live process holds the folder: a resume must not write into it
    (root / "lock").write_text(f"{os.getppid()} {os.uname().nodename}\n")
    with pytest.raises(ResumeError, match=f"still being written by process {os.getppid()}"):
        claim(tmp_path)
    (root / "lock").write_text("999999999 " + os.uname().nodename + "\n")  # a dead writer
    claim(tmp_path)
    # an exited writer its parent has not reaped yet (a zombie) writes nothing more either
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (root / "lock").write_text(f"{child.pid} {os.uname().nodename}\n")
    claim(tmp_path)
    child.wait()
    # a complete run lets go of its folder; release never removes another writer's lock
    release(tmp_path)
    assert not (root / "lock").exists()
    (root / "lock").write_text(f"{os.getppid()} {os.uname().nodename}\n")
    release(tmp_path)
    assert (root / "lock").exists()


def kill_server(env) -> None:
    """The server machine dies: its ServerApp (in flwr-simulation) and SuperLink at once, before anything
    else. Killing the SuperLink first and the rest one by one let Ray's actors die before the ServerApp
    now and then; it then aggregated round 3 from the replies that had arrived and checkpointed that,
    which is a different run (seen once in CI)."""
    for pid in pids_with_env(f"FLWR_HOME={env.home}"):
        if "flwr-simulation" in cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    os.kill(env.pid, signal.SIGKILL)


def stop_everything(env) -> None:
    """The SuperLink, and what it leaves running when killed (flwr-simulation, Ray), by PID."""
    for pid in [env.pid, *pids_with_env(f"FLWR_HOME={env.home}")]:
        if alive(pid):
            kill_tree(pid)


def test_a_run_killed_in_round_3_resumes_to_the_uninterrupted_result(superlink, tmp_path):
    full = flwr_run(ROOT, {**RUN, "results-dir": str(tmp_path / "full")}, num_supernodes=7, env=superlink,
                    log=(tmp_path / "full.log").open("w"), timeout=600)
    assert full.results is not None, (tmp_path / "full.log").read_text()[-3000:]

    with simulation_superlink() as env:
        results_dir = tmp_path / "killed"
        holder = {}

        def go():
            with (tmp_path / "killed.log").open("w") as log:
                holder["outcome"] = flwr_run(ROOT, {**RUN, "results-dir": str(results_dir)}, num_supernodes=7,
                                             env=env, log=log, timeout=600)
        thread = threading.Thread(target=go)
        thread.start()
        deadline = time.monotonic() + 300
        latest = None
        while time.monotonic() < deadline and latest is None:  # round 2 is checkpointed: round 3 is running
            found = list(results_dir.glob("*/checkpoints/latest"))
            if found and found[0].read_text().strip() == "round-0002":
                latest = found[0]
            time.sleep(0.05)
        try:
            assert latest is not None, (tmp_path / "killed.log").read_text()[-3000:]
            kill_server(env)
        finally:
            stop_everything(env)
            thread.join(timeout=120)
        run_dir = latest.parent.parent
        assert not (run_dir / "results.json").exists()
        assert read_checkpoint(run_dir).round in (2, 3)

    with simulation_superlink() as env:
        try:
            proc = subprocess.run([sys.executable, "-m", "hasa_flwr.cli", "run", str(ROOT), "--resume", str(run_dir)],
                                  env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
            assert f"results: {run_dir / 'results.json'}" in proc.stdout
        finally:
            stop_everything(env)

    a, b = json.loads(full.results.read_text()), json.loads((run_dir / "results.json").read_text())
    keys = ("partition_id", "name", "score", "width", "accuracy", "top3", "loss", "full_width_accuracy")
    assert [[c[k] for k in keys] for c in a["clients"]] == [[c[k] for k in keys] for c in b["clients"]]
    hist = ("round", "mean", "worst", "tail", "accuracies", "trained", "train_loss", "clients")
    assert [[h[k] for k in hist] for h in a["history"]] == [[h[k] for k in hist] for h in b["history"]]
    assert b["summary"] == a["summary"] and len(b["resumes"]) == 1 and b["resumes"][0]["after_round"] in (2, 3)

    # killed after its final checkpoint, before results.json: the resume has no round left to run and
    # still writes the run's results (each client's last evaluation is in the checkpoint)
    done = tmp_path / "done"
    shutil.copytree(full.results.parent, done)
    (done / "results.json").unlink()
    with simulation_superlink() as env:
        try:
            proc = subprocess.run([sys.executable, "-m", "hasa_flwr.cli", "run", str(ROOT), "--resume", str(done)],
                                  env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        finally:
            stop_everything(env)
    c = json.loads((done / "results.json").read_text())
    assert [[x[k] for k in keys] for x in a["clients"]] == [[x[k] for k in keys] for x in c["clients"]]
    assert [[h[k] for k in hist] for h in a["history"]] == [[h[k] for k in hist] for h in c["history"]]
    assert c["summary"] == a["summary"] and c["resumes"] == [{"run_id": c["resumes"][0]["run_id"], "after_round": 5}]


def test_resume_refuses_a_changed_config_or_a_folder_without_checkpoints(tmp_path, capsys):
    from hasa_flwr.federation.checkpoint import Checkpoint
    from hasa_flwr.federation.config import settings_from_run_config
    from hasa_flwr.study.launch import app_defaults
    from hasa_flwr.federation.phases import check_resumable

    from hasa_flwr.cli import main

    assert main(["run", str(ROOT), "--resume", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint in" in err[0] and "Traceback" not in err[0]
    rc = app_defaults(ROOT)
    recorded = Checkpoint(2, {}, {"run_config": settings_from_run_config(rc).to_dict()})
    check_resumable(settings_from_run_config({**rc, "round-timeout": 60.0, "results-dir": "/x"}), recorded)
    with pytest.raises(ResumeError, match=r"differs from the checkpointed run's \(lr: 0.02 then, 0.1 now\)"):
        check_resumable(settings_from_run_config({**rc, "lr": 0.1}), recorded)
    older = {k: v for k, v in recorded.meta["run_config"].items() if k not in ("size_unit", "score_histogram")}
    check_resumable(settings_from_run_config(rc), Checkpoint(2, {}, {"run_config": older}))  # written before them
    with pytest.raises(ResumeError, match=r"\(size_unit: 'samples' then, 'titles' now\)"):
        check_resumable(settings_from_run_config({**rc, "size-unit": "titles"}), Checkpoint(2, {}, {"run_config": older}))
