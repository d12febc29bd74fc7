"""Sweeps: one preset over strategies x seeds, every run through the Flower simulation engine.

Layout: ``<out>/<name>/seed-<k>/results.json`` (+ ``flwr.log`` next to it) and ``<out>/sweep.json``
(command lines, hardware, per-run wall times). A sweep is resumable: a run whose results.json exists
is skipped, provided its recorded config matches what would be run now; otherwise it is an error
(mixing configs in one folder would silently corrupt the paired statistics). sweep.json keeps the
first invocation's shared config (`shared_config`), so a later one that adds other seeds or
strategies with other settings is refused too.

Runs are sequential by default (a simulation already uses every core); ``--jobs N`` runs N at once,
each on its own Ray with 1/N of the cores, all through one local SuperLink (1/N of the cores is
1/N of each client's torch threads, which changes float results: see `client_cpus`; a folder keeps
one thread count). A failed run stops the sweep with its error line unless ``keep_going`` is set,
in which case the failures are listed at the end. Ctrl-C stops every run under way (and a queued run
never starts); they are recorded as interrupted, and re-running the same command resumes.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
import threading
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hasa_flwr.data.atomic import write_text_atomic
from hasa_flwr.federation.config import STRATEGIES, Settings, settings_from_run_config, upgrade_recorded
from hasa_flwr.study.launch import (RUN_ID, RunOutcome, app_defaults, app_snapshot, flwr_run, flwr_stop, merge_config,
                                   preflight, read_preset)

# Settings fields that do not change what a run computes: ignored when checking a finished run.
LABEL = re.compile(r"[A-Za-z0-9._-]+")
OPERATIONAL = ("results_dir", "data_path", "wait_seconds", "round_timeout", "save_model", "one_exchange")
ROUND_LINE = re.compile(r"round (\d+): mean accuracy ([0-9.]+)")


class SweepError(RuntimeError):
    """A sweep cannot go on; the message says why and what to do."""


class RunFailed(SweepError):
    """A Flower run ended without results.json (its error line is in the message)."""


Runner = Callable[..., RunOutcome]


@dataclass(frozen=True)
class Job:
    """One run: a folder name (strategy or calibration variant), a seed and its own overrides."""

    name: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.name}/seed-{self.seed}"


@dataclass
class SweepOutcome:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (key, error line)
    seconds: dict[str, float] = field(default_factory=dict)
    outside: dict[str, float] = field(default_factory=dict)  # a finished run's seconds outside its rounds
    wall: float = 0.0  # from the first run's start to the last one's end

    def timing(self) -> str | None:
        """Throughput of the runs done here: what `hasa sweep` prints at the end."""
        if not self.done or self.wall <= 0:
            return None
        outside = sum(self.outside[k] for k in self.done) / len(self.done)
        return (f"{len(self.done)} run(s) in {self.wall:.1f} s ({3600 * len(self.done) / self.wall:.0f} runs/hour); "
                f"per run {outside:.1f} s outside the rounds (CLI, simulation start, actors, statistics rounds, "
                "teardown)")


# ----------------------------------------------------------------------------- parsing helpers


def parse_seeds(text: str) -> list[int]:
    """'0-9', '3', '0,2,5' or '0-2,7' -> sorted unique seeds."""
    seeds: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"seeds '{text}' not understood: use e.g. 0-9, 0,1,2 or 0-2,7")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"seed range '{part}' is empty: write it low-high, e.g. 0-9")
        seeds.update(range(lo, hi + 1))
    if not seeds:
        raise ValueError("no seeds given: use e.g. --seeds 0-9")
    return sorted(seeds)


def parse_strategies(text: str | None) -> list[str]:
    """Comma-separated strategy names (default: every preset in config.STRATEGIES)."""
    if not text:
        return list(STRATEGIES)
    names = [s for s in str(text).replace(" ", "").split(",") if s]
    for s in names:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy '{s}': choose from {', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"strategy listed twice in '{text}'")
    return names


def parse_sets(items: list[str], option: str = "--set") -> dict[str, Any]:
    """``--set k=v`` pairs with TOML values; a value that is not valid TOML is taken as a string
    (``--set score=loss`` = ``--set 'score="loss"'``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} '{item}' is not key=value")
        try:
            out[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value.strip()
        if not isinstance(out[key], (bool, int, float, str)):
            raise ValueError(f"{option} {key}: only bool, int, float and string values are allowed, got {value!r}")
    return out


PAIR = re.compile(r"""[^\s=]+=(?:'[^']*'|"[^"]*"|\S*)""")


def parse_pairs(text: str, option: str) -> dict[str, Any]:
    """Flower's ``--run-config "k=v k2='a b'"`` (several pairs in one string), each value read as
    by `parse_sets`: so ``strategy=hasa`` works unquoted, as with ``--set``."""
    pairs = PAIR.findall(text)
    rest = PAIR.sub("", text).strip()
    if rest:
        raise ValueError(f"{option} '{text}' is not key=value pairs: write e.g. {option} \"strategy='hasa' seed=3\"")
    return parse_sets(pairs, option)


# ----------------------------------------------------------------------------- configs


def base_config(app: Path, preset: str | None, sets: dict[str, Any]) -> dict[str, Any]:
    """App defaults <- preset <- --set, with a Medium data path pinned to an absolute file.

    The path is pinned because a reused local SuperLink keeps the environment it was started
    with: a later HASA_DATA_DIR would not reach the ClientApps.
    """
    overrides = {**(read_preset(preset) if preset else {}), **sets}
    defaults = app_defaults(app)
    config = merge_config(defaults, overrides)
    for key, value in overrides.items():  # 1 -> 1.0 where the app declares a float
        if isinstance(defaults[key], float) and isinstance(value, int) and not isinstance(value, bool):
            config[key] = float(value)
    return pin_paths(config)


def pin_paths(config: dict[str, Any]) -> dict[str, Any]:
    """Data and vocabulary paths made absolute (a relative one may live under $HASA_DATA_DIR)."""
    from hasa_flwr.data.files import resolve_path

    for key in ("data-path", "vocab-path"):
        if str(config.get(key, "")).strip():
            config[key] = str(resolve_path(str(config[key]), key))
    return config


def job_config(base: dict[str, Any], job: Job) -> dict[str, Any]:
    config = merge_config(base, {**job.overrides, "seed": job.seed})
    return config


def comparable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in OPERATIONAL}


