"""The HASA strategy for Flower's Message API, and the query round that precedes training.

Allocation, slicing and aggregation are pure functions elsewhere; this module only moves their
inputs and outputs through Flower messages: one subnet message per node, overlap-aware
aggregation of the replies, federated evaluation of each client's own width.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from hasa_flwr.method.aggregation import Update, aggregate, check_update
from hasa_flwr.data import LOCAL, client_order, read_vocab, vocab_hash
from hasa_flwr.data.files import resolve_path
from hasa_flwr.data.text import build_vocab
from hasa_flwr.method.metrics import summarize
from hasa_flwr.method.model_files import client_folder_name
from hasa_flwr.method.participation import round_sample
from hasa_flwr.method.subnet import Indices, Spec, deployed_units, extract, hash_seed, prefix_state, trained_units


class FederationError(RuntimeError):
    """The federation cannot run as configured (missing nodes, a client's data error...)."""


def reply_metrics(msg: Message, required: Iterable[str] = ()) -> dict[str, float]:
    """A reply's ``metrics`` record as floats. A device's reply is untrusted input: a missing record
    or key, a list or a non-finite value is a ValueError (the reply is rejected, the run goes on)."""
    record = msg.content.metric_records.get("metrics")
    if record is None:
        raise ValueError("the reply has no metrics record")
    metrics = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {key!r} is {value!r}, not a finite number")
        metrics[key] = float(value)
    missing = [k for k in required if k not in metrics]
    if missing:
        raise ValueError(f"the reply's metrics lack {', '.join(missing)}")
    return metrics


@dataclass
class ClientInfo:
    """What the server knows about one node, from the query round and the allocation."""

    node_id: int
    partition_id: int               # the server's number for this client (see data.client_order)
    name: str
    n_train: int
    n_test: int
    label_counts: np.ndarray | None  # None under secure-stats: the histogram stays on the device
    node_cap: float | None          # the SuperNode's own `max-width`, if it set one
    n_train_rows: int = 0           # training titles/images: what the server numbers clients by
    cap: float = 1.0
    score: float = math.nan
    rank: float = math.nan
    width: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Node ids once ``expected`` nodes are connected; FederationError (never a hang) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of {expected} SuperNodes connected within {timeout:g}s: start "
                f"{expected} SuperNodes (deployment) or run with --federation-config "
                f"\"num-supernodes={expected}\" (simulation), or lower num-clients")
        time.sleep(0.5)


def ask(grid: Grid, contents: dict[int, RecordDict], message_type: str, timeout: float) -> dict[int, RecordDict]:
    """Send one message per node and return every reply's content; any failure is fatal here
    because the query round decides the allocation for everybody."""
    messages = [Message(content=c, message_type=message_type, dst_node_id=n) for n, c in contents.items()]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=timeout)}
    for node in contents:
        if node not in replies:
            raise FederationError(f"node {node} gave no reply to {message_type} within {timeout:g}s: check that its "
                                  "SuperNode is running and can reach the SuperLink")
        if replies[node].has_error():
            reason = replies[node].error.reason.strip().splitlines()
            raise FederationError(f"node {node} failed in {message_type}: {reason[-1] if reason else 'unknown error'}")
    return {n: m.content for n, m in replies.items()}


def agree_vocabulary(grid: Grid, nodes: list[int], vocab_path: str, min_count: int,
                     timeout: float) -> tuple[list[str], str]:
    """The vocabulary round: pooled training word counts -> the words kept (or the shared file).

    Returns the vocabulary and where it came from ("round" or "file")."""
    if vocab_path:
        return read_vocab(resolve_path(vocab_path, "vocab-path")), "file"
    replies = ask(grid, {n: RecordDict() for n in nodes}, "query.vocab", timeout)
    pooled: Counter = Counter()
    for content in replies.values():
        words, counts = list(content["info"]["words"]), list(content["counts"]["counts"])
        if len(words) != len(counts):
            raise FederationError(f"client {content['info']['name']!r} sent {len(words)} words with {len(counts)} "
                                  "counts in the vocabulary round")
        pooled.update(dict(zip(words, (int(c) for c in counts))))
    return build_vocab(pooled, min_count), "round"


