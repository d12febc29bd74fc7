"""`hasa sweep`: resumability with a fake runner, and one small real sweep through `flwr run`."""

import json
import os
from pathlib import Path

import pytest
from conftest import ROOT

from hasa_flwr.cli import main
from hasa_flwr.federation.config import STRATEGIES, settings_from_run_config
from hasa_flwr.study.launch import RunOutcome
from hasa_flwr.method.metrics import summarize
from hasa_flwr.study.report import write_report
from hasa_flwr.study.sweep import RunFailed, SweepError, calibration_jobs, parse_seeds, parse_strategies, sweep

SMALL = {"num-server-rounds": 1, "embed-dim": 16, "hidden-dim": 32}


class FakeRunner:
    """Writes a results.json the way the ServerApp does (<results-dir>/<run-id>/results.json)."""

    def __init__(self, fail_on=None, empty_on=None):
        self.calls = []
        self.fail_on = fail_on
        self.empty_on = empty_on

    def __call__(self, config, *, num_supernodes, federation_config="", log=None):
        settings = settings_from_run_config(config)
        self.calls.append((settings.strategy, settings.seed, num_supernodes))
        run_id = len(self.calls)
        log.write("round 1: mean accuracy 0.1000, worst 0.0500 (7 clients)\n")
        if (settings.strategy, settings.seed) == self.fail_on:
            return RunOutcome(run_id, None, "node 3 failed in train: boom", 0)
        accs = [0.1 + 0.01 * settings.seed + 0.001 * i for i in range(settings.num_clients)]
        res = {"config": settings.to_dict(), "strategy": settings.strategy, "seed": settings.seed,
               "clients": [{"partition_id": i, "name": f"c{i}", "n_train": 10, "n_test": 5, "score": 0.0,
                            "rank": 0.0, "width": 0.5, "accuracy": a, "top3": a, "loss": 1.0,
                            "full_width_accuracy": a} for i, a in enumerate(accs)],
               "summary": None if (settings.strategy, settings.seed) == self.empty_on else summarize(accs),
               "history": [{"round": 1, "train_loss": 1.0, "mean": 0.1, "worst": 0.05, "seconds": 0.5}]}
        path = Path(config["results-dir"]) / str(run_id) / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(res))
        return RunOutcome(run_id, path, None, 0)


def run_fake(out, runner, strategies=("uniform", "hasa"), seeds=(0, 1), sets=None, **kw):
    return sweep(ROOT, out, preset=None, strategies=list(strategies), seeds=list(seeds),
                 sets={**SMALL, **(sets or {})}, runner=runner, progress=False, command="hasa sweep (test)", **kw)


def test_parse_sets():
    from hasa_flwr.study.sweep import parse_sets

    assert parse_sets(["score=loss", "lr=0.1", 'width-cap="0.8,0.5"', "scaler=true", "num-server-rounds=2"]) == {
        "score": "loss", "lr": 0.1, "width-cap": "0.8,0.5", "scaler": True, "num-server-rounds": 2}
    with pytest.raises(ValueError, match="not key=value"):
        parse_sets(["lr"])


def test_parse_seeds_and_strategies():
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,2, 5-6") == [0, 2, 5, 6]
    with pytest.raises(ValueError):
        parse_seeds("a-b")
    assert parse_strategies(None)[0] == "uniform" and len(parse_strategies("")) == len(STRATEGIES) == 10
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_strategies("uniform,nope")


def test_sweep_layout_manifest_and_resume(tmp_path):
    out = tmp_path / "runs"
    runner = FakeRunner()
    outcome = run_fake(out, runner)
    assert sorted(outcome.done) == ["hasa/seed-0", "hasa/seed-1", "uniform/seed-0", "uniform/seed-1"]
    assert [c[:2] for c in runner.calls] == [("uniform", 0), ("hasa", 0), ("uniform", 1), ("hasa", 1)]
    assert all(n == 7 for *_, n in runner.calls)  # num_supernodes = num-clients
    for s in ("uniform", "hasa"):
        for k in (0, 1):
            d = out / s / f"seed-{k}"
            assert json.loads((d / "results.json").read_text())["seed"] == k
            assert "round 1: mean accuracy" in (d / "flwr.log").read_text()
            assert not (d / ".flwr-results").exists()
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["command"] == "hasa sweep (test)" and manifest["seeds"] == [0, 1]
    assert manifest["hardware"]["cpu_count"] >= 1 and manifest["hardware"]["torch_device"] == "cpu"
    assert manifest["runs"]["hasa/seed-1"]["status"] == "done"

    # resume: finished runs are skipped, only the new seed runs
    again = FakeRunner()
    outcome = run_fake(out, again, seeds=(0, 1, 2))
    assert sorted(outcome.skipped) == ["hasa/seed-0", "hasa/seed-1", "uniform/seed-0", "uniform/seed-1"]
    assert [c[:2] for c in again.calls] == [("uniform", 2), ("hasa", 2)]
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["seeds"] == [0, 1, 2] and len(manifest["invocations"]) == 2
    summary = json.loads(write_report(out)["summary.json"].read_text())
    assert summary["strategies"]["hasa"]["seeds"] == [0, 1, 2]


