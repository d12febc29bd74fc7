"""Processes a command starts and must stop: found by an environment marker they all inherit.

Flower's SuperLink outlives `flwr run`, and Ray's daemons outlive their driver; every one of them
inherits the environment of the process that started it, so a unique ``HASA_MARKER=<value>`` finds
them all (the `hasa bench scale` memory sampler, the shared Ray of `hasa sweep --shared-ray`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "HASA_MARKER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_with_env(entry: str) -> list[int]:
    """Processes (other than this one) whose environment holds ``entry`` ("NAME=value")."""
    needle = entry.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def marked_pids(value: str) -> list[int]:
    """Processes whose environment holds MARKER=value."""
    return pids_with_env(f"{MARKER}={value}")


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stop_marked(value: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every marked process (a zombie has no environ left, so it is done)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked_pids(value)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline and marked_pids(value):
            time.sleep(0.2)


@contextmanager
def private_flower(grace: float = 10.0) -> Iterator[dict[str, str]]:
    """Environment entries that give the `flwr run`s made with them their own local SuperLink (FLWR_HOME,
    ports), Ray session folder and marker; at exit every marked process is stopped and the folders removed."""
    value = uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="hasa-flwr-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's socket paths are length-limited
    try:
        yield {MARKER: value, "FLWR_HOME": str(home), "RAY_TMPDIR": str(ray_tmp),
               "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
    finally:
        stop_marked(value, grace)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