def query_stats(grid: Grid, nodes: list[int], num_clients: int, dataset: str, timeout: float,
                vocab: list[str] | None = None,
                send_words: bool = True) -> tuple[list[ClientInfo], int, tuple[int, ...] | None]:
    """Sizes, integer label counts and device cap of every node (sent once), numbered by the server;
    also the number of classes and the images' (channels, height, width) (None for text), which
    the server builds the model for.

    Text clients first receive the agreed vocabulary (the words, unless every party reads the same
    vocab-path; its hash always, so a device with another vocabulary is caught). Image clients
    send their shape and a hash of their class list: all must agree."""
    content = RecordDict()
    if vocab is not None:
        agreed = {"hash": vocab_hash(vocab), **({"words": vocab} if send_words else {})}
        content = RecordDict({"vocab": ConfigRecord(agreed)})
    replies = ask(grid, {n: content for n in nodes}, "query.stats", timeout)
    clients, num_classes, pids = [], set(), []
    for node, reply in replies.items():
        m, c = reply["stats"], reply["info"]
        if int(m["num-partitions"]) not in (-1, num_clients):
            raise FederationError(f"node {node} says num-partitions={int(m['num-partitions'])} but num-clients="
                                  f"{num_clients}: make them equal")
        cap = float(m["max-width"])
        pids.append(int(m["partition-id"]))
        clients.append(ClientInfo(node_id=node, partition_id=-1, name=str(c["name"]),
                                  n_train=int(m["n-train"]), n_test=int(m["n-test"]),
                                  label_counts=np.asarray(m["label-counts"], dtype=np.int64)
                                  if "label-counts" in m else None,
                                  node_cap=cap if cap > 0 else None, n_train_rows=int(m["n-train-rows"])))
        num_classes.add(int(m["num-classes"]))
    given = sorted(p for p in pids if p != LOCAL)
    if given and len(set(given)) != len(given):
        raise FederationError(f"partition ids {given} are not all different: give every SuperNode its own partition-id")
    names = [c.name for c in clients]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        nodes_of = {n: [c.node_id for c in clients if c.name == n] for n in twice}
        raise FederationError(f"client name(s) {', '.join(repr(n) for n in twice)} used by more than one device "
                              f"(nodes {nodes_of}): give every SuperNode its own client-name")
    folders: dict[str, list[str]] = {}
    for name in names:  # each client's subnet is saved under its name as a folder name
        folders.setdefault(client_folder_name(name), []).append(name)
    clash = next((group for group in folders.values() if len(group) > 1), None)
    if clash:
        raise FederationError(f"client names {' and '.join(repr(n) for n in clash)} would save their models to the "
                              f"same folder {client_folder_name(clash[0])!r}: give those SuperNodes client-names "
                              "of letters, digits, '-' and '_' that differ")
    lengths = {len(c.label_counts) for c in clients if c.label_counts is not None}
    if len(lengths) > 1:
        raise FederationError(f"clients sent label histograms of different lengths ({sorted(lengths)}): give every "
                              "node the same app version and run config")
    shape = agreed_images(replies)
    if len(num_classes) != 1:
        raise FederationError(f"clients disagree on the number of classes/vocabulary ({sorted(num_classes)}): "
                              "give every node the same run config")
    order = client_order(dataset, [(p, c.n_train_rows, c.name) for p, c in zip(pids, clients)])
    ordered = [clients[i] for i in order]
    for number, c in enumerate(ordered):  # the server's numbering seeds training and indexes width-cap
        c.partition_id = number
    return ordered, num_classes.pop(), shape


def agreed_images(replies: dict[int, RecordDict]) -> tuple[int, ...] | None:
    """The (channels, height, width) every image client reported; FederationError if the class
    lists or the shapes differ (a label would mean another class, or the CNN would not fit)."""
    classes = {n: str(r["info"]["classes"]) for n, r in replies.items() if "classes" in r["info"]}
    if len(set(classes.values())) > 1:
        raise FederationError(f"clients have different class lists ({_groups(classes, replies)}): set class-names "
                              "to the federation's classes, comma-separated (a client may lack some)")
    shapes = {n: tuple(int(v) for v in r["stats"]["input-shape"]) for n, r in replies.items()
              if "input-shape" in r["stats"]}
    if len(set(shapes.values())) > 1:
        raise FederationError(f"clients' images differ in shape (channels x height x width: {_groups(shapes, replies)}"
                              "): give every client images of one size and one mode (all RGB or all grayscale)")
    return next(iter(shapes.values()), None)