def test_config_mismatch_is_an_error(tmp_path):
    out = tmp_path / "runs"
    run_fake(out, FakeRunner(), seeds=(0,))
    runner = FakeRunner()
    with pytest.raises(SweepError, match=r"different config \(lr: recorded 0.02, now 0.1\).*new --out folder"):
        run_fake(out, runner, seeds=(0,), sets={"lr": 0.1})
    assert runner.calls == []
    # operational settings (timeouts) do not count as a different config
    outcome = run_fake(out, FakeRunner(), seeds=(0,), sets={"round-timeout": 99.0})
    assert len(outcome.skipped) == 2
    # a results.json recorded before a setting existed counts as that setting's default
    path = out / "uniform" / "seed-0" / "results.json"
    res = json.loads(path.read_text())
    del res["config"]["score_values"]
    path.write_text(json.dumps(res))
    assert len(run_fake(out, FakeRunner(), seeds=(0,)).skipped) == 2
    with pytest.raises(SweepError, match="score_values: recorded"):
        run_fake(out, FakeRunner(), seeds=(0,), sets={"score": "given", "score-values": "1,2,3,4,5,6,7"})


def test_failed_run_stops_or_keeps_going(tmp_path):
    runner = FakeRunner(fail_on=("hasa", 0))
    with pytest.raises(RunFailed, match="hasa/seed-0 failed: node 3 failed in train: boom"):
        run_fake(tmp_path / "a", runner)
    assert [c[:2] for c in runner.calls] == [("uniform", 0), ("hasa", 0)]
    assert not (tmp_path / "a" / "hasa" / "seed-0" / "results.json").exists()
    runner = FakeRunner(fail_on=("hasa", 0))
    outcome = run_fake(tmp_path / "b", runner, keep_going=True)
    assert outcome.failed == [("hasa/seed-0", "node 3 failed in train: boom")] and len(outcome.done) == 3
    manifest = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert manifest["runs"]["hasa/seed-0"]["status"] == "failed"
    # the failed run is retried on resume
    retry = FakeRunner()
    run_fake(tmp_path / "b", retry)
    assert [c[:2] for c in retry.calls] == [("hasa", 0)]


def test_run_without_evaluation_counts_as_failed(tmp_path):
    outcome = run_fake(tmp_path, FakeRunner(empty_on=("uniform", 1)), keep_going=True)
    assert outcome.failed == [("uniform/seed-1", "results.json has no evaluated client")]
    assert not (tmp_path / "uniform" / "seed-1" / "results.json").exists()


def test_bad_settings_fail_before_any_run(tmp_path):
    runner = FakeRunner()
    with pytest.raises(ValueError, match="unknown run-config key"):
        run_fake(tmp_path, runner, sets={"nope": 1})
    with pytest.raises(ValueError, match="budget"):
        run_fake(tmp_path, runner, sets={"budget": 0.95})
    assert runner.calls == [] and not (tmp_path / "sweep.json").exists()


def test_calibration_jobs_are_feasible():
    from hasa_flwr.study.launch import app_defaults, merge_config, preflight

    for job in calibration_jobs(0.5, [0]):
        config = merge_config(app_defaults(ROOT), {**job.overrides, "seed": job.seed, **SMALL})
        settings = preflight(config)
        assert settings.allocation == "uniform" and settings.strategy == "uniform"
    assert [j.name for j in calibration_jobs(0.5, [0, 1])] == ["width-1.0", "width-0.5"] * 2


