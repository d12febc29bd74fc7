import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

# Simulated clients and devices keep prepared data under $XDG_CACHE_HOME/hasa-flwr: the tests' runs
# (and every process they start) use their own, never the user's.
_CACHE = tempfile.mkdtemp(prefix="hasa-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


def medium_csv() -> Path | None:
    """The benchmark CSV when HASA_DATA_DIR provides it (CI sets it)."""
    folder = os.environ.get("HASA_DATA_DIR")
    path = Path(folder) / "medium_data.csv" if folder else None
    return path if path is not None and path.is_file() else None


@pytest.fixture(autouse=True)
def own_flower_home(tmp_path_factory, monkeypatch):
    """Every test's own FLWR_HOME and local SuperLink ports: a test that starts `flwr run` by way of
    `hasa` in this process (or a regression that makes a bad-input test do so) never uses or leaves
    a SuperLink in the user's home or on the default ports. Tests that start Flower on purpose pass
    their own environment (flower_procs) over this one."""
    from hasa_flwr.study.processes import free_ports

    http, control = free_ports(2)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path_factory.mktemp("flwr-home")))
    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(http))
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(control))


@pytest.fixture
def task_identity():
    """Flower 1.41's Message() reads the run, node and task ids of the process it runs in: give them ones."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("run_id", 1), ("node_id", 0), ("task_id", 1)):
        if getattr(TaskIdentity, f"_{attr}") is None:
            setattr(TaskIdentity, attr, value)


@pytest.fixture(scope="session")
def superlink():
    from flower_procs import simulation_superlink

    with simulation_superlink() as env:
        yield env
