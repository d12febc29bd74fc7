"""`hasa bench overhead`: how much wall time the Flower simulation engine adds to a round.

1. One real `flwr run` (simulation engine, Ray) of the preset for ``rounds`` rounds; its per-round wall
   times come from results.json ``history[].seconds`` (configure_train -> aggregate_evaluate on the
   server: slicing, sending, client training, aggregation, client evaluation). Round 1 is warm-up
   (actor start, first import, data load) and is excluded when rounds > 1; with rounds >= 3 the final
   round (which adds a full-width evaluation) is left out of the headline too.
2. The same rounds as a plain PyTorch loop in this process: same clients, widths (read from that
   run's results.json), initialisation, seeds, epochs, batch size and optimiser; slicing and
   aggregation with the same pure functions (subnet.extract, aggregation.aggregate) and evaluation
   as the clients do it (prefix subnet on the test split, plus full width in the final round); torch
   threads = what Ray gives each actor (client-resources-num-cpus). Both must reach identical
   accuracies (checked and printed).
3. ratio = fastest Flower round / fastest plain round (other processes on a shared machine only ever
   add time), printed as ``overhead ratio: X.XX``, and the ratio of mean round times.
4. Flower's floor: the no-op app (`noop_app`, a ClientApp that imports only Flower and answers at
   once) under the same federation config and the same local SuperLink, one message per client per
   round: what an empty round costs in Flower's simulation (dispatch, Ray, polling). ``ratio above
   floor`` = (fastest Flower round - fastest empty round) / fastest plain round, i.e. the ratio if
   Flower's empty round cost nothing: how much of the overhead is this app's, not the engine's.
5. Where the rest goes: a sampler thread reads /proc every second for every process under the local
   SuperLink (the ClientApp actor, the simulation process running ServerApp + message queues,
   the SuperLink, Ray's daemons), so the actor's CPU time per round can be compared with the plain
   loop's (same work?) and the other processes' CPU time (taken from training on a machine whose
   cores the actor fills); record conversions, Ray's pickling of (message, context) and the
   ClientApp's per-message setup are timed in-process.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hasa_flwr.study.launch import flwr_run, preflight
from hasa_flwr.study.noop_app import write_noop_app
from hasa_flwr.study.processes import all_pids, cmdline, cpu_seconds, descendants, proc_stat
from hasa_flwr.study.sweep import RunFailed, base_config, hardware

VCE_SCAN_INTERVAL = 0.1  # the simulation engine's scan for new messages (flwr 1.41, hard-coded)


@dataclass
class PlainTimes:
    rounds: list[float] = field(default_factory=list)      # total per round
    train: list[float] = field(default_factory=list)
    evaluate: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)      # select + extract + check + aggregate
    cpu: list[float] = field(default_factory=list)         # process CPU time per round (all threads)
    accuracies: list[float] = field(default_factory=list)  # final round, per partition id


# ----------------------------------------------------------------------------- CPU of Flower's processes

def process_kind(cmd: str) -> str:
    """Which part of the simulation a process is, from its command line (Ray sets proctitles;
    a worker starts as default_worker.py and becomes ``ray::ClientAppActor`` once it hosts one)."""
    if "ClientAppActor" in cmd:
        return "clientapp_actor"
    if "default_worker.py" in cmd or cmd.startswith("ray::"):
        return "ray_other_workers"
    for key, kind in (("flwr-simulation", "serverapp_and_vce"), ("flower-superlink", "superlink"),
                      ("flower-superexec", "superexec"), ("gcs_server", "ray_gcs"), ("raylet", "ray_raylet")):
        if key in cmd:
            return kind
    return "ray_agents" if "ray" in cmd else "other"


class FlowerCpuSampler:
    """Samples, every ``interval`` s in a thread (a few ms of CPU each), the CPU time of every process under the local
    SuperLink (simulation process, Ray's daemons and workers) and the moments rounds end, so CPU
    seconds per process kind can be attributed to the steady-state rounds."""

    def __init__(self, port: str, interval: float = 1.0) -> None:
        self.port, self.interval = str(port), interval
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self.marks: dict[int, float] = {}  # round -> time its evaluation line was seen
        self._stop = None
        self._thread = None
        self._kinds: dict[int, str] = {}
        self.commands: dict[int, str] = {}
        self._root: int | None = None

    def root(self) -> int | None:
        if self._root is not None and proc_stat(self._root) is not None:
            return self._root
        for pid in all_pids():
            cmd = cmdline(pid)
            if "flower-superlink" in cmd and f"--port {self.port}" in cmd:
                self._root = pid
                return self._root
        return None

    def snapshot(self) -> dict[int, tuple[str, float]]:
        root = self.root()
        if root is None:
            return {}
        out = {}
        for pid in descendants(root):
            if (stat := proc_stat(pid)) is not None:
                if pid not in self._kinds or self._kinds[pid] in ("ray_other_workers", "other"):
                    self.commands[pid] = cmdline(pid)  # a Ray worker renames itself once it is an actor
                    self._kinds[pid] = process_kind(self.commands[pid])
                out[pid] = (self._kinds[pid], cpu_seconds(stat))
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.snapshot()))
            self._stop.wait(self.interval)

    def mark_round(self, rnd: int) -> None:
        self.marks[rnd] = time.perf_counter()

    def __enter__(self) -> FlowerCpuSampler:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per process kind used between the samples nearest t0 and t1."""
        if not self.samples:
            return {}
        first = min(self.samples, key=lambda s: abs(s[0] - t0))[1]
        last = min(self.samples, key=lambda s: abs(s[0] - t1))[1]
        out: dict[str, float] = {}
        for pid, (kind, cpu) in last.items():
            before = first[pid][1] if pid in first else 0.0
            out[kind] = out.get(kind, 0.0) + max(0.0, cpu - before)
        return out


class RoundLog:
    """File-like for flwr_run: writes the log, tells the sampler when each round's evaluation is logged."""

    def __init__(self, file, sampler: FlowerCpuSampler) -> None:
        import re

        self.file, self.sampler = file, sampler
        self.pattern = re.compile(r"round (\d+): mean accuracy")

    def write(self, text: str) -> int:
        if m := self.pattern.search(text):
            self.sampler.mark_round(int(m.group(1)))
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()


def default_num_cpus() -> int:
    """Flower's simulation default: 2 CPUs per ClientApp actor."""
    return 2


def plain_loop(settings, widths: list[float], *, num_threads: int) -> PlainTimes:
    """The federated computation of ``settings`` without Flower, timed per round and per part."""
    import torch

    from hasa_flwr.method.aggregation import Update, aggregate, check_update
    from hasa_flwr.method.subnet import deployed_units, extract, hash_seed, trained_units
    from hasa_flwr.method.train import OrderedDropout, evaluate, train

    torch.set_num_threads(num_threads)
    fed = settings.load_data()
    sizes = settings.sizes
    model = settings.initial_model(fed.num_classes, fed.input_shape)
    spec = model.slicing_spec()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def sub_model(width: float, params: dict[str, torch.Tensor]) -> torch.nn.Module:
        m = settings.build(fed.num_classes, width, fed.input_shape)
        m.load_state_dict(params)
        return m

    deployed = deployed_units(settings.extraction, dict(enumerate(widths)), sizes)
    out = PlainTimes()
    for rnd in range(1, settings.num_rounds + 1):
        t_round, c_round = time.perf_counter(), time.process_time()
        t_server = t_train = t_eval = 0.0
        updates = []
        for pid, (client, width) in enumerate(zip(fed.clients, widths)):
            t0 = time.perf_counter()
            idx = trained_units(settings.extraction, deployed, pid, width, sizes, server_round=rnd, seed=settings.seed)
            sub = extract(state, spec, idx, sizes)
            t1 = time.perf_counter()
            local = sub_model(width, sub)
            ordered = None
            if settings.extraction == "ordered":
                ordered = OrderedDropout(settings.model, fed.num_classes, sizes, width, scaler=settings.scaler,
                                         input_shape=fed.input_shape)
            train(local, client.x_train, client.y_train, epochs=settings.local_epochs, batch_size=settings.batch_size,
                  lr=settings.lr, optimizer=settings.optimizer, momentum=settings.momentum,
                  seed=hash_seed(settings.seed, rnd, pid), ordered=ordered)
            t2 = time.perf_counter()
            updates.append(Update(idx, local.state_dict(), float(client.n_train)))
            t_server += t1 - t0
            t_train += t2 - t1
        t0 = time.perf_counter()
        for u in updates:
            check_update(u, state, spec, sizes)
        state = aggregate(state, updates, spec, sizes, settings.aggregation)
        t_server += time.perf_counter() - t0
        t0 = time.perf_counter()
        final = rnd == settings.num_rounds
        accs = []
        for pid, (client, width) in enumerate(zip(fed.clients, widths)):
            mine = sub_model(width, extract(state, spec, deployed[pid], sizes))  # the subnet the client evaluates
            accs.append(evaluate(mine, client.x_test, client.y_test)["accuracy"])
            if final:
                evaluate(sub_model(1.0, state), client.x_test, client.y_test)
        t_eval = time.perf_counter() - t0
        out.rounds.append(time.perf_counter() - t_round)
        out.cpu.append(time.process_time() - c_round)
        out.train.append(t_train)
        out.evaluate.append(t_eval)
        out.server.append(t_server)
        out.accuracies = accs
    return out


def message_costs(settings, config: dict[str, Any], widths: list[float]) -> dict[str, float]:
    """Per-round costs Flower adds around the same computation, measured in this process.

    A round is what the run sends: one train message per client whose reply also carries the
    evaluation of the model it received (one exchange, the default), or with one-exchange=false a
    train and an evaluate message (the evaluate one holding the full model).
    - records: state dict <-> ArrayRecord conversions (server and client side);
    - pickle: Ray's (cloud)pickling of (message, context) to the actor and of the reply back, with bytes;
    - setup: the ClientApp's per-message setup (run config parsing, cached data lookup).
    """
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

    try:
        from ray import cloudpickle as cp
    except ImportError:  # pragma: no cover
        import pickle as cp
    from hasa_flwr.federation import client as client_mod
    from hasa_flwr.method.subnet import extract, select_units

    fed = settings.load_data()
    sizes = settings.sizes
    model = settings.initial_model(fed.num_classes, fed.input_shape)
    state = model.state_dict()
    spec = model.slicing_spec()
    run_config = {k: v for k, v in config.items()}
    costs = {"records_s": 0.0, "pickle_s": 0.0, "setup_s": 0.0, "bytes_to_clients": 0.0, "bytes_from_clients": 0.0}

    def ctx(pid: int) -> Context:
        state = RecordDict()
        if fed.vocab is not None:  # what the vocabulary round leaves in every node's state
            state.config_records[client_mod.VOCAB_STATE] = ConfigRecord({"words": fed.vocab})
        return Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid,
                                                                "num-partitions": settings.num_clients},
                       state=state, run_config=run_config)

    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("run_id", 1), ("node_id", 0), ("task_id", 1)):  # Message() reads them; this
        if getattr(TaskIdentity, f"_{attr}") is None:                      # process is no Flower task
            setattr(TaskIdentity, attr, value)
    full_record = ArrayRecord(state)  # evaluate: one record of the full model for every client
    t0 = time.perf_counter()
    full_record.to_torch_state_dict()  # the strategy's configure_train reads the global model once
    costs["records_s"] += time.perf_counter() - t0
    fused = settings.fused_evaluation
    for pid, width in enumerate(widths):
        c = ctx(pid)
        t0 = time.perf_counter()
        for _ in range(1 if fused else 2):  # the train message (and the evaluate message)
            client_mod.client_data(settings, c)
        costs["setup_s"] += time.perf_counter() - t0
        idx = select_units("prefix", width, sizes)
        sub = extract(state, spec, idx, sizes)
        # train: server packs the subnet, client unpacks it, packs its update, server unpacks that
        t0 = time.perf_counter()
        rec = ArrayRecord(sub)
        rec.to_torch_state_dict()
        back = ArrayRecord(sub)
        back.to_torch_state_dict()
        if not fused:  # evaluate: the client unpacks the full record (prefix model)
            full_record.to_torch_state_dict()
        costs["records_s"] += time.perf_counter() - t0
        msgs = [(Message(RecordDict({"arrays": rec, "config": ConfigRecord({"width": width, "server-round": 2,
                                                                            "evaluate-first": fused})}),
                         dst_node_id=pid + 1, message_type="train"), "bytes_to_clients")]
        if not fused:
            msgs.append((Message(RecordDict({"arrays": full_record, "config": ConfigRecord({"width": width})}),
                                 dst_node_id=pid + 1, message_type="evaluate"), "bytes_to_clients"))
        for msg, key in msgs:
            msg.metadata.__dict__["_message_id"] = f"bench-{pid}-{key}"
            t0 = time.perf_counter()
            blob = cp.dumps((msg, str(pid), c))
            cp.loads(blob)
            costs["pickle_s"] += time.perf_counter() - t0
            costs[key] += len(blob)
            evaluated = {"eval-accuracy": 0.1, "eval-loss": 1.0} if fused else {}
            reply_content = RecordDict({"arrays": back, "metrics": MetricRecord({"num-examples": 1, **evaluated})}) \
                if msg.metadata.message_type == "train" else RecordDict({"metrics": MetricRecord({"accuracy": 0.1})})
            reply = Message(reply_content, reply_to=msg)
            t0 = time.perf_counter()
            blob = cp.dumps((reply, c))
            cp.loads(blob)
            costs["pickle_s"] += time.perf_counter() - t0
            costs["bytes_from_clients"] += len(blob)
    return costs


