"""A real Flower deployment on one machine: one SuperLink, N SuperNodes, `flwr run` against them.

Everything started gets its own FLWR_HOME, free ports and log files, and is stopped by PID when the
context exits, also when the body raised (`hasa bench deploy` and the deployment tests use it):

    with deployment([{"partition-id": 0, "num-partitions": 2, "max-width": 0.5}, ...], tls=True) as dep:
        outcome = run_app(dep, app_dir, {"num-clients": 2, ...})

Flower 1.41 serves the SuperLink's Fleet, Control and Runtime (ServerAppIo) APIs over HTTP(S) on one
port (`--host/--port`; `--fleet-api-address/--control-api-address` are deprecated and only used by
the legacy gRPC servers, which start only when FLWR_INTERNAL_GRPC_* is set: we unset it). Each
SuperNode has its own Runtime HTTP API port (`--port`, default 9094) for its ClientApp processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from hasa_flwr.study.credentials import HOST, TlsFiles, make_node_keys, make_tls_files
from hasa_flwr.study.launch import RunOutcome, flwr_run, to_flwr_args
from hasa_flwr.study.processes import BIN, alive, free_ports, kill_tree, kill_tree_now, pids_with_env


def wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0,
                verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(url, timeout=2.0, verify=verify, trust_env=False).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy within {timeout:g}s:\n{tail(log)}")


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def node_config_arg(config: dict[str, Any]) -> str:
    """`--node-config` value: space-separated `key=value` with TOML values (strings quoted)."""
    return to_flwr_args(config)


@dataclass
class Node:
    index: int
    config: dict[str, Any]
    port: int
    proc: subprocess.Popen
    log: Path


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    connection: str
    address: str
    superlink: subprocess.Popen
    superlink_log: Path
    nodes: list[Node] = field(default_factory=list)
    tls: TlsFiles | None = None
    node_keys: list[tuple[Path, Path]] = field(default_factory=list)
    started: list[int] = field(default_factory=list)     # every PID we started (for teardown)
    marker: str = ""                                      # FLWR_HOME=<home>: in every process's environment

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A `flwr` CLI command against this deployment's connection (never hangs)."""
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.home)

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> None:
        """A device drops out: ``sig`` to SuperNode ``index`` and its ClientApp processes."""
        node = self.nodes[index]
        if sig == signal.SIGKILL:
            kill_tree_now(node.proc.pid)
        else:
            node.proc.send_signal(sig)
        node.proc.wait(timeout=30)

    def restart_node(self, index: int, config: dict[str, Any], cwd: Path | None = None,
                     timeout: float = 60.0) -> None:
        """Replace SuperNode ``index`` by one with another node config (a device re-configured)."""
        old = self.nodes[index]
        kill_tree_now(old.proc.pid)
        old.proc.wait(timeout=30)
        proc = start_process(self.node_command(index, config, old.port), self.env, old.log, cwd)
        self.started.append(proc.pid)
        self.nodes[index] = Node(index, config, old.port, proc, old.log)
        wait_health(f"http://{HOST}:{old.port}/health", proc, old.log, timeout)

    def node_command(self, index: int, config: dict[str, Any], port: int) -> list[str]:
        cmd = [str(BIN / "flower-supernode"), "--superlink", self.address, "--host", HOST, "--port", str(port),
               "--isolation", "subprocess", "--node-config", node_config_arg(config)]
        cmd += ["--root-certificates", str(self.tls.ca_cert)] if self.tls else ["--insecure"]
        if index < len(self.node_keys):
            cmd += ["--auth-supernode-private-key", str(self.node_keys[index][0])]
        return cmd

    def logs(self) -> str:
        parts = [f"--- superlink ---\n{tail(self.superlink_log)}"]
        parts += [f"--- supernode {n.index} ---\n{tail(n.log)}" for n in self.nodes]
        return "\n".join(parts)


def start_process(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd or log.parent)


