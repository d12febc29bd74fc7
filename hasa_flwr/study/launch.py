"""Start a run through the real `flwr run` CLI, with a pre-flight check and an honest exit code.

`flwr run --stream` exits 0 even when the ServerApp fails, and a typo in the run config only
surfaces after Ray has started. `hasa run` checks the run config and the data first (a one-line
error, exit 2, in about a second), then streams `flwr run`, and exits 1 if no results.json was
written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from hasa_flwr.method.allocation import check_feasible, linear_cost
from hasa_flwr.federation.config import Settings, settings_from_run_config, typed
from hasa_flwr.study.processes import foreign_local_superlink

FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # the SuperLink would otherwise `uv sync` torch (with CUDA) into a fresh environment per run
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
RUN_ID = re.compile(r"Successfully started run (\d+)")
APP_ERROR = re.compile(r"hasa-flwr: (.*)$")
RESULTS_LINE = re.compile(r"^results: (.+\.json)$")  # the ServerApp's last line, logged after results.json


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The default run config from the app's pyproject.toml."""
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise ValueError(f"{pyproject} not found: run from the hasa-flwr folder or pass its path")
    with pyproject.open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file; missing or malformed, a one-line ValueError that names the file (tomllib's own
    message gives only the line and column)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what} {path} is not valid TOML: {err}; fix that line (string values need quotes, "
                         "e.g. strategy = \"hasa\")") from None


def read_preset(path: str | Path) -> dict[str, Any]:
    """A conf/*.toml preset: flat `key = value` run-config overrides."""
    return read_toml(path, "run-config file")


def merge_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown run-config key(s) {', '.join(unknown)}: valid keys are listed in pyproject.toml "
                         "[tool.flwr.app.config]")
    for key, value in overrides.items():
        check_kind(key, value, defaults[key])
    return {**defaults, **overrides}


def check_kind(key: str, value: Any, default: Any) -> None:
    """A value of the default's kind, checked before any process starts (the ServerApp checks again)."""
    if isinstance(default, (bool, int, float)):
        typed({key: value}, key, type(default))


def to_flwr_args(overrides: dict[str, Any]) -> str:
    """One `--run-config` string (`k=v` pairs, TOML values)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace('"', '\\"') + '"'
        return repr(v)
    return " ".join(f"{k}={value(v)}" for k, v in overrides.items())


def preflight(run_config: dict[str, Any]) -> Settings:
    """What the ServerApp would reject, checked locally (simulation shares this machine's files)."""
    settings = settings_from_run_config(run_config)
    fed = settings.load_data()
    sizes = np.array([settings.budget_size(c.n_train, c.n_train_rows) for c in fed.clients], dtype=np.float64)
    if settings.budget_cost == "width":  # the macs check needs the model; the ServerApp does it
        check_feasible(settings.budget, sizes / sizes.sum(), np.array(settings.width_caps), settings.width_min,
                       settings.width_max, linear_cost)
    return settings


@dataclass
class RunOutcome:
    run_id: int | None
    results: Path | None
    error: str | None
    returncode: int

    @property
    def failure(self) -> str:
        """Why the run has no results.json: the app's error line, else the CLI's exit code."""
        return self.error or f"flwr run exited with code {self.returncode} and wrote no results.json"


def flwr_run(app_dir: Path, overrides: dict[str, Any], *, num_supernodes: int, federation_config: str = "",
             connection: str | None = None, log=None, env: dict[str, str] | None = None,
             timeout: float | None = None, cwd: Path | None = None,
             on_line: Callable[[str], None] | None = None, until_results: bool = False) -> RunOutcome:
    """Run `flwr run <app> --stream` and find the results.json it wrote (or the app's error).

    ``overrides`` must hold an absolute ``results-dir``: a reused local SuperLink keeps the
    working directory of the `flwr run` that started it, so relative paths would land there.
    ``on_line`` sees every streamed line (to act mid-run). After ``timeout`` seconds, or on Ctrl-C,
    the run is stopped on the SuperLink (`flwr stop`, else it would go on there).
    ``until_results``: stop streaming once the ServerApp has written results.json (its last line);
    Flower's teardown of the run (actors, a 1 s log flush, the end of the stream: ~2.5 s) then
    overlaps with whatever the caller starts next, e.g. a sweep's next run.
    """
    results_dir = Path(overrides["results-dir"])
    if not results_dir.is_absolute():
        raise ValueError(f"results-dir must be absolute here, got {results_dir}")
    run_env = flwr_env(env)
    if connection:  # a deployed SuperLink: its SuperNodes are the federation
        cmd = ["flwr", "run", str(app_dir), connection, "--stream"]
    else:
        port = run_env.get("FLWR_LOCAL_CONTROL_API_PORT", "39093")
        if found := foreign_local_superlink(port):
            raise ValueError(f"the local SuperLink on 127.0.0.1:{port} (pid {found[0]}) runs from another environment "
                             f"({found[1]}), so this run would execute there: stop it, or give these runs their own "
                             f"ports (FLWR_LOCAL_SUPERLINK_HTTP_API_PORT, FLWR_LOCAL_CONTROL_API_PORT)")
        fed = federation_config or f"num-supernodes={num_supernodes}"
        cmd = ["flwr", "run", str(app_dir), "--stream", "--federation-config", fed]
    if overrides:
        cmd += ["--run-config", to_flwr_args(overrides)]
    seen: dict[str, Any] = {"run_id": None, "error": None}
    written = threading.Event()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=run_env, cwd=cwd)

    def pump() -> None:  # a thread, so that a silent, hung stream cannot outlast the timeout
        for line in proc.stdout:
            if log is not None:
                log.write(line)
                log.flush()
            if seen["run_id"] is None and (m := RUN_ID.search(line)):
                seen["run_id"] = int(m.group(1))
            if m := APP_ERROR.search(line):
                seen["error"] = m.group(1).strip()
            if on_line is not None:
                on_line(line)
            if until_results and RESULTS_LINE.match(line.strip()):
                written.set()
                return

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_for(proc, written, timeout)
    except subprocess.TimeoutExpired:
        if seen["run_id"] is not None:
            flwr_stop(seen["run_id"], connection, env, cwd)
        seen["error"] = (f"flwr run did not finish within {timeout:g} s (run {seen['run_id']} stopped); "
                         "raise the timeout or make the run smaller")
    except KeyboardInterrupt:  # Ctrl-C ends the CLI; without a stop the run would go on in the SuperLink
        if seen["run_id"] is not None:
            flwr_stop(seen["run_id"], connection, env, cwd)
        raise
    finally:
        if written.is_set() and proc.poll() is None:  # the CLI only streams the log now: end it as Ctrl-C would
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    if written.is_set():
        proc.returncode = 0
    run_id = seen["run_id"]
    path = results_dir / str(run_id) / "results.json" if run_id is not None else None
    if overrides.get("resume-from"):  # a resumed run finishes the folder it continues
        path = Path(str(overrides["resume-from"])) / "results.json"
    if path is not None and not path.is_file():
        path = None
    if path is None and seen["error"] is None and run_id is not None and connection and proc.returncode == 0:
        seen["error"] = app_error_from_log(run_id, connection, env, cwd)  # a deployed run that failed fast
    return RunOutcome(run_id, path, seen["error"], proc.returncode or 0)


