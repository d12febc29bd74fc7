"""A real Flower deployment on 127.0.0.1 for tests: one SuperLink, N SuperNodes, `flwr run`.

Everything a test starts gets its own FLWR_HOME, free ports and log files, and is stopped by PID
when the context exits, also when the test body raised:

    with deployment([{"partition-id": 0, "num-partitions": 2, "max-width": 0.5}, ...], tls=True) as dep:
        outcome = run_app(dep, ROOT, {"num-clients": 2, ...})

Flower 1.41 serves the SuperLink's Fleet, Control and Runtime (ServerAppIo) APIs over HTTP(S) on one
port (`--host/--port`; `--fleet-api-address/--control-api-address` are deprecated and only used by
the legacy gRPC servers, which start only when FLWR_INTERNAL_GRPC_* is set: we unset it). Each
SuperNode has its own Runtime HTTP API port (`--port`, default 9094) for its ClientApp processes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from flower_procs import BIN, alive, kill_tree

from hasa_flwr.launch import RunOutcome, flwr_run, to_flwr_args
from hasa_flwr.processes import pids_with_env

HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# Certificates and SuperNode keys
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path        # give to every SuperNode (--root-certificates) and to the CLI (root-certificates)
    server_cert: Path    # SuperLink --ssl-certfile
    server_key: Path     # SuperLink --ssl-keyfile


def make_tls_files(folder: Path, hosts: tuple[str, ...] = (HOST, "localhost"), days: int = 2) -> TlsFiles:
    """A private CA and a SuperLink server certificate it signed, SANs = ``hosts`` (IPs or names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hasa-flwr test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    files = TlsFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    files.server_key.chmod(0o600)
    return files


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format, as `ssh-keygen -t ecdsa -b 384`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (sockets held together so none is handed out twice)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
        proc = _start(self.node_command(index, config, old.port), self.env, old.log, cwd)
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


def kill_tree_now(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants at once (a power cut, not a shutdown)."""
    from flower_procs import descendants

    for p in descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
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
               node_dirs: list[Path] | None = None) -> Iterator[Deployment]:
    """Start a SuperLink (no --simulation) and one SuperNode per node config; stop them all on exit.

    ``tls``: CA + server certificate generated here; SuperLink serves HTTPS, SuperNodes and the CLI
    verify it with the CA. ``auth`` (needs ``tls``): SuperNode authentication: the SuperLink runs
    with --enable-supernode-auth, every SuperNode's public key is registered with
    `flwr supernode register` before the SuperNode starts with its private key. ``node_dirs``: each
    SuperNode's working folder (a device's own folder), default the deployment's home.
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
                "no_proxy": ",".join(filter(None, [os.environ.get("no_proxy", ""), "127.0.0.1,localhost"]))})
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
        link = _start(cmd, env, link_log)
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
            proc = _start(dep.node_command(i, config, port), env, node_log, node_dirs[i] if node_dirs else None)
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


# --------------------------------------------------------------------------------------------
# `flwr run` against the deployment
# --------------------------------------------------------------------------------------------
def run_app(dep: Deployment, app_dir: Path, overrides: dict[str, Any], *, log: IO[str] | None = None,
            timeout: float = 600.0, on_line: Callable[[str], None] | None = None) -> RunOutcome:
    """`flwr run <app_dir> <connection> --stream` against the deployment (``launch.flwr_run``):
    the run id, the results.json it wrote (or None) and the app's `hasa-flwr: ...` error line.
    Never hangs: after ``timeout`` the run is stopped with `flwr stop` and the outcome says so."""
    return flwr_run(app_dir, overrides, num_supernodes=len(dep.nodes), connection=dep.connection, log=log,
                    env=dep.env, timeout=timeout, cwd=dep.home, on_line=on_line)