def write_connection(home: Path, name: str, address: str, ca_cert: Path | None) -> Path:
    """$FLWR_HOME/config.toml with one SuperLink connection, also the default one."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append(f'root-certificates = "{ca_cert.resolve()}"' if ca_cert else "insecure = true")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def deployment(node_configs: list[dict[str, Any]], *, tls: bool = False, auth: bool = False,
               connection: str = "hasa-deploy", startup_timeout: float = 60.0,
               node_dirs: list[Path] | None = None, extra_env: dict[str, str] | None = None) -> Iterator[Deployment]:
    """Start a SuperLink (no --simulation) and one SuperNode per node config; stop them all on exit.

    ``tls``: CA + server certificate generated here; SuperLink serves HTTPS, SuperNodes and the CLI
    verify it with the CA. ``auth`` (needs ``tls``): SuperNode authentication: the SuperLink runs
    with --enable-supernode-auth, every SuperNode's public key is registered with
    `flwr supernode register` before the SuperNode starts with its private key. ``node_dirs``: each
    SuperNode's working folder (a device's own folder), default the deployment's home. ``extra_env``:
    added to every process's environment (e.g. FLWR_SUPEREXEC_TASK_POLL_INTERVAL).
    """
    if auth and not tls:
        raise ValueError("SuperNode authentication needs TLS (Flower refuses it on --insecure)")
    home = Path(tempfile.mkdtemp(prefix="flwr-deploy-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_GRPC")}
    env.update({"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                # never send 127.0.0.1 traffic through a proxy from the environment
                "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost"])),
                "no_proxy": ",".join(filter(None, [os.environ.get("no_proxy", ""), "127.0.0.1,localhost"])),
                **(extra_env or {})})
    marker = f"FLWR_HOME={home}"
    started: list[int] = []
    dep: Deployment | None = None
    try:
        link_port, *node_ports = free_ports(1 + len(node_configs))
        address = f"{HOST}:{link_port}"
        files = make_tls_files(home / "certificates") if tls else None
        cmd = [str(BIN / "flower-superlink"), "--isolation", "subprocess", "--host", HOST,
               "--port", str(link_port), "--database", str(home / "state.db"),
               "--disable-runtime-dependency-installation"]
        if files:
            cmd += ["--ssl-ca-certfile", str(files.ca_cert), "--ssl-certfile", str(files.server_cert),
                    "--ssl-keyfile", str(files.server_key)]
        else:
            cmd += ["--insecure"]
        if auth:
            cmd += ["--enable-supernode-auth"]
        link_log = home / "superlink.log"
        link = start_process(cmd, env, link_log)
        started.append(link.pid)
        write_connection(home, connection, address, files.ca_cert if files else None)
        dep = Deployment(home, env, connection, address, link, link_log, tls=files, started=started,
                         marker=marker)
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(files.ca_cert)) if files else True
        scheme = "https" if files else "http"
        wait_health(f"{scheme}://{address}/health", link, link_log, startup_timeout, verify)

        for i, (config, port) in enumerate(zip(node_configs, node_ports)):
            node_log = home / f"supernode-{i}.log"
            if auth:
                private, public = make_node_keys(home / "keys", f"node{i}")
                dep.node_keys.append((private, public))
                reg = dep.flwr("supernode", "register", str(public), connection, "--name", f"device-{i}")
                if reg.returncode != 0:
                    raise RuntimeError(f"flwr supernode register failed:\n{reg.stdout}\n{reg.stderr}")
            proc = start_process(dep.node_command(i, config, port), env, node_log, node_dirs[i] if node_dirs else None)
            started.append(proc.pid)
            dep.nodes.append(Node(i, config, port, proc, node_log))
        for node in dep.nodes:
            wait_health(f"http://{HOST}:{node.port}/health", node.proc, node.log, startup_timeout)
        yield dep
    finally:
        stop_all(started, marker)
        if os.environ.get("HASA_KEEP_DEPLOY_LOGS"):
            print(f"deployment logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def stop_all(started: list[int], marker: str) -> None:
    """SuperNodes first, then the SuperLink (reverse start order), each with its process tree;
    then anything still carrying our FLWR_HOME (ServerApp/ClientApp/SuperExec processes that were
    detached or orphaned), all by PID."""
    for pid in reversed(started):
        kill_tree(pid)
    for _ in range(3):
        leftover = [p for p in pids_with_env(marker) if alive(p)]
        if not leftover:
            return
        for p in leftover:
            kill_tree(p, timeout=5.0)


def run_app(dep: Deployment, app_dir: Path, overrides: dict[str, Any], *, log: IO[str] | None = None,
            timeout: float = 600.0, on_line: Callable[[str], None] | None = None) -> RunOutcome:
    """`flwr run <app_dir> <connection> --stream` against the deployment (``launch.flwr_run``):
    the run id, the results.json it wrote (or None) and the app's `hasa-flwr: ...` error line.
    Never hangs: after ``timeout`` the run is stopped with `flwr stop` and the outcome says so."""
    return flwr_run(app_dir, overrides, num_supernodes=len(dep.nodes), connection=dep.connection, log=log,
                    env=dep.env, timeout=timeout, cwd=dep.home, on_line=on_line)
