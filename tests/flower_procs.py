"""Start Flower processes for end-to-end tests on free ports, and stop every one of them by PID.

Each harness gets its own FLWR_HOME and RAY_TMPDIR, so a developer's SuperLink on the default
ports is neither reused nor disturbed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hasa_flwr.study.deployment import wait_health
from hasa_flwr.study.processes import BIN, free_ports, kill_tree


class SuperlinkEnv(dict):
    """The environment to run `flwr run` with (a dict), plus the SuperLink's PID and FLWR_HOME."""

    pid: int
    home: Path


@contextmanager
def simulation_superlink(extra_env: dict[str, str] | None = None):
    """A simulation SuperLink the `flwr run` CLI reuses as its local one; yields the env to run with
    (a SuperlinkEnv: also its PID, for tests that kill it)."""
    home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are length-limited
    http, control, fleet = free_ports(3)
    env = {**os.environ, "FLWR_HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http), "FLWR_LOCAL_CONTROL_API_PORT": str(control),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(extra_env or {})}
    cmd = [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(http), "--control-api-address", f"127.0.0.1:{control}",
           "--fleet-api-address", f"127.0.0.1:{fleet}", "--database", str(home / "state.db"),
           "--disable-runtime-dependency-installation"]
    log = (home / "superlink.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = SuperlinkEnv(env)
    env.pid, env.home = proc.pid, home
    try:
        wait_health(f"http://127.0.0.1:{http}/health", proc, home / "superlink.log")
        yield env
    finally:
        kill_tree(proc.pid)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
