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
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "HASA_MARKER"
BIN = Path(sys.executable).parent   # flwr, flower-superlink, flower-supernode of this environment
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (sockets held together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def proc_files(name: str) -> Iterator[tuple[int, list[bytes]]]:
    """(pid, entries of /proc/<pid>/<name>, split at NULs) of every process but this one that we may read."""
    for pid in all_pids():
        if pid != os.getpid():
            try:
                yield pid, Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")
            except OSError:
                continue


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, parent pid, ...; utime and stime are
    [11] and [12]), or None once the process is gone (the name may hold spaces and parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(stat: list[str]) -> float:
    """User + system CPU time of a process, from its ``proc_stat`` fields."""
    return (int(stat[11]) + int(stat[12])) / CLK_TCK


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def pids_with_env(entry: str) -> list[int]:
    """Processes (other than this one) whose environment holds ``entry`` ("NAME=value")."""
    needle = entry.encode()
    return [pid for pid, env in proc_files("environ") if needle in env]


def foreign_local_superlink(control_port: int | str) -> tuple[int, Path] | None:
    """(pid, its bin folder) of a local SuperLink serving ``control_port`` that runs from another
    environment, else None. `flwr run` hands a local simulation to whatever SuperLink answers on
    that fixed port (FLWR_HOME does not pick it), and that SuperLink runs the app with its own
    environment's packages: a sweep from one checkout would run inside another's."""
    flag = f"127.0.0.1:{control_port}"
    for pid, raw in proc_files("cmdline"):
        args = [a.decode(errors="replace") for a in raw]
        script = next((a for a in args if Path(a).name == "flower-superlink"), None)
        if script is None or "--control-api-address" not in args:
            continue
        home = Path(os.path.abspath(script)).parent
        if args[args.index("--control-api-address") + 1:][:1] == [flag] and home != BIN:
            return pid, home
    return None


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


def terminate(find: Callable[[], Iterable[int]], grace: float) -> None:
    """SIGTERM, then SIGKILL, the processes ``find()`` names, each time waiting up to ``grace`` s for
    all of them to be gone (``find`` is asked again, so late-started ones are caught too)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in find():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in find()):
            time.sleep(0.2)


def stop_marked(value: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every marked process (a zombie has no environ left, so it is done)."""
    terminate(lambda: marked_pids(value), grace)


@contextmanager
def private_flower(grace: float = 10.0) -> Iterator[dict[str, str]]:
    """Environment entries that give the `flwr run`s made with them their own local SuperLink (FLWR_HOME,
    ports), Ray session folder and marker; at exit every marked process is stopped and the folders removed."""
    value = uuid.uuid4().hex
    home = Path(tempfile.mkdtemp(prefix="hasa-flwr-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's socket paths are length-limited
    http, control = free_ports(2)
    try:
        yield {MARKER: value, "FLWR_HOME": str(home), "RAY_TMPDIR": str(ray_tmp),
               "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http), "FLWR_LOCAL_CONTROL_API_PORT": str(control)}
    finally:
        stop_marked(value, grace)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pid in all_pids():
        if (stat := proc_stat(pid)) is not None:
            out.setdefault(int(stat[1]), []).append(pid)
    return out


def session_members(sid: int) -> list[int]:
    pids = []
    for pid in all_pids():
        try:
            if os.getsid(pid) == sid:
                pids.append(pid)
        except OSError:
            continue
    return pids


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    tree, todo, seen = children_map(), [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(tree.get(p, []))
    return seen


def alive(pid: int) -> bool:
    """Running (a zombie is not)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def kill_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM ``pid``, its descendants and its session (it was started with a new session), then
    SIGKILL whatever is left (Ray's agents may ignore SIGTERM)."""
    pids = set(descendants(pid))

    def find() -> set[int]:
        pids.update(session_members(pid))
        pids.discard(os.getpid())
        return pids

    terminate(find, timeout)


def kill_tree_now(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants at once (a power cut, not a shutdown)."""
    for p in descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
