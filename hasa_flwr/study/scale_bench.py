"""`hasa bench scale`: a text federation of M clients at fraction-train f, in simulation.

For each M: one `flwr run` with its own SuperLink (own FLWR_HOME and ports), a fixed vocabulary
(the synthetic corpus shares one word pool, so the model does not grow with M), and a sampler that
sums the resident memory of every process carrying this bench's environment marker (CLI,
SuperLink, simulation, Ray's daemons and workers). Reports seconds per round, server seconds per
round (slicing, checking, aggregation), bytes of model arrays per round, peak RSS, and the final
evaluation over all M clients. Also times the allocation alone at 10^6 clients (a pure function).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hasa_flwr.method.allocation import allocate
from hasa_flwr.study.launch import app_defaults, flwr_run, merge_config
from hasa_flwr.study.processes import MARKER, marked_pids, private_flower, rss_bytes
from hasa_flwr.federation.results import write_json_atomic

class PeakRss(threading.Thread):
    """The largest sum of RSS over the marked processes, sampled every ``interval`` s."""

    def __init__(self, value: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.value, self.interval, self.peak = value, interval, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, sum(rss_bytes(p) for p in marked_pids(self.value)))
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=10)
        return self.peak


def allocation_seconds(num_clients: int = 1_000_000, repeats: int = 3) -> float:
    """The fastest of ``repeats`` HASA allocations of ``num_clients`` clients (scores, sizes, caps)."""
    rng = np.random.default_rng(0)
    scores, sizes = rng.random(num_clients), rng.integers(40, 1200, num_clients)
    caps = np.full(num_clients, 0.8)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        allocate("hasa", scores, sizes, budget=0.5, w_min=0.2, w_max=0.8, caps=caps)
        best = min(best, time.perf_counter() - t)
    return best


def bench_one(app: Path, config: dict[str, Any], num_clients: int, work: Path, timeout: float) -> dict[str, Any]:
    with private_flower() as env:
        sampler = PeakRss(env[MARKER])
        sampler.start()
        t0 = time.perf_counter()
        try:
            with (work / f"m-{num_clients}.log").open("w") as log:
                outcome = flwr_run(app, {**config, "num-clients": num_clients,
                                         "results-dir": str(work / f"m-{num_clients}")},
                                   num_supernodes=num_clients, env=env, log=log, timeout=timeout,
                                   federation_config=f"num-supernodes={num_clients} client-resources-num-cpus=1")
        finally:
            wall = time.perf_counter() - t0
            peak = sampler.stop()
    if outcome.results is None:
        raise RuntimeError(f"M={num_clients}: {outcome.error or 'no results.json'} (log: {work / f'm-{num_clients}.log'})")
    res = json.loads(outcome.results.read_text())
    hist = res["history"]
    rounds = [h for h in hist[:-1]] or hist  # the last row also holds the final evaluation of all M clients
    return {"clients": num_clients, "trained_per_round": statistics.median(len(h["trained"]) for h in hist),
            "seconds_per_round": statistics.median(h["seconds"] for h in rounds),
            "server_seconds_per_round": statistics.median(h["server_seconds"] for h in hist),
            "bytes_per_round": statistics.median(h["bytes"] for h in hist),
            "final_round_seconds": hist[-1]["seconds"], "peak_rss_gib": peak / 2**30, "wall_seconds": wall,
            "final_mean": res["summary"]["mean"], "evaluated": hist[-1]["clients"]}


def bench_scale(app: Path, clients: list[int], *, rounds: int, fraction: float, sets: dict[str, Any], out: Path,
                timeout: float = 3600.0, say=print) -> dict[str, Any]:
    app = Path(app).absolute()
    config = merge_config(app_defaults(app), {"dataset": "synthetic", "num-server-rounds": rounds,
                                              "fraction-train": fraction, "save-model": False,
                                              "wait-seconds": 600.0, **sets})
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"rounds": rounds, "fraction_train": fraction, "sets": sets, "cpus": os.cpu_count(),
                              "rows": []}
    alloc = allocation_seconds()
    result["allocation_seconds_1e6_clients"] = alloc
    say(f"allocation of 10^6 clients: {alloc:.3f} s")
    for m in clients:
        say(f"M={m}: flwr run, {rounds} rounds at fraction-train {fraction} ...")
        row = bench_one(app, config, m, out, timeout)
        result["rows"].append(row)
        say(f"M={m}: {row['seconds_per_round']:.2f} s/round ({row['trained_per_round']:g} trained), server "
            f"{row['server_seconds_per_round']:.3f} s/round, {row['bytes_per_round'] / 1e6:.2f} MB/round, "
            f"peak RSS {row['peak_rss_gib']:.2f} GiB, final evaluation of {row['evaluated']} clients "
            f"{row['final_round_seconds']:.1f} s")
        write_json_atomic(out / "scale.json", result)
    (out / "scale.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['rounds']} rounds, fraction-train {result['fraction_train']}, {result['cpus']} CPUs; "
             f"allocation of 10^6 clients: {result['allocation_seconds_1e6_clients']:.3f} s", "",
             "| clients | trained/round | s/round | server s/round | MB/round | peak RSS GiB | final evaluation s |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['clients']} | {r['trained_per_round']:g} | {r['seconds_per_round']:.2f} | "
                     f"{r['server_seconds_per_round']:.3f} | {r['bytes_per_round'] / 1e6:.2f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['final_round_seconds']:.1f} |")
    return "\n".join(lines) + "\n"