def _groups(values: dict[int, object], replies: dict[int, RecordDict]) -> str:
    """'1x6x6: node 3 ('a'), node 5 ('b'); 3x6x6: node 4 ('c')': which nodes hold which value."""
    groups: dict[object, list[str]] = {}
    for node, value in sorted(values.items()):
        groups.setdefault(value, []).append(f"node {node} ({str(replies[node]['info']['name'])!r})")
    shown = ["x".join(map(str, v)) if isinstance(v, tuple) else f"list {i}" for i, v in enumerate(groups, 1)]
    return "; ".join(f"{name}: {', '.join(who)}" for name, who in zip(shown, groups.values()))


def full_width_allowed(c: ClientInfo) -> bool:
    """The full-width accuracy is measured only where the device's own cap allows width 1."""
    return c.node_cap is None or c.node_cap >= 1.0


def query_losses(grid: Grid, clients: list[ClientInfo], arrays: ArrayRecord, width: float, timeout: float,
                 spec: Spec, sizes: dict[str, int], config: ConfigRecord | None = None) -> np.ndarray:
    """Mean training loss of the initial supernet's width-``width`` prefix on every client (score=loss).
    Every client is scored at the same width, so a device that may not build it stops the run."""
    for c in clients:
        if c.node_cap is not None and c.node_cap < width:
            raise FederationError(f"score=loss measures every client's loss at width B={width:g}, but client "
                                  f"{c.name!r} has max-width {c.node_cap:g}: raise that SuperNode's max-width to at "
                                  "least B, or use score=jsd or entropy")
    prefix = ArrayRecord(prefix_state(arrays.to_torch_state_dict(), spec, sizes, width))
    content = RecordDict({"arrays": prefix, "config": ConfigRecord({**dict(config or {}), "width": width})})
    replies = ask(grid, {c.node_id: content for c in clients}, "query.loss", timeout)
    return np.array([float(replies[c.node_id]["metrics"]["loss"]) for c in clients])


def answered_node(reply: Message, node_of: dict[str, int]) -> int:
    """The node a reply answers for. A lost node is answered for by the SuperLink itself ("Node
    Unavailable", from another sender id), so replies are matched to the sent messages by reply-to id."""
    return node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def deliver_subnets(grid: Grid, clients: list[ClientInfo], subnets: dict[int, tuple[ArrayRecord, str]],
                    run_id: int, timeout: float) -> dict[str, str]:
    """Deployment: each device receives its own final subnet (never wider than its width) and its
    metadata, and stores them under its node config ``model-dir``. Returns name -> stored path, or
    the reason a device did not store it (the run's results do not depend on it)."""
    messages = {c.node_id: Message(RecordDict({"arrays": subnets[c.node_id][0], "config": ConfigRecord(
                    {"width": c.width, "meta": subnets[c.node_id][1], "run-id": run_id})}),
                    dst_node_id=c.node_id, message_type="query.subnet") for c in clients}
    node_of = {m.metadata.message_id: n for n, m in messages.items()}
    got = {}
    for reply in grid.send_and_receive(list(messages.values()), timeout=timeout):
        got[answered_node(reply, node_of)] = (f"not stored: {reply.error.reason.strip().splitlines()[-1][:300]}" if reply.has_error()
                     else str(reply.content["info"]["path"]))
    stored = {c.name: got.get(c.node_id, "not stored: no reply") for c in clients}
    for name, where in stored.items():
        log(INFO if not where.startswith("not stored") else WARNING, "subnet of %s: %s", name, where)
    return stored


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of a record's arrays on the wire (their serialised data)."""
    return sum(len(a.data) for a in record.values())