def settings_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in fields(Settings) if f.default is not MISSING}


def differences(recorded: dict[str, Any], now: dict[str, Any], keys: Iterable[str],
                fallback: dict[str, Any] | None = None) -> list[str]:
    """'key: recorded a, now b' for each of ``keys`` whose values differ (a list equals its tuple)."""
    diffs = []
    for key in sorted(keys):
        a, b = recorded.get(key, (fallback or {}).get(key, "<missing>")), now.get(key, "<missing>")
        a, b = (tuple(x) if isinstance(x, list) else x for x in (a, b))
        if a != b:
            diffs.append(f"{key}: recorded {a!r}, now {b!r}")
    return diffs


def shown(diffs: list[str]) -> str:
    """The first three differences: an error stays one readable line."""
    return "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def config_difference(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Human-readable differences between a recorded results.json config and the planned one."""
    rec, exp = comparable(upgrade_recorded(recorded)), comparable(expected)
    # a key added after a run was recorded counts as its default there
    return differences(rec, exp, set(rec) | set(exp), settings_defaults())


def existing_result(run_dir: Path, expected: dict[str, Any]) -> bool:
    """True if ``run_dir`` holds a finished run with the expected config; SweepError if it holds a
    different one (the folder belongs to another sweep)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SweepError(f"{path} is unreadable ({type(err).__name__}): delete it to re-run that run") from err
    diffs = config_difference(recorded, expected)
    if diffs:
        raise SweepError(f"{path} was made with a different config ({shown(diffs)}): use a new --out folder, or the "
                         "same preset and --set values as before")
    return True


def shared_config(base: dict[str, Any], jobs: list[Job]) -> dict[str, Any]:
    """The run config every run in a folder shares: less operational keys, the seed and the keys a
    job sets itself (its strategy, a grid arm's values, a labelled ablation's --set values)."""
    own = {"seed", *(k.replace("_", "-") for k in OPERATIONAL), *(k for job in jobs for k in job.overrides)}
    return {k: v for k, v in base.items() if k not in own}


def check_shared_config(out: Path, shared: dict[str, Any]) -> None:
    """SweepError when ``out`` was started with another shared config (a sweep.json from before it
    was kept has none: then only finished runs are compared, by `existing_result`)."""
    path = out / "sweep.json"
    recorded = read_manifest(path).get("shared_config") if path.is_file() else None
    if not isinstance(recorded, dict):
        return
    # keys one side leaves to each job (or that the app added since) are not shared: not compared
    diffs = differences(recorded, shared, set(recorded) & set(shared))
    if diffs:
        raise SweepError(f"{out} holds runs of another config ({shown(diffs)}): use another --out folder, or the "
                         "same preset and --set values as before")


def strategy_jobs(strategies: list[str], seeds: list[int], label: str | None = None) -> list[Job]:
    """Seed-major order, so an interrupted sweep has complete seeds for every strategy.

    ``label`` names the folder of a one-strategy sweep (an ablation with --set values) so that it
    can sit beside the plain strategy, e.g. hasa-selective/ next to hasa/."""
    if label is not None:
        if len(strategies) != 1:
            raise ValueError(f"--label names the runs of one strategy, got {len(strategies)}: pass one --strategies")
        if not LABEL.fullmatch(label) or label.startswith("."):
            raise ValueError(f"--label '{label}' is not a plain folder name (letters, digits, '.', '_', '-')")
    return [Job(label or s, k, {"strategy": s}) for k in seeds for s in strategies]


# ----------------------------------------------------------------------------- provenance


def hardware() -> dict[str, Any]:
    import torch

    try:
        import flwr

        flwr_version = flwr.__version__
    except ImportError:  # pragma: no cover
        flwr_version = None
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": model,
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_device": "cpu",
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "flwr": flwr_version}


def git_commit(folder: Path) -> str | None:
    """The app's commit (with ``+dirty`` when its tracked files differ): which code made a result."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def command_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    return shlex.join(["hasa", *argv[1:]] if argv and Path(argv[0]).name in ("hasa", "cli.py") else argv)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic with a temp name of its own: two processes on one folder never share a temp file."""
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SweepError(f"{path} is unreadable ({type(err).__name__}): restore it, or use another --out folder") \
            from None


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def update_manifest(out: Path, meta: dict[str, Any], command: str, runs: bool = True,
                    started: str | None = None) -> dict[str, Any]:
    """sweep.json: the first invocation's settings, the command line, hardware and commit of every
    invocation that ran something (``runs``; a resume that finds everything done adds no entry).
    ``started`` names the invocation: a grid calls this once per seed, and records one entry."""
    path = out / "sweep.json"
    manifest = read_manifest(path) if path.is_file() else {}
    for key, value in meta.items():
        if key == "strategies":  # a resumed or extended sweep: the union, first-seen order
            manifest[key] = list(dict.fromkeys([*manifest.get(key, []), *value]))
        elif key == "seeds":
            manifest[key] = sorted(set(manifest.get(key, [])) | set(value))
        else:
            manifest.setdefault(key, value)
    manifest["command"] = command
    manifest["hardware"] = hardware()
    seen = manifest.setdefault("invocations", [])
    again = bool(started and seen and (seen[-1]["command"], seen[-1]["started"]) == (command, started))  # next seed
    if (runs or not seen) and not again:
        seen.append(
            {"command": command, "started": started or now_utc(),
             "overrides": meta.get("overrides"), "hardware": manifest["hardware"],
             "commit": git_commit(Path(meta["app"])) if meta.get("app") else None})
    manifest.setdefault("runs", {})
    write_json(path, manifest)
    return manifest