# --------------------------------------------------------------------------------------------
# Measurement: wall time per round, deployment vs simulation (python tests/deploy_procs.py --help)
# --------------------------------------------------------------------------------------------
class ProcWatch(threading.Thread):
    """Samples /proc every ``period`` s and records when each process that carries ``marker`` and
    whose command line contains ``name`` was first and last seen (its lifetime, +- period)."""

    def __init__(self, marker: str, name: str = "flwr-clientapp", period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.marker, self.name, self.period = marker, name, period
        self.spans: dict[int, list[float]] = {}
        self.cpu: dict[int, float] = {}          # user + system CPU seconds, last sample
        self.halt = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.monotonic()
            for pid in pids_with_env(self.marker):
                span = self.spans.get(pid)
                if span is None:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if self.name.encode() not in cmd:
                        continue
                    span = self.spans[pid] = [t, t]
                span[1] = t
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self.tick
                except (OSError, IndexError, ValueError):
                    pass
            self.halt.wait(self.period)


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, -1e18
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _import_seconds(repeats: int = 3) -> float:
    """What every deployment ClientApp process pays before its handler runs: the imports."""
    code = "import time; t = time.perf_counter(); import torch, flwr.clientapp, client_app; " \
           "print(time.perf_counter() - t)"
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).resolve().parents[1], timeout=120).stdout)
             for _ in range(repeats)]
    return sorted(times)[len(times) // 2]


def _compute_seconds(overrides: dict[str, Any], widths: list[float], threads: int) -> dict[str, float]:
    """The useful work of one round, measured in this process: each client's train + evaluate
    (+ data generation) at its width, sequentially, warm."""
    import torch

    from hasa_flwr.config import settings_from_run_config
    from hasa_flwr.data import load_federated
    from hasa_flwr.launch import app_defaults
    from hasa_flwr.models import build_model, full_sizes
    from hasa_flwr.train import evaluate, train

    root = Path(__file__).resolve().parents[1]
    s = settings_from_run_config({**app_defaults(root), **overrides})
    torch.set_num_threads(threads)
    t = time.perf_counter()
    load_federated.cache_clear()      # time a cold data build, as every deployment ClientApp does
    fed = load_federated(s.source)
    data_s = time.perf_counter() - t
    sizes = full_sizes(s.model, s.embed_dim, s.hidden_dim)
    per_client = []
    for _ in range(2):     # the first pass warms torch up; keep the second
        per_client = []
        for c, w in zip(fed.clients, widths):
            model = build_model(s.model, fed.num_classes, sizes, w)
            t = time.perf_counter()
            train(model, c.x_train, c.y_train, epochs=s.local_epochs, batch_size=s.batch_size, lr=s.lr,
                  optimizer=s.optimizer, momentum=s.momentum, seed=0)
            evaluate(model, c.x_test, c.y_test)
            per_client.append(time.perf_counter() - t)
    return {"data_seconds": data_s, "train_eval_seconds": per_client}


def measure(rounds: int, caps: tuple[float, ...], out: Path) -> dict[str, Any]:
    """One deployment run and one simulation run of the same preset; per-round seconds and
    where the deployment's extra time goes."""
    import json

    from flower_procs import simulation_superlink

    root = Path(__file__).resolve().parents[1]
    n = len(caps)
    preset = {"num-clients": n, "num-server-rounds": rounds, "strategy": "hasa", "embed-dim": 16,
              "hidden-dim": 32, "budget": 0.4}
    report: dict[str, Any] = {"preset": preset, "caps": list(caps), "cpus": os.cpu_count()}
    out.mkdir(parents=True, exist_ok=True)

    # simulation: width-cap gives the same caps the SuperNodes give in deployment
    with simulation_superlink() as env, (out / "simulation.log").open("w") as log:
        t = time.monotonic()
        sim = flwr_run(root, {**preset, "width-cap": ",".join(map(str, caps)), "results-dir": str(out / "sim")},
                       num_supernodes=n, env=env, log=log, timeout=1200)
        report["simulation_total_s"] = time.monotonic() - t
    if sim.results is None:
        raise RuntimeError(f"simulation failed: {sim}")
    sim_res = json.loads(sim.results.read_text())
    report["simulation_rounds_s"] = [h["seconds"] for h in sim_res["history"]]

    nodes = [{"partition-id": i, "num-partitions": n, "max-width": c, "threads": 1} for i, c in enumerate(caps)]
    marks: dict[str, float] = {}

    def on_line(line: str) -> None:
        for k in range(1, rounds + 1):
            if f"[ROUND {k}/" in line:
                marks.setdefault(f"start{k}", time.monotonic())
            if f"round {k}: mean accuracy" in line:
                marks.setdefault(f"end{k}", time.monotonic())

    t = time.monotonic()
    with deployment(nodes) as dep, (out / "deployment.log").open("w") as log:
        report["deployment_startup_s"] = time.monotonic() - t
        watch = ProcWatch(dep.marker)
        watch.start()
        t = time.monotonic()
        dep_out = run_app(dep, root, {**preset, "width-cap": "0.8", "results-dir": str(out / "deploy")}, log=log,
                          timeout=1800, on_line=on_line)
        report["deployment_total_s"] = time.monotonic() - t
        watch.halt.set()
        watch.join()
    if dep_out.results is None:
        raise RuntimeError(f"deployment failed: {dep_out}")
    dep_res = json.loads(dep_out.results.read_text())
    report["deployment_rounds_s"] = [h["seconds"] for h in dep_res["history"]]
    spans = list(watch.spans.values())
    report["clientapp_processes"] = len(spans)
    report["clientapp_lifetime_s"] = sum(b - a for a, b in spans) / max(len(spans), 1)
    report["clientapp_cpu_s"] = sum(watch.cpu.values()) / max(len(watch.cpu), 1)
    per_round = []
    for k in range(1, rounds + 1):
        a, b = marks.get(f"start{k}"), marks.get(f"end{k}")
        if a is None or b is None:
            continue
        inside = [(max(s0, a), min(s1, b)) for s0, s1 in spans if s1 > a and s0 < b]
        per_round.append({"round": k, "window_s": b - a, "clientapps": len(inside),
                          "clientapp_alive_s": _union(inside), "no_clientapp_alive_s": b - a - _union(inside)})
    report["deployment_round_breakdown"] = per_round
    report["import_s"] = _import_seconds()
    widths = [c["width"] for c in dep_res["clients"]]
    report["widths"] = widths
    report["compute"] = _compute_seconds({**preset, "width-cap": "0.8"}, widths, threads=1)
    (out / "measure.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Wall time per round: deployment (SuperLink + SuperNodes on "
                                     "127.0.0.1) vs simulation, same preset.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--caps", default="0.8,0.5,0.3", help="one SuperNode per cap")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "hasa-measure")
    args = parser.parse_args(argv)
    report = measure(args.rounds, tuple(float(c) for c in args.caps.split(",")), args.out.resolve())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