class HasaStrategy(Strategy):
    """Per-client subnets of one supernet, aggregated over their overlap.

    ``clients`` must already carry their widths (see ``allocation.allocate``); the strategy
    then only slices, sends, checks and averages.
    """

    def __init__(self, clients: list[ClientInfo], spec: Spec, sizes: dict[str, int], *, extraction: str,
                 aggregation: str, seed: int, num_rounds: int, fused: bool = False, fraction_train: float = 1.0,
                 fraction_evaluate: float = 1.0, min_train_clients: int = 0, deadline: float = 0.0) -> None:
        self.clients = {c.node_id: c for c in clients}
        # partial participation: a seeded sample per round (participation.round_sample); a round with
        # fewer than min_train_clients valid updates stops the run (0: one suffices)
        self.fraction_train, self.fraction_evaluate = fraction_train, fraction_evaluate
        self.min_train_clients, self.deadline = min_train_clients, deadline
        self.spec, self.sizes = spec, sizes
        self.extraction, self.aggregation = extraction, aggregation
        self.seed, self.num_rounds = seed, num_rounds
        self.sent: dict[int, Indices] = {}
        self.outbox: list[tuple[int, Message]] = []  # (node, message) of the current phase
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []
        self.rejected: list[dict[str, object]] = []
        self._round_start = 0.0
        self.phase = "train"
        # fused: one exchange per round. Round r's model is evaluated by the clients as they receive
        # it in round r+1's train message (a prefix train message holds exactly the width-w prefix);
        # the last round's model by one evaluate exchange. Needs prefix units (see fused_evaluation).
        self.fused = fused
        self._train_seconds: dict[int, float] = {}
        self.exchanges = {"train": 0, "evaluate": 0}  # message exchanges made (results.json records them)
        self._losses: dict[int, float] = {}
        self._trained: dict[int, list[int]] = {}  # round -> server numbers whose updates were averaged
        self.offset = 0  # rounds done before this start() (a resumed run): Flower counts from 1 again
        self._server_seconds: dict[int, float] = {}  # slicing + checking + aggregation, per round
        self._bytes: dict[int, int] = {}             # model arrays sent and received, per round
        self._client_seconds: dict[int, dict[str, float]] = {}  # round -> client -> its train message's seconds
        # what each client is evaluated on (and deploys); under `own` also what it trains every round
        self.deployed = deployed_units(extraction, {c.partition_id: c.width for c in clients}, sizes)

    def summary(self) -> None:
        log(INFO, "\t├──> HASA: extraction=%s aggregation=%s", self.extraction, self.aggregation)
        for c in self.clients.values():
            log(INFO, "\t│\tclient %d (%s): n=%d width=%.3f", c.partition_id, c.name, c.n_train, c.width)

    # per-round counters a checkpoint keeps (JSON object keys are strings: rounds go back to int)
    ROUND_MAPS = ("_losses", "_train_seconds", "_trained", "_server_seconds", "_bytes", "_client_seconds")

    def progress(self) -> dict[str, object]:
        """What a checkpoint keeps of this strategy (see checkpoint.py)."""
        return {"history": self.history, "rejected": self.rejected, "exchanges": self.exchanges,
                "client_metrics": {str(c.partition_id): c.metrics for c in self.clients.values()},
                **{name[1:]: {str(k): v for k, v in getattr(self, name).items()} for name in self.ROUND_MAPS}}

    def restore(self, progress: dict, done_rounds: int) -> None:
        """Continue after ``done_rounds`` rounds from a checkpoint's ``progress``."""
        self.offset = done_rounds
        self.history, self.rejected = list(progress["history"]), list(progress["rejected"])
        self.exchanges = dict(progress["exchanges"])
        for name in self.ROUND_MAPS:  # (checkpoints from before client_seconds lack it)
            setattr(self, name, {int(k): v for k, v in progress.get(name[1:], {}).items()})
        # each client's latest evaluation, for results.json when no round is left to run (older
        # checkpoints lack it: those clients then have no current accuracy)
        last = progress.get("client_metrics", {})
        for c in self.clients.values():
            c.metrics = dict(last.get(str(c.partition_id), {}))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self._round_start = start = time.perf_counter()
        self.phase = "train"
        self.state = arrays.to_torch_state_dict()
        messages = []
        for node, c in self.sampled(server_round, self.fraction_train, stream=0).items():
            idx = trained_units(self.extraction, self.deployed, c.partition_id, c.width, self.sizes,
                                server_round=server_round, seed=self.seed)
            self.sent[node] = idx
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "width": c.width,
                                "evaluate-first": self.fused and server_round > 1,
                                "ordered": self.extraction == "ordered",
                                "train-seed": hash_seed(self.seed, server_round, c.partition_id)})
            sub = ArrayRecord(extract(self.state, self.spec, idx, self.sizes))
            messages.append(Message(RecordDict({"arrays": sub, "config": cfg}), dst_node_id=node,
                                    message_type="train"))
        self.outbox = [(m.metadata.dst_node_id, m) for m in messages]
        self.exchanges["train"] += 1
        self._bytes[server_round] = sum(array_bytes(m.content["arrays"]) for m in messages)
        self._server_seconds[server_round] = time.perf_counter() - start
        return messages

    def sampled(self, server_round: int, fraction: float, stream: int) -> dict[int, ClientInfo]:
        """node -> client of this round's seeded sample (every client at fraction 1)."""
        chosen = set(round_sample([c.partition_id for c in self.clients.values()], fraction, self.min_train_clients,
                                  self.seed, server_round, stream))
        return {node: c for node, c in self.clients.items() if c.partition_id in chosen}

    def by_node(self, server_round: int, replies: Iterable[Message]) -> dict[int, Message]:
        """Replies keyed by the node they answer for; logs nodes that failed or gave no reply."""
        node_of = {m.metadata.message_id: node for node, m in self.outbox if m.metadata.message_id}
        got: dict[int, Message] = {}
        for msg in replies:
            node = answered_node(msg, node_of)
            if node not in self.clients:
                log(WARNING, "round %d: ignoring a reply from unknown node %d", server_round, node)
            elif msg.has_error():
                self.reject(server_round, node, f"client error: {msg.error.reason.strip()[-300:]}")
            else:
                got[node] = msg
        failed = {r["node"] for r in self.rejected if (r["round"], r["phase"]) == (server_round, self.phase)}
        for node, _ in self.outbox:
            if node not in got and node not in failed:
                self.reject(server_round, node, f"no reply within the round's deadline ({self.deadline:g}s)")
        # client order, not arrival order (which varies with several actors or devices): sums are then exact
        return dict(sorted(got.items(), key=lambda item: self.clients[item[0]].partition_id))

    def reject(self, server_round: int, node: int, reason: str, phase: str | None = None) -> None:
        c, phase = self.clients[node], phase or self.phase
        log(WARNING, "round %d: no %s result from client %d (%s, node %d): %s", server_round, phase,
            c.partition_id, c.name, node, reason)
        self.rejected.append({"round": server_round, "phase": phase, "partition_id": c.partition_id,
                              "node": node, "reason": reason})

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        start = time.perf_counter()
        updates, losses = [], []
        got = self.by_node(server_round, replies)
        if self.fused and server_round > 1:  # the evaluation of last round's model rode on these replies
            self.record_evaluation(server_round - 1, {n: self.evaluation_metrics(server_round - 1, n, m, "eval-")
                                                      for n, m in got.items()})
        for node, msg in got.items():
            try:
                metrics = reply_metrics(msg, ("num-examples", "train-loss"))
                update = Update(self.sent[node], msg.content["arrays"].to_torch_state_dict(), metrics["num-examples"])
                check_update(update, self.state, self.spec, self.sizes)
            except (KeyError, ValueError, TypeError) as err:
                self.reject(server_round, node, str(err))
                continue
            updates.append(update)
            losses.append((update.weight, metrics["train-loss"]))
            self._trained.setdefault(server_round, []).append(self.clients[node].partition_id)
            if "seconds" in metrics:
                self._client_seconds.setdefault(server_round, {})[str(self.clients[node].partition_id)] = \
                    metrics["seconds"]
        needed = self.min_train_clients or 1
        if len(updates) < needed:
            raise FederationError(f"round {server_round}: {len(updates)} of {len(self.outbox)} sampled clients sent a "
                                  f"valid update within {self.deadline:g}s, fewer than {needed} (min-train-clients="
                                  f"{self.min_train_clients}): raise round-deadline, or lower min-train-clients")
        new = aggregate(self.state, updates, self.spec, self.sizes, self.aggregation)
        total = sum(w for w, _ in losses)
        self._losses[server_round] = train_loss = sum(w * loss for w, loss in losses) / total
        self._train_seconds[server_round] = time.perf_counter() - self._round_start
        self._bytes[server_round] += sum(array_bytes(r) for m in got.values() for r in m.content.array_records.values())
        self._server_seconds[server_round] += time.perf_counter() - start
        return ArrayRecord(new), MetricRecord({"train-loss": train_loss, "clients": len(updates)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Each client gets only its own width-w_i subnet (what it would deploy); after the last round
        also the full supernet, but only a client whose cap allows width 1 (no device builds a model
        above its cap)."""
        server_round += self.offset
        final = server_round == self.num_rounds
        self.phase = "evaluate"
        if self.fused and not final:  # this model is evaluated inside the next round's train messages
            self.outbox = []
            return []
        state = arrays.to_torch_state_dict()
        self.outbox = []
        evaluating = self.clients if final else self.sampled(server_round, self.fraction_evaluate, stream=1)
        for node, c in evaluating.items():
            content = {"arrays": ArrayRecord(extract(state, self.spec, self.deployed[c.partition_id], self.sizes))}
            full = final and full_width_allowed(c)
            if full:
                content["full"] = arrays
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "width": c.width, "full-width": full})
            self.outbox.append((node, Message(RecordDict({**content, "config": cfg}), dst_node_id=node,
                                              message_type="evaluate")))
        self.exchanges["evaluate"] += 1
        return [m for _, m in self.outbox]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.offset
        if self.fused and server_round < self.num_rounds:
            return None
        got = self.by_node(server_round, replies)
        return self.record_evaluation(server_round, {n: self.evaluation_metrics(server_round, n, m)
                                                     for n, m in got.items()})

    def evaluation_metrics(self, server_round: int, node: int, msg: Message, prefix: str = "") -> dict[str, float]:
        """A client's evaluation of ``server_round``'s model (its metrics named ``prefix``...); a
        malformed one is rejected and leaves that client without a current accuracy."""
        try:
            metrics = reply_metrics(msg, (prefix + "accuracy",))
            if not 0.0 <= metrics[prefix + "accuracy"] <= 1.0:
                raise ValueError(f"accuracy {metrics[prefix + 'accuracy']:g} is outside [0, 1]")
        except ValueError as err:
            self.reject(server_round, node, f"evaluation: {err}", phase="evaluate")
            return {}
        return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}

    def record_evaluation(self, server_round: int, metrics: dict[int, dict[str, float]]) -> MetricRecord | None:
        """The history row of ``server_round``'s model from the clients' evaluation metrics."""
        accs = []
        for node, c in self.clients.items():
            # a client that misses an evaluation has no current accuracy: never report a stale one
            c.metrics = metrics.get(node, {}) if "accuracy" in metrics.get(node, {}) else {}
            if c.metrics:
                accs.append(c.metrics["accuracy"])
        if not accs:
            return None
        seconds = self._train_seconds.get(server_round, math.nan)
        if not self.fused or server_round == self.num_rounds:  # its own evaluate exchange
            seconds = time.perf_counter() - self._round_start
        # every round's per-client accuracies, so a long run also answers for its shorter prefixes
        row = {"round": server_round, "train_loss": self._losses.get(server_round),
               **summarize(accs), "clients": len(accs), "trained": sorted(self._trained.get(server_round, [])),
               "accuracies": {str(c.partition_id): c.metrics.get("accuracy") for c in self.clients.values()},
               "seconds": seconds, "server_seconds": self._server_seconds.get(server_round, math.nan),
               "bytes": self._bytes.get(server_round, 0), "client_seconds": self._client_seconds.get(server_round, {})}
        self.history.append(row)
        log(INFO, "round %d: mean accuracy %.4f, worst %.4f (%d clients)", server_round, row["mean"],
            row["worst"], len(accs))
        return MetricRecord({"mean-accuracy": row["mean"], "worst-accuracy": row["worst"]})