# ----------------------------------------------------------------------------- running


class LogTee:
    """File-like: writes the flwr output to a log file, reports round progress lines and
    remembers the run id (to stop the run on Ctrl-C); ``on_start`` sees the id as soon as it is known."""

    def __init__(self, path: Path, on_round: Callable[[int, float], None] | None = None,
                 on_start: Callable[[int], None] | None = None) -> None:
        self.file = path.open("w")
        self.on_round = on_round
        self.on_start = on_start
        self.run_id: int | None = None

    def write(self, text: str) -> int:
        if self.run_id is None and (m := RUN_ID.search(text)):
            self.run_id = int(m.group(1))
            if self.on_start is not None:
                self.on_start(self.run_id)
        if self.on_round is not None and (m := ROUND_LINE.search(text)):
            self.on_round(int(m.group(1)), float(m.group(2)))
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class FlwrRunner:
    """``launch.flwr_run`` on a snapshot of one app, taken at the first run (``launch.app_snapshot``:
    ~3 s less per run where the app folder holds a virtual environment) and removed at exit; each
    run's teardown overlaps with the next run's start (``until_results``)."""

    def __init__(self, app: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> None:
        self.app, self.env, self.timeout = Path(app), env, timeout
        self.snapshot: tempfile.TemporaryDirectory | None = None
        self.lock = threading.Lock()  # `--jobs N` calls it from N threads

    def __call__(self, config: dict[str, Any], **kw: Any) -> RunOutcome:
        with self.lock:
            if self.snapshot is None:
                snapshot = tempfile.TemporaryDirectory(prefix="hasa-app-")
                app_snapshot(self.app, Path(snapshot.name))
                self.snapshot = snapshot
        return flwr_run(Path(self.snapshot.name), config, env=self.env, timeout=self.timeout, until_results=True, **kw)


def default_runner(app: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> Runner:
    return FlwrRunner(app, env, timeout)


def with_supernodes(federation_config: str, num_clients: int) -> str:
    """``num-supernodes`` must equal num-clients; add it when only resources were given."""
    if "num-supernodes" in federation_config:
        return federation_config
    return f"num-supernodes={num_clients} {federation_config}".strip()


def job_resources(federation_config: str, num_clients: int, jobs: int) -> str:
    """Each of ``jobs`` concurrent runs gets its own Ray sized to its share of the cores (Flower sizes
    a run's actor pool from its whole Ray, so runs sharing one would wait for each other)."""
    config = with_supernodes(federation_config, num_clients)
    if jobs > 1 and "init-args-num-cpus" not in config:
        share = max(1, (os.cpu_count() or 1) // jobs)
        config += f" init-args-num-cpus={share}"
        if "client-resources-num-cpus" not in config:
            config += f" client-resources-num-cpus={share}"
    return config


def client_cpus(federation_config: str) -> float:
    """A simulated client's CPUs (Flower's default: 2), which Ray also makes its torch thread count
    (OMP_NUM_THREADS). Parallel kernels sum in a thread-dependent order, so the same run at 1 and 2
    threads agrees only until the last bits' differences grow (measured on Medium: identical for 8
    rounds, 0.8 points apart in the mean by round 40): runs to be compared must share it."""
    found = re.search(r"client-resources-num-cpus=([0-9.]+)", federation_config)
    return float(found.group(1)) if found else 2.0


def check_same_threads(out: Path, finished: list[str], federation_config: str) -> None:
    """SweepError when this folder's finished runs trained with another thread count than the pending
    ones would (a resume with another --jobs): their pairs would differ beyond the seed."""
    path = out / "sweep.json"
    recorded = read_manifest(path).get("runs", {}) if path.is_file() else {}
    now = client_cpus(federation_config)
    for key in finished:
        before = recorded.get(key, {}).get("federation_config")  # runs recorded before it was kept: unknown
        if before is not None and client_cpus(before) != now:
            raise SweepError(f"{key} in {out} trained with client-resources-num-cpus={client_cpus(before):g} (each "
                             f"client's torch threads) and the runs left would get {now:g}: results depend on the "
                             "thread count, so matched runs would differ beyond their seed; resume with the same "
                             f"--jobs, or pass --federation-config 'client-resources-num-cpus={client_cpus(before):g}'")


@dataclass
class Plan:
    """The jobs of one folder, checked: their run configs, the ones left and the finished ones."""

    configs: dict[str, dict[str, Any]]
    pending: list[Job]
    skipped: list[str]
    shared: dict[str, Any]


def plan_jobs(out: Path, base: dict[str, Any], jobs: list[Job], *, federation_config: str = "", parallel: int = 1,
              check: bool = True) -> Plan:
    """Validate every job and find the ones left, writing nothing: each error comes before any run.
    ``check`` adds the data + budget pre-flight (a second), once per folder name (strategy or arm)."""
    out = Path(out).absolute()
    configs = {job.key: job_config(base, job) for job in jobs}
    expected = {key: settings_from_run_config({**config, "results-dir": ""}).to_dict()
                for key, config in configs.items()}
    pending, skipped = [], []
    for job in jobs:
        if existing_result(out / job.name / f"seed-{job.seed}", expected[job.key]):
            skipped.append(job.key)
        else:
            pending.append(job)
    shared = shared_config(base, jobs)
    check_shared_config(out, shared)
    if pending:
        first = expected[pending[0].key]["num_clients"]
        check_same_threads(out, skipped, job_resources(federation_config, first, parallel))
    if check:
        first_of_each: dict[str, Job] = {}
        for job in pending:
            first_of_each.setdefault(job.name, job)
        for job in first_of_each.values():
            preflight({**configs[job.key], "results-dir": str(out)})
    return Plan(configs, pending, skipped, shared)


def run_jobs(out: Path, base: dict[str, Any], jobs: list[Job], runner: Runner, *, federation_config: str = "",
             keep_going: bool = False, progress: bool = True, meta: dict[str, Any] | None = None,
             command: str | None = None, check: bool = True, parallel: int = 1,
             started: str | None = None) -> SweepOutcome:
    """Run every job not already finished in ``out``, ``parallel`` at a time; see the module docstring."""
    out = Path(out).absolute()
    plan = plan_jobs(out, base, jobs, federation_config=federation_config, parallel=parallel, check=check)
    configs, pending = plan.configs, plan.pending
    outcome = SweepOutcome(skipped=plan.skipped)
    first_write = not (out / "sweep.json").is_file()  # an older sweep.json keeps having no shared_config
    meta = {**(meta or {}), "jobs": parallel, **({"shared_config": plan.shared} if first_write else {})}
    manifest = update_manifest(out, meta, command or command_line(), runs=bool(pending), started=started)
    lock = threading.Lock()  # the manifest, the outcome and the bar are shared by the workers
    stopping = threading.Event()  # Ctrl-C: stop the live runs, start no other

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(outcome.skipped), unit="run", smoothing=0, file=sys.stderr,
                   dynamic_ncols=True, desc="sweep")
    say = bar.write if bar is not None else (lambda s: print(s, file=sys.stderr))
    if outcome.skipped:
        say(f"{len(outcome.skipped)} of {len(jobs)} runs already finished in {out}: skipped")
    running: dict[str, LogTee] = {}

    def stop_late(run_id: int) -> None:
        """A run whose id shows only after Ctrl-C was handled: stop it too."""
        if stopping.is_set():
            flwr_stop(run_id)

    def stop_live() -> None:
        """Ctrl-C with --jobs N: a worker thread's flwr run does not see it, so stop each one here."""
        stopping.set()
        for key, log in list(running.items()):
            if log.run_id is not None:
                flwr_stop(log.run_id)
                say(f"interrupted: stopped Flower run {log.run_id} ({key})")

    def interrupted(job: Job, run_id: int | None, seconds: float, tmp: Path) -> None:
        """A run that Ctrl-C stopped: neither done nor failed, and re-run on resume."""
        with lock:
            outcome.seconds[job.key] = seconds
            manifest["runs"][job.key] = {"status": "interrupted", "seconds": round(seconds, 2), "run_id": run_id}
            write_json(out / "sweep.json", manifest)
        shutil.rmtree(tmp, ignore_errors=True)

    def run_one(job: Job) -> None:
        if stopping.is_set():  # queued when Ctrl-C came
            return
        run_dir = out / job.name / f"seed-{job.seed}"
        tmp = run_dir / ".flwr-results"
        shutil.rmtree(tmp, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = {**configs[job.key], "results-dir": str(tmp), "save-model": False}  # keep sweeps small
        settings = settings_from_run_config(config)
        if bar is not None:
            bar.set_postfix_str(f"{job.key} starting")

        def on_round(r: int, acc: float, key: str = job.key, total: int = settings.num_rounds) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{key} round {r}/{total} mean {acc:.4f}")

        log = LogTee(run_dir / "flwr.log", on_round, stop_late)
        running[job.key] = log
        resources = job_resources(federation_config, settings.num_clients, parallel)
        start = time.perf_counter()
        try:
            result = runner(config, num_supernodes=settings.num_clients, federation_config=resources, log=log)
        except KeyboardInterrupt:  # one at a time: the runner stopped its own run
            interrupted(job, log.run_id, time.perf_counter() - start, tmp)
            raise
        finally:
            log.close()
            running.pop(job.key, None)
        seconds = time.perf_counter() - start
        if result.results is None and stopping.is_set():
            interrupted(job, result.run_id, seconds, tmp)
            return
        res = json.loads(result.results.read_text()) if result.results is not None else None
        if res is not None and not res.get("summary"):  # no client evaluated: useless for the statistics
            result = RunOutcome(result.run_id, None, "results.json has no evaluated client", result.returncode)
        with lock:
            outcome.seconds[job.key] = seconds
            if result.results is None:
                why = result.failure
                outcome.failed.append((job.key, why))
                manifest["runs"][job.key] = {"status": "failed", "seconds": round(seconds, 2), "error": why,
                                             "run_id": result.run_id}
                write_json(out / "sweep.json", manifest)
                shutil.rmtree(tmp, ignore_errors=True)
                msg = f"{job.key} failed: {why} (log: {run_dir / 'flwr.log'})"
                if not keep_going:
                    raise RunFailed(msg + "; fix it and re-run the same command to resume")
                say(msg)
            else:
                os.replace(result.results, run_dir / "results.json")
                os.chmod(run_dir / "results.json", 0o644)  # the ServerApp's temp file was 0600
                shutil.rmtree(tmp, ignore_errors=True)
                summary = res["summary"]
                rounds = [h["seconds"] for h in res.get("history", [])]
                manifest["runs"][job.key] = {"status": "done", "seconds": round(seconds, 2), "run_id": result.run_id,
                                             "federation_config": resources,
                                             "round_seconds": [round(r, 3) for r in rounds]}
                write_json(out / "sweep.json", manifest)
                outcome.done.append(job.key)
                outcome.outside[job.key] = seconds - sum(rounds)
                say(f"{job.key}: mean {summary['mean']:.4f} worst {summary['worst']:.4f} "
                    f"tail {summary['tail']:.4f} ({seconds:.0f} s)")
            if bar is not None:
                bar.update(1)

    began = time.perf_counter()
    try:
        if parallel <= 1:
            for job in pending:
                run_one(job)
        else:
            run_parallel(pending, run_one, parallel, stop_live)
        outcome.wall = time.perf_counter() - began
    finally:
        if bar is not None:
            bar.close()
    return outcome


def run_parallel(pending: list[Job], run_one: Callable[[Job], None], parallel: int,
                 on_interrupt: Callable[[], None] = lambda: None) -> None:
    """``parallel`` workers; the first run starts alone until it is under way, so that only one
    process starts the shared local SuperLink. A failure (without --keep-going) stops new runs.
    Ctrl-C cancels the queued runs and calls ``on_interrupt`` (stop the live ones) before waiting
    for the workers: leaving the pool waits for them, and would start every queued run first."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    if not pending:
        return
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        try:
            first = pool.submit(run_one, pending[0])
            deadline = time.monotonic() + 60.0
            while not first.done() and time.monotonic() < deadline and not superlink_started():
                time.sleep(0.5)
            futures = [first] + [pool.submit(run_one, job) for job in pending[1:]]
            done, not_done = wait(futures, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            on_interrupt()
            raise
        for f in not_done:
            f.cancel()
        for f in done:
            f.result()  # re-raises a worker's RunFailed


def superlink_started() -> bool:
    """Whether the local SuperLink answers on its port (the first run has started it)."""
    import socket

    port = int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def sweep(app: Path, out: Path, *, preset: str | None, strategies: list[str], seeds: list[int],
          sets: dict[str, Any], runner: Runner | None = None, env: dict[str, str] | None = None,
          federation_config: str = "", keep_going: bool = False, progress: bool = True,
          command: str | None = None, run_timeout: float | None = None, label: str | None = None,
          jobs: int = 1) -> SweepOutcome:
    """`hasa sweep`: the preset over strategies x seeds into ``out``."""
    app = Path(app).absolute()
    base = base_config(app, preset, sets)
    meta = {"kind": "sweep", "preset": str(preset) if preset else None,
            "preset_config": read_preset(preset) if preset else {}, "overrides": sets, "app": str(app),
            "federation_config": federation_config or f"num-supernodes={base['num-clients']}",
            "strategies": strategies, "seeds": seeds, **({"label": label} if label else {})}
    runs = strategy_jobs(strategies, seeds, label)
    if label:  # an ablation's --set values are its own, as a strategy is: they may differ from its neighbours'
        runs = [Job(job.name, job.seed, {**{k: base[k] for k in sets}, **job.overrides}) for job in runs]
    return run_jobs(out, base, runs, runner or default_runner(app, env, run_timeout),
                    federation_config=federation_config, keep_going=keep_going, progress=progress, meta=meta,
                    command=command, parallel=jobs)


# ----------------------------------------------------------------------------- calibration


def calibration_jobs(budget: float, seeds: list[int]) -> list[Job]:
    """Two `uniform` runs per seed: every client at width 1.0, and every client at width B.

    The width-1.0 run lifts the caps and width-max to 1 and spends budget 1, which the uniform
    rule turns into width 1 for everybody (check_feasible accepts it: caps = 1 cover the budget).
    """
    full = {"strategy": "uniform", "allocation": "uniform", "extraction": "prefix", "budget": 1.0,
            "width-max": 1.0, "width-cap": "1.0"}
    narrow = {"strategy": "uniform", "allocation": "uniform", "extraction": "prefix"}
    return [Job(name, k, overrides) for k in seeds
            for name, overrides in (("width-1.0", full), (f"width-{budget:g}", narrow))]


def calibrate(app: Path, out: Path, *, preset: str | None, seeds: list[int], sets: dict[str, Any],
              runner: Runner | None = None, env: dict[str, str] | None = None, federation_config: str = "",
              keep_going: bool = False, progress: bool = True, command: str | None = None,
              run_timeout: float | None = None, jobs: int = 1) -> SweepOutcome:
    """`hasa calibrate`: the runs behind need_i = acc(width 1.0) - acc(width B), per seed."""
    app = Path(app).absolute()
    base = base_config(app, preset, sets)
    budget = float(base["budget"])
    if budget >= 1.0:
        raise ValueError(f"budget {budget:g} is already full width: calibration compares width 1.0 with width B < 1")
    runs = calibration_jobs(budget, seeds)
    meta = {"kind": "calibration", "preset": str(preset) if preset else None,
            "preset_config": read_preset(preset) if preset else {}, "overrides": sets, "app": str(app),
            "federation_config": federation_config or f"num-supernodes={base['num-clients']}",
            "strategies": list(dict.fromkeys(j.name for j in runs)), "seeds": seeds, "budget": budget}
    return run_jobs(out, base, runs, runner or default_runner(app, env, run_timeout),
                    federation_config=federation_config, keep_going=keep_going, progress=progress, meta=meta,
                    command=command, parallel=jobs)