def simulation_resources(num_clients: int, cpus: int, one_actor: bool) -> tuple[str, int]:
    """The federation config and how many actors Flower will start: it sizes the pool from Ray's CPUs,
    which ``one_actor`` limits to one actor's."""
    config = f"num-supernodes={num_clients} client-resources-num-cpus={cpus}"
    if one_actor:
        return f"{config} init-args-num-cpus={cpus}", 1
    return config, max(1, (os.cpu_count() or 1) // cpus)


def simulation_floor(work: Path, *, rounds: int, num_clients: int, federation_config: str,
                     env: dict[str, str] | None = None, timeout: float | None = None) -> list[float]:
    """Seconds of each round of the no-op app in simulation: Flower's own cost of a round, no training."""
    noop = write_noop_app(work / "noop")
    overrides = {"num-server-rounds": rounds, "num-clients": num_clients,
                 "results-dir": str(work / "noop-results")}
    with (work / "noop.log").open("w") as log:
        outcome = flwr_run(noop, overrides, num_supernodes=num_clients, federation_config=federation_config,
                           log=log, env=env, timeout=timeout)
    if outcome.results is None:
        why = outcome.failure
        raise RunFailed(f"the no-op Flower run failed: {why} (log: {work / 'noop.log'})")
    return [h["seconds"] for h in json.loads(outcome.results.read_text())["history"]]


def overhead(app: Path, *, preset: str | None, rounds: int, sets: dict[str, Any], num_cpus: int | None = None,
             plain_threads: int | None = None, repeat: int = 1, env: dict[str, str] | None = None,
             keep: Path | None = None, one_actor: bool = False, say=print) -> dict[str, Any]:
    """Run the benchmark; returns every number it printed (also written to ``keep``/overhead.json).

    ``one_actor``: Ray gets only the actor's CPUs (init-args-num-cpus), so one actor trains and the
    other cores are left to Flower's own processes: with fewer threads than cores, does Flower's
    overhead go away when its processes need not take CPU from training?"""
    app = Path(app).absolute()
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    cpus = num_cpus or default_num_cpus()
    threads = plain_threads or cpus
    config = base_config(app, preset, {**sets, "num-server-rounds": rounds})
    work = Path(keep).absolute() if keep else Path(tempfile.mkdtemp(prefix="hasa-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config["results-dir"] = str(work / "results")
    settings = preflight(config)
    fed_cfg, actors = simulation_resources(settings.num_clients, cpus, one_actor)
    say(f"flower: flwr run {app} ({settings.dataset}, {settings.strategy}, {rounds} rounds, {fed_cfg}; "
        f"{actors} concurrent actor(s) on {os.cpu_count()} CPUs) ...")
    port = {**os.environ, **(env or {})}.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091")
    t0 = time.perf_counter()
    with (work / "flwr.log").open("w") as log, FlowerCpuSampler(port) as sampler:
        outcome = flwr_run(app, config, num_supernodes=settings.num_clients, federation_config=fed_cfg,
                           log=RoundLog(log, sampler), env=env)
    wall = time.perf_counter() - t0
    if outcome.results is None:
        why = outcome.failure
        raise RunFailed(f"the Flower run failed: {why} (log: {work / 'flwr.log'})")
    res = json.loads(outcome.results.read_text())
    widths = [c["width"] for c in sorted(res["clients"], key=lambda c: c["partition_id"])]
    timed = list(range(2, rounds + 1)) if rounds > 1 else [1]
    # rounds 2..R-1 do identical work (the final round adds the full-width evaluation)
    steady = timed[:-1] if len(timed) > 1 else timed
    flower_by_round = {h["round"]: h["seconds"] for h in res["history"]}
    flower_rounds = [flower_by_round[r] for r in timed]
    # one actor takes the clients in turn: the sum of their own reports is the ClientApp's share of the round
    in_clients = {h["round"]: sum(h.get("client_seconds", {}).values()) for h in res["history"]} if actors == 1 else {}
    say(f"floor: the no-op app, same federation ({settings.num_clients} clients, {rounds} rounds) ...")
    floor_rounds = simulation_floor(work, rounds=rounds, num_clients=settings.num_clients,
                                    federation_config=fed_cfg, env=env)
    floor_s = min(floor_rounds[r - 1] for r in steady)

    say(f"plain: the same {rounds} round(s) in one process, torch threads = {threads}"
        + (f", {repeat} times" if repeat > 1 else "") + " ...")
    plains = [plain_loop(settings, widths, num_threads=threads) for _ in range(max(1, repeat))]
    # contention from other processes only ever adds time: the fastest sample is the best estimate
    flower_s = min(flower_by_round[r] for r in steady)
    plain_s, plain_best, best_round = min(((q.rounds[r - 1], q, r) for q in plains for r in steady),
                                          key=lambda t: t[0])
    plain_mean = float(np.mean([q.rounds[r - 1] for q in plains for r in timed]))
    fed_acc = np.array([c["accuracy"] for c in sorted(res["clients"], key=lambda c: c["partition_id"])])
    max_acc_diff = float(np.max(np.abs(fed_acc - np.array(plains[0].accuracies))))

    costs = message_costs(settings, config, widths)
    plain_cpu = float(np.mean([q.cpu[r - 1] for q in plains for r in timed]))
    plain_cores = float(np.mean([q.cpu[r - 1] / q.rounds[r - 1] for q in plains for r in timed]))
    # CPU seconds per round of Flower's processes between the log lines ending round 1 and round R
    # (streamed, so the window is approximate); the actor's CPU at the plain loop's rate = its busy time
    flower_cpu: dict[str, float] = {}
    window_s = None
    if rounds > 1 and 1 in sampler.marks and rounds in sampler.marks:
        window_s = (sampler.marks[rounds] - sampler.marks[1]) / (rounds - 1)
        window = sampler.cpu_between(sampler.marks[1], sampler.marks[rounds])
        flower_cpu = {k: v / (rounds - 1) for k, v in sorted(window.items(), key=lambda kv: -kv[1])}
    actor_busy = flower_cpu.get("clientapp_actor", 0.0) / plain_cores if flower_cpu else None
    report = {
        "preset": preset, "overrides": sets, "rounds": rounds, "timed_rounds": timed, "steady_rounds": steady,
        "strategy": settings.strategy, "dataset": settings.dataset, "federation_config": fed_cfg,
        "concurrent_actors": actors, "torch_threads": threads, "plain_repeats": len(plains), "hardware": hardware(),
        "load_average": list(os.getloadavg()),
        "flower_round_seconds": flower_rounds, "flower_best_round_s": flower_s,
        "flower_mean_round_s": float(np.mean(flower_rounds)),
        "clientapp_round_seconds": [in_clients[r] for r in timed] if in_clients else None,
        "around_clientapp_s": float(np.median([flower_by_round[r] - in_clients[r] for r in steady]))
        if in_clients else None,
        "flower_run_wall_s": wall, "flower_startup_and_teardown_s": wall - sum(h["seconds"] for h in res["history"]),
        "plain_round_seconds": [[q.rounds[r - 1] for r in timed] for q in plains], "plain_best_round_s": plain_s,
        "plain_mean_round_s": plain_mean, "plain_cpu_utilisation": plain_cores / threads,
        "plain_parts_s": {"train": plain_best.train[best_round - 1], "evaluate": plain_best.evaluate[best_round - 1],
                          "slice_and_aggregate": plain_best.server[best_round - 1]},
        "ratio": flower_s / plain_s, "ratio_of_means": float(np.mean(flower_rounds)) / plain_mean,
        "difference_s": flower_s - plain_s,
        "floor_round_seconds": floor_rounds, "floor_best_round_s": floor_s,
        "ratio_above_floor": (flower_s - floor_s) / plain_s,
        "in_process_s": {"array_record_conversions": costs["records_s"], "ray_pickling": costs["pickle_s"],
                         "clientapp_setup": costs["setup_s"]},
        "polling_expected_s": VCE_SCAN_INTERVAL,  # the replies wake the ServerApp (WakingGrid): no polling of ours
        "bytes_per_round": {"to_clients": costs["bytes_to_clients"], "from_clients": costs["bytes_from_clients"]},
        "cpu_window_round_s": window_s, "flower_cpu_s_per_round": flower_cpu, "plain_cpu_s_per_round": plain_cpu,
        "plain_cores_used": plain_cores, "actor_busy_s_per_round": actor_busy,
        "flower_processes": {str(pid): [sampler._kinds.get(pid), cmd[:160]] for pid, cmd in sampler.commands.items()},
        "same_result": {"max_abs_accuracy_difference": max_acc_diff},
        "flower_log": str(work / "flwr.log"), "results": str(outcome.results),
    }
    (work / "overhead.json").write_text(json.dumps(report, indent=1) + "\n")
    for line in format_report(report):
        say(line)
    return report


def format_report(r: dict[str, Any]) -> list[str]:
    p, ip, cpu = r["plain_parts_s"], r["in_process_s"], r["flower_cpu_s_per_round"]
    steady = ", ".join(str(x) for x in r["steady_rounds"])
    plain_all = "; ".join(", ".join(f"{s:.3f}" for s in rep) for rep in r["plain_round_seconds"])
    lines = [
        f"flower round wall time: {r['flower_best_round_s']:.3f} s (fastest of round(s) {steady}; rounds "
        f"{r['timed_rounds'][0]}-{r['timed_rounds'][-1]}: {', '.join(f'{s:.3f}' for s in r['flower_round_seconds'])})",
        f"plain PyTorch loop:     {r['plain_best_round_s']:.3f} s (train {p['train']:.3f}, "
        f"evaluate {p['evaluate']:.3f}, slice + aggregate {p['slice_and_aggregate']:.3f}; all: {plain_all})",
        f"overhead ratio: {r['ratio']:.2f}  (target <= 1.10; difference {r['difference_s']:+.3f} s per round; "
        f"ratio of mean round times {r['ratio_of_means']:.2f})",
    ]
    if "floor_best_round_s" in r:  # overhead.json files from before the floor was measured lack it
        lines.append(f"Flower's floor: an empty round (no-op ClientApp, same federation) {r['floor_best_round_s']:.3f} s; "
                     f"ratio above the floor {r['ratio_above_floor']:.2f} (Flower round minus empty round, over the "
                     "plain round)")
    if r.get("clientapp_round_seconds"):  # overhead.json files from before client_seconds lack it
        lines.append(f"the ClientApp's own work (the clients' reports, in turn on one actor): "
                     f"{', '.join(f'{s:.3f}' for s in r['clientapp_round_seconds'])} s in rounds "
                     f"{r['timed_rounds'][0]}-{r['timed_rounds'][-1]} (plain loop's train + evaluate: "
                     f"{p['train'] + p['evaluate']:.3f} s); around it (dispatch, the engine's scan, slicing, "
                     f"aggregation): {r['around_clientapp_s']:.3f} s per round (median)")
    if cpu and r["actor_busy_s_per_round"] is not None:
        others = {k: v for k, v in cpu.items() if k != "clientapp_actor"}
        busy = r["actor_busy_s_per_round"]
        win = r["cpu_window_round_s"]
        lines += [
            f"where the rest goes (per round, rounds 2-{r['rounds']}, from /proc and the streamed log):",
            f"  a Flower round lasted {win:.3f} s; the ClientApp actor used {cpu.get('clientapp_actor', 0):.2f} CPU s "
            f"(plain loop: {r['plain_cpu_s_per_round']:.2f}), i.e. {busy:.3f} s of computing at the plain loop's "
            f"{r['plain_cores_used']:.2f} cores",
            f"  so {win - busy:+.3f} s per round the actor waited or was slowed: message dispatch through the "
            f"SuperLink state and Ray, polling ({r['polling_expected_s']:.2f} s at most: Flower's {VCE_SCAN_INTERVAL:g} s "
            "scan to dispatch; each stored reply wakes the ServerApp), and CPU taken by Flower's "
            "other processes:",
            "    " + ", ".join(f"{k} {v:.2f}" for k, v in others.items() if v >= 0.005)
            + f" CPU s (total {sum(others.values()):.2f} on {r['hardware']['cpu_count']} cores)",
        ]
    lines += [
        f"  measured in-process: ArrayRecord <-> state dict {ip['array_record_conversions']:.3f} s, Ray pickling of "
        f"message + context {ip['ray_pickling']:.3f} s ({r['bytes_per_round']['to_clients'] / 2**20:.1f} MiB to "
        f"clients, {r['bytes_per_round']['from_clients'] / 2**20:.1f} MiB back), ClientApp setup "
        f"{ip['clientapp_setup']:.3f} s",
        f"flwr run wall time {r['flower_run_wall_s']:.1f} s, of which {r['flower_startup_and_teardown_s']:.1f} s "
        "outside the rounds (CLI, SuperLink, Ray start, actors, query round, teardown)",
        "same computation: max |accuracy difference| Flower vs plain = "
        f"{r['same_result']['max_abs_accuracy_difference']:.2g}",
        f"load average after the benchmark: {', '.join(f'{x:.2f}' for x in r['load_average'])} on "
        f"{r['hardware']['cpu_count']} CPUs; the plain loop got {100 * r['plain_cpu_utilisation']:.0f}% of its "
        f"{r['torch_threads']} threads' CPU time"
        + (" (well below 100%: other processes share the cores; timings are noisy)"
           if r["plain_cpu_utilisation"] < 0.8 else ""),
    ]
    if math.isfinite(r["ratio"]) and r["ratio"] > 1.10:
        lines.append("note: above the 1.10 target")
    return lines