def wait_for(proc: subprocess.Popen, written: threading.Event, timeout: float | None) -> None:
    """Until the CLI exits or ``written`` is set; subprocess.TimeoutExpired after ``timeout`` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None and not written.wait(0.1):
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)


def app_error_from_log(run_id: int, connection: str | None = None, env: dict[str, str] | None = None,
                       cwd: Path | None = None) -> str | None:
    """The app's error line from the run's stored log: a deployed run that fails fast can end the
    `--stream` before its last lines arrive."""
    try:
        shown = subprocess.run(["flwr", "log", str(run_id), *([connection] if connection else []), "--show"],
                               env=flwr_env(env), cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                               timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    errors = [m.group(1).strip() for line in shown.splitlines() if (m := APP_ERROR.search(line))]
    return errors[-1] if errors else None


def app_snapshot(app_dir: Path, dest: Path) -> Path:
    """Unpack the app package (FAB) that `flwr run` would build from ``app_dir`` into ``dest``.

    Flower's CLI builds the FAB by walking every file under the app folder (a virtual environment
    inside it: ~50,000 files and ~3 s per `flwr run`) before its include patterns pick ~60 of them.
    A sweep builds it once and runs every job from the unpacked copy, whose FAB is the same; the
    copy also pins the code a sweep runs to the code at its start.
    """
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(Path(app_dir).absolute()))) as fab:
        for name in fab.namelist():
            if not name.startswith(".info/"):  # Flower's manifest: rebuilt by every `flwr run`
                fab.extract(name, dest)
    return Path(dest)


def flwr_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment + FLWR_ENV defaults + ``env``, with this interpreter's `flwr` first on PATH."""
    run_env = {**FLWR_ENV, **os.environ, **(env or {})}
    run_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{run_env.get('PATH', '')}"
    return run_env


def flwr_stop(run_id: int, connection: str | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> None:
    """Ask the SuperLink to stop a run (best effort: it may already be gone)."""
    try:
        subprocess.run(["flwr", "stop", str(run_id), *([connection] if connection else [])], env=flwr_env(env),
                       cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                       timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