def test_calibrate_runs_both_widths_in_a_new_folder(tmp_path):
    from hasa_flwr.study.sweep import calibrate

    runner = FakeRunner()
    outcome = calibrate(ROOT, tmp_path / "calib", preset=None, seeds=[0, 1], sets={**SMALL, "budget": 0.5},
                        runner=runner, progress=False, command="hasa calibrate (test)", jobs=1)
    assert sorted(outcome.done) == ["width-0.5/seed-0", "width-0.5/seed-1", "width-1.0/seed-0", "width-1.0/seed-1"]
    manifest = json.loads((tmp_path / "calib" / "sweep.json").read_text())
    assert manifest["kind"] == "calibration" and manifest["jobs"] == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path), "--strategies", "uniform,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hasa: error: unknown strategy 'bogus'")
    assert main(["report", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    assert_usage_error(main, ["sweep", "--out", str(tmp_path), "--run-timeout", "0"], capsys,
                       "--run-timeout: expected a positive number of seconds, got '0'")


def assert_usage_error(main, argv, capsys, words):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and words in err[0], err


def test_real_sweep_through_flower(superlink, tmp_path):
    """2 strategies x 1 seed, 1 round, tiny model, through the real `flwr run` and simulation engine."""
    from hasa_flwr.study.sweep import default_runner

    out = tmp_path / "sweep"
    outcome = sweep(ROOT, out, preset=None, strategies=["uniform", "hasa"], seeds=[0], sets=SMALL,
                    runner=default_runner(ROOT, env=superlink, timeout=600), progress=False)
    logs = {k: (out / k / "flwr.log").read_text()[-3000:] for k in ("uniform/seed-0", "hasa/seed-0")}
    assert outcome.done == ["uniform/seed-0", "hasa/seed-0"], logs
    for k, text in logs.items():  # each run's stream ends at the results line: Flower's teardown overlaps the next
        assert text.rstrip().splitlines()[-1] == f"results: {out / k / '.flwr-results'}/" + \
            f"{json.loads((out / k / 'results.json').read_text())['run_id']}/results.json", text[-500:]
    for k in outcome.done:
        res = json.loads((out / k / "results.json").read_text())
        assert res["strategy"] == k.split("/")[0] and res["config"]["num_rounds"] == 1
        assert len(res["clients"]) == 7 and res["summary"]["mean"] > 0
    hasa = json.loads((out / "hasa" / "seed-0" / "results.json").read_text())
    assert len({round(c["width"], 6) for c in hasa["clients"]}) > 1
    paths = write_report(out)
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["strategies"]["hasa"]["paired_vs_uniform"]["n"] == 1
    # `hasa bench overhead` times a plain loop that must do exactly what the Flower run did
    from hasa_flwr.study.bench import plain_loop
    from hasa_flwr.federation.config import Settings

    import torch

    threads = torch.get_num_threads()
    try:  # Ray gives each actor 2 CPUs (torch threads) by default
        plain = plain_loop(Settings(**{**hasa["config"], "width_caps": tuple(hasa["config"]["width_caps"])}),
                           [c["width"] for c in hasa["clients"]], num_threads=2)
    finally:
        torch.set_num_threads(threads)
    assert plain.accuracies == pytest.approx([c["accuracy"] for c in hasa["clients"]], abs=1e-12)
    # resuming is a no-op that never calls flwr
    again = sweep(ROOT, out, preset=None, strategies=["uniform", "hasa"], seeds=[0], sets=SMALL,
                  runner=FakeRunner(), progress=False)
    assert again.done == [] and len(again.skipped) == 2


def test_label_puts_an_ablation_beside_its_strategy(tmp_path):
    out = tmp_path / "runs"
    run_fake(out, FakeRunner(), seeds=(0,))
    runner = FakeRunner()
    outcome = run_fake(out, runner, strategies=("hasa",), seeds=(0, 1), sets={"aggregation": "selective"},
                       label="hasa-selective")
    assert outcome.done == ["hasa-selective/seed-0", "hasa-selective/seed-1"]
    assert [c[0] for c in runner.calls] == ["hasa", "hasa"]
    res = json.loads((out / "hasa-selective" / "seed-0" / "results.json").read_text())
    assert res["config"]["aggregation"] == "selective" and res["strategy"] == "hasa"
    assert json.loads((out / "hasa" / "seed-0" / "results.json").read_text())["config"]["aggregation"] == "full"
    with pytest.raises(ValueError, match="one strategy"):
        run_fake(out, FakeRunner(), label="x")
    with pytest.raises(ValueError, match="not a plain folder name"):
        run_fake(out, FakeRunner(), strategies=("hasa",), label="../x")


def test_jobs_run_at_once_on_their_own_share_of_the_cores(tmp_path, monkeypatch):
    """--jobs 2: two runs overlap in time, each with its own Ray sized to half the cores; the folder
    is the same as a sequential sweep's, and resuming skips every finished run."""
    import threading

    from hasa_flwr.study.sweep import job_resources

    active, peak, lock = [0], [0], threading.Lock()
    meet = threading.Barrier(2, timeout=60)  # each run waits for the other worker's: they overlap, whatever the load
    inner = FakeRunner()
    seen_configs = []

    def runner(config, *, num_supernodes, federation_config="", log=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            seen_configs.append(federation_config)
        meet.wait()
        try:
            return inner(config, num_supernodes=num_supernodes, federation_config=federation_config, log=log)
        finally:
            with lock:
                active[0] -= 1

    import hasa_flwr.study.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "superlink_started", lambda: True)  # fake runs start no SuperLink to wait for
    out = tmp_path / "runs"
    outcome = run_fake(out, runner, seeds=(0, 1, 2), jobs=2)
    assert len(outcome.done) == 6 and not outcome.failed and peak[0] == 2
    share = max(1, (os.cpu_count() or 1) // 2)
    assert all(f"init-args-num-cpus={share}" in c and "num-supernodes=7" in c for c in seen_configs)
    assert sorted(p.parent.name + "/" + p.parent.parent.name for p in out.glob("*/seed-*/results.json")) == sorted(
        f"seed-{k}/{s}" for k in (0, 1, 2) for s in ("uniform", "hasa"))
    assert json.loads((out / "sweep.json").read_text())["jobs"] == 2
    assert run_fake(out, runner, seeds=(0, 1, 2), jobs=2).skipped and peak[0] == 2
    assert job_resources("", 7, 1) == "num-supernodes=7"


def test_sweep_reports_its_throughput(tmp_path):
    """`hasa sweep` ends with runs/hour and each run's time outside its rounds (run wall - round seconds)."""
    outcome = run_fake(tmp_path / "s", FakeRunner())
    assert sorted(outcome.outside) == sorted(outcome.done) and len(outcome.done) == 4
    for key in outcome.done:
        assert outcome.outside[key] == pytest.approx(outcome.seconds[key] - 0.5)
    assert outcome.wall >= sum(outcome.seconds.values())
    assert outcome.timing().startswith(f"4 run(s) in {outcome.wall:.1f} s (")
    assert run_fake(tmp_path / "s", FakeRunner()).timing() is None  # all skipped: nothing was timed


def test_resume_refuses_another_thread_count(tmp_path):
    """Each run records its federation config; resuming a folder with another client-resources-num-cpus
    (what `--jobs` changes) would pair runs trained with different torch thread counts: refused, before
    anything runs or is written."""
    from hasa_flwr.study.sweep import client_cpus

    assert client_cpus("num-supernodes=7") == 2 and client_cpus("client-resources-num-cpus=1 x=2") == 1
    out = tmp_path / "runs"
    run_fake(out, FakeRunner(), seeds=(0,))
    recorded = json.loads((out / "sweep.json").read_text())["runs"]
    assert recorded["hasa/seed-0"]["federation_config"] == "num-supernodes=7"
    before = (out / "sweep.json").read_text()
    runner = FakeRunner()
    with pytest.raises(SweepError, match="client-resources-num-cpus=2 .* would get 1"):
        run_fake(out, runner, seeds=(0, 1), federation_config="client-resources-num-cpus=1")
    assert runner.calls == [] and (out / "sweep.json").read_text() == before and not (out / "hasa" / "seed-1").exists()
    outcome = run_fake(out, runner, seeds=(0, 1), federation_config="client-resources-num-cpus=2")
    assert outcome.done == ["uniform/seed-1", "hasa/seed-1"]


def test_resume_refuses_another_shared_config(tmp_path):
    """sweep.json keeps the first invocation's shared config: adding seeds or strategies with another
    lr is refused (no finished run of theirs is compared), the same settings resume; a labelled
    ablation's own --set values are not shared; a sweep.json from before it was kept is not checked."""
    out = tmp_path / "runs"
    run_fake(out, FakeRunner(), strategies=("uniform",), seeds=(0,))
    assert json.loads((out / "sweep.json").read_text())["shared_config"]["lr"] == 0.02
    runner = FakeRunner()
    with pytest.raises(SweepError, match=r"another config \(lr: recorded 0.02, now 0.1\): use another --out"):
        run_fake(out, runner, strategies=("hasa",), seeds=(1,), sets={"lr": 0.1})
    assert runner.calls == [] and not (out / "hasa").exists()
    assert run_fake(out, FakeRunner(), strategies=("hasa",), seeds=(1,)).done == ["hasa/seed-1"]
    labelled = run_fake(out, FakeRunner(), strategies=("hasa",), seeds=(0,), sets={"lr": 0.1}, label="hasa-lr")
    assert labelled.done == ["hasa-lr/seed-0"]
    manifest = json.loads((out / "sweep.json").read_text())
    del manifest["shared_config"]
    (out / "sweep.json").write_text(json.dumps(manifest))
    assert run_fake(out, FakeRunner(), strategies=("hasa",), seeds=(2,), sets={"lr": 0.1}).done == ["hasa/seed-2"]


def test_sweep_json_has_no_fixed_temp_name(tmp_path):
    """Two processes on one folder must not share a temp file: a leftover at the old fixed name
    (here a folder, which a write would fail on) is never touched."""
    out = tmp_path / "runs"
    (out / ".sweep.json.tmp").mkdir(parents=True)
    assert len(run_fake(out, FakeRunner(), seeds=(0,)).done) == 2
    assert json.loads((out / "sweep.json").read_text())["runs"]["hasa/seed-0"]["status"] == "done"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".sweep.json.tmp"]


class StoppableRunner:
    """Starts a run (its id in the log) and waits until `flwr_stop` stops it; records the order."""

    def __init__(self, live_before_interrupt=None):
        import threading

        self.started, self.stopped = [], []
        self.lock, self.events = threading.Lock(), {}
        self.live_before_interrupt = live_before_interrupt

    def stop(self, run_id):
        self.stopped.append(run_id)
        self.events[run_id].set()

    def __call__(self, config, *, num_supernodes, federation_config="", log=None):
        import signal
        import threading

        with self.lock:
            self.started.append((config["strategy"], config["seed"]))
            run_id = len(self.started)
            self.events[run_id] = threading.Event()
        log.write(f"Successfully started run {run_id}\n")
        if run_id == self.live_before_interrupt:  # one Ctrl-C (to the main thread) once all are queued
            threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
        stopped = self.events[run_id].wait(5)
        return RunOutcome(run_id, None, None if stopped else "never stopped", 1)


def test_ctrl_c_with_jobs_stops_live_runs_and_starts_no_queued_one(tmp_path, monkeypatch):
    """--jobs 2, 6 runs: Ctrl-C while 2 are live stops both on the SuperLink, records them as
    interrupted (not failed), starts none of the 4 queued ones and still ends the sweep."""
    import signal

    import hasa_flwr.study.sweep as sweep_module

    # a terminal's Ctrl-C raises KeyboardInterrupt; pytest may run with SIGINT ignored (a background job)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = StoppableRunner(live_before_interrupt=2)
    monkeypatch.setattr(sweep_module, "flwr_stop", runner.stop)
    monkeypatch.setattr(sweep_module, "superlink_started", lambda: True)  # no SuperLink to wait for
    out = tmp_path / "runs"
    try:
        with pytest.raises(KeyboardInterrupt):
            run_fake(out, runner, seeds=(0, 1, 2), jobs=2)  # returns once its workers have ended
    finally:
        signal.signal(signal.SIGINT, old)
    assert sorted(runner.started) == [("hasa", 0), ("uniform", 0)] and sorted(runner.stopped) == [1, 2]
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert {k: r["status"] for k, r in runs.items()} == {"uniform/seed-0": "interrupted", "hasa/seed-0": "interrupted"}
    assert not list(out.glob("*/seed-*/.flwr-results"))


def test_ctrl_c_one_at_a_time_is_recorded_as_interrupted(tmp_path):
    """The runner (flwr_run) stops its own run and re-raises: the sweep records it and stops."""
    inner = FakeRunner()

    def runner(config, **kw):
        if config["strategy"] == "hasa":
            kw["log"].write("Successfully started run 9\n")
            raise KeyboardInterrupt
        return inner(config, **kw)

    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        run_fake(out, runner, seeds=(0, 1))
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [c[:2] for c in inner.calls] == [("uniform", 0)]
    assert runs["uniform/seed-0"]["status"] == "done" and runs["hasa/seed-0"] == {
        "status": "interrupted", "seconds": runs["hasa/seed-0"]["seconds"], "run_id": 9}
