"""`hasa bench deploy`: seconds per round in a real deployment, against Flower's own floor.

One SuperLink and one SuperNode per cap on 127.0.0.1 (`--isolation subprocess`, as on devices);
under the same processes, for each `reply-poll`: hasa-flwr's app (3 synthetic clients, hasa,
embed 16 / hidden 32, budget 0.4) and the no-op app (`noop_app`: one message per device per round,
a ClientApp that imports only Flower and answers at once). A round's seconds run from the server's
push to the last reply (hasa-flwr's `history[].seconds`); rounds 2..R-1 are compared (round 1
waits for idle SuperNodes to wake up in both, round R of hasa-flwr adds the final evaluation).
A sampler records every `flwr-clientapp` process's lifetime and CPU seconds, which is where a
device's time goes. Rounds vary by seconds with how the SuperNodes' polls line up, so the ratio comes
with a bootstrap interval over the compared rounds: whether a target such as 1.5 is met or missed
needs more than one ratio of medians.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hasa_flwr.study.deployment import deployment, run_app
from hasa_flwr.study.noop_app import write_noop_app
from hasa_flwr.study.processes import cmdline, cpu_seconds, pids_with_env, proc_stat
from hasa_flwr.federation.results import write_json_atomic

PRESET = {"strategy": "hasa", "embed-dim": 16, "hidden-dim": 32, "budget": 0.4}
BEFORE = 26.0   # s per deployment round measured on the two-exchange code (docs/DEPLOYMENT.md, section 11)


class ProcWatch(threading.Thread):
    """Samples /proc every ``period`` s: when each process carrying ``marker`` whose command line holds
    ``name`` was first and last seen (its lifetime, +- period) and its user + system CPU seconds."""

    def __init__(self, marker: str, name: str = "flwr-clientapp", period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.marker, self.name, self.period = marker, name, period
        self.spans: dict[int, list[float]] = {}
        self.cpu: dict[int, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.monotonic()
            for pid in pids_with_env(self.marker):
                if (span := self.spans.get(pid)) is None:
                    if self.name not in cmdline(pid):
                        continue
                    span = self.spans[pid] = [t, t]
                span[1] = t
                if (stat := proc_stat(pid)) is not None:
                    self.cpu[pid] = cpu_seconds(stat)
            self.halt.wait(self.period)

    def summary(self) -> dict[str, float]:
        """Medians over the processes (most of them are rounds; the first few set a run up)."""
        self.halt.set()
        self.join(timeout=10)
        return {"clientapp_processes": len(self.spans),
                "clientapp_lifetime_s": statistics.median([b - a for a, b in self.spans.values()] or [math.nan]),
                "clientapp_cpu_s": statistics.median(list(self.cpu.values()) or [math.nan])}


def compared(rounds: list[float]) -> list[float]:
    """Rounds 2..R-1 (all of them when there are fewer than 3)."""
    return rounds[1:-1] if len(rounds) >= 3 else rounds


def ratio_interval(ours: list[float], floor: list[float], *, level: float = 0.95, draws: int = 4000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of median(ours) / median(floor), each run's rounds resampled on their own
    (rounds taken as independent draws; the runs are one after the other under the same processes)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(ours, dtype=float), np.asarray(floor, dtype=float)
    ratios = (np.median(rng.choice(a, (draws, a.size)), axis=1) / np.median(rng.choice(b, (draws, b.size)), axis=1))
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def one_run(dep, app: Path, overrides: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    watch = ProcWatch(dep.marker)
    watch.start()
    start = time.monotonic()
    with (out / f"{name}.log").open("w") as log:
        outcome = run_app(dep, app, {**overrides, "results-dir": str(out / name)}, log=log, timeout=1800)
    total = time.monotonic() - start
    procs = watch.summary()
    if outcome.results is None:
        raise RuntimeError(f"{name}: the run failed ({outcome.error or 'no results'}); see {out / f'{name}.log'}")
    rounds = [h["seconds"] for h in json.loads(outcome.results.read_text())["history"]]
    for folder in ("checkpoints", "model", "clients"):  # keep results.json and the log, not the bench's models
        shutil.rmtree(outcome.results.parent / folder, ignore_errors=True)
    return {"rounds_s": rounds, "median_round_s": statistics.median(compared(rounds)), "run_s": total, **procs}


def bench_deploy(app: Path, *, rounds: int, caps: tuple[float, ...], reply_polls: tuple[float, ...],
                 superexec_poll: float | None, out: Path) -> dict[str, Any]:
    """hasa-flwr and the no-op app under one deployment, for each reply-poll; the ratios."""
    out.mkdir(parents=True, exist_ok=True)
    n = len(caps)
    nodes = [{"partition-id": i, "num-partitions": n, "max-width": c, "threads": 1} for i, c in enumerate(caps)]
    extra = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(superexec_poll)} if superexec_poll else {}
    report: dict[str, Any] = {"rounds": rounds, "caps": list(caps), "preset": PRESET, "cpus": os.cpu_count(),
                              "superexec_poll_s": superexec_poll or 1.0, "runs": []}
    with tempfile.TemporaryDirectory(prefix="hasa-noop-") as tmp, deployment(nodes, extra_env=extra) as dep:
        noop = write_noop_app(Path(tmp) / "noop")
        for poll in reply_polls:
            ours = one_run(dep, app, {**PRESET, "num-clients": n, "num-server-rounds": rounds, "reply-poll": poll},
                           out, f"hasa-poll{poll:g}")
            floor = one_run(dep, noop, {"num-clients": n, "num-server-rounds": rounds, "reply-poll": poll},
                            out, f"noop-poll{poll:g}")
            report["runs"].append({"reply_poll_s": poll, "hasa": ours, "noop": floor,
                                   "ratio_to_noop": ours["median_round_s"] / floor["median_round_s"],
                                   "ratio_interval_95": ratio_interval(compared(ours["rounds_s"]),
                                                                      compared(floor["rounds_s"])),
                                   "speedup_vs_before": BEFORE / ours["median_round_s"]})
    write_json_atomic(out / "deploy.json", report)
    (out / "deploy.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Deployment on 127.0.0.1: SuperLink + {len(report['caps'])} SuperNodes (caps "
             f"{', '.join(map(str, report['caps']))}, `--isolation subprocess`), {report['rounds']} rounds, "
             f"SuperExec poll {report['superexec_poll_s']:g} s, {report['cpus']} CPUs. Median of rounds "
             f"2..{report['rounds'] - 1}.", "",
             "| reply-poll | hasa-flwr s/round | no-op s/round | ratio (95% bootstrap interval) | vs 26 s before | ClientApp CPU s "
             "(hasa / no-op, median) | ClientApp lifetime s (hasa / no-op, median) |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        h, z = r["hasa"], r["noop"]
        bounds = r.get("ratio_interval_95") or (  # a deploy.json written before the interval was recorded
            ratio_interval(compared(h["rounds_s"]), compared(z["rounds_s"])) if "rounds_s" in h else None)
        interval = "{:.2f}-{:.2f}".format(*bounds) if bounds else "-"
        lines.append(f"| {r['reply_poll_s']:g} s | {h['median_round_s']:.2f} | {z['median_round_s']:.2f} | "
                     f"{r['ratio_to_noop']:.2f} ({interval}) | {r['speedup_vs_before']:.1f}x faster | {h['clientapp_cpu_s']:.2f} / "
                     f"{z['clientapp_cpu_s']:.2f} | {h['clientapp_lifetime_s']:.2f} / {z['clientapp_lifetime_s']:.2f} |")
    return "\n".join(lines) + "\n"
