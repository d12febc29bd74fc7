"""Secure statistics: federation-wide count vectors that no party sees per client (Flower SecAgg+).

With ``secure-stats`` on, the two count vectors HASA needs from every client, its word counts
over a public candidate list (the vocabulary) and its label histogram (the JSD score's pooled
reference), are summed with Flower's own SecAgg+ protocol (``SecAggPlusWorkflow`` on the server,
``secaggplus_mod`` on the client): the server learns the sum, never one client's vector.

Scaling, so that clipping and quantisation do not distort the sum: every client sends its
integer count vector divided by a public bound ``scale`` (no entry exceeds it), all with the same
weight, so SecAgg+ returns the plain mean over the clients whose vectors it holds. The server
multiplies by (clients x scale) and rounds. SecAgg+ quantises each entry of [-1, 1] to
Q + 1 levels, stochastically, so each client's error is below 2 scale / Q counts and the rounded
sum is exact while K x 2 scale / Q < 0.5 (the bound is recorded; Q is the largest power of two
with K x Q below Flower's 2^32 modulus).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common import log, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig, SimpleClientManager
from flwr.server.compat import LegacyContext
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from hasa_flwr.federation.config import Settings
from hasa_flwr.data import read_candidates, vocab_hash
from hasa_flwr.data.files import resolve_path
from hasa_flwr.data.text import build_vocab
from hasa_flwr.federation.strategy import ClientInfo, FederationError, ask

MODULUS = 2**32         # Flower's largest modulus_range: the masked sum of K quantised vectors must fit
MAX_QUANTIZATION = 2**30  # Flower's stochastic rounding casts to int32
MAX_SHARES = 15          # SecAgg+ neighbourhood for large federations (odd, as SecAgg+ needs below K)
WHAT = "hasa-secure"     # fitins config key: which vector a client contributes ("vocab" or "labels")


@dataclass
class SecureSum:
    """A secure sum and what it cost; ``nodes`` are the clients whose vectors are in ``total``."""

    what: str
    total: np.ndarray
    nodes: list[int]
    requested: int
    shares: int
    threshold: int
    quantization_range: int
    scale: float
    error_bound: float
    seconds: float
    raw: np.ndarray | None = None   # the sum before rounding (to measure the protocol's error)

    def record(self) -> dict[str, object]:
        """What results.json says about this round (privacy block)."""
        return {"what": self.what, "length": int(self.total.size), "clients": len(self.nodes),
                "requested": self.requested, "shares": self.shares, "threshold": self.threshold,
                "survives_dropouts": self.shares - self.threshold, "scale": self.scale,
                "quantization_range": self.quantization_range, "max_error_before_rounding": self.error_bound,
                "seconds": round(self.seconds, 3)}


def quantization_range(num_clients: int) -> int:
    """Largest power of two Q with K x Q < 2^32 (the masked sum must not wrap) and Q <= 2^30."""
    q = MAX_QUANTIZATION
    while num_clients * q >= MODULUS:
        q >>= 1
    return q


def protocol_sizes(num_clients: int) -> tuple[int, int]:
    """(shares, reconstruction threshold): every client is every other's neighbour up to 15
    clients, then 15 neighbours; a dropped client's masks are rebuilt from any two thirds of its
    shares, so the round survives shares - threshold dropouts among any client's neighbours."""
    if num_clients < 3:
        raise ValueError(f"secure-stats needs at least 3 clients (got {num_clients}): with two, each could "
                         "subtract its own counts from the pooled ones; turn secure-stats off")
    shares = min(num_clients, MAX_SHARES)
    return shares, max(2, math.ceil(2 * shares / 3))


class _Collect(FedAvg):
    """The legacy strategy SecAgg+ drives: samples every registered client, sends ``config``, and
    keeps the (already securely averaged) result instead of averaging it again."""

    def __init__(self, num_clients: int, config: dict) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=num_clients,
                         min_evaluate_clients=0, min_available_clients=num_clients,
                         on_fit_config_fn=lambda _round: dict(config))
        self.results: list | None = None

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return (results[0][1].parameters, {}) if results else (None, {})


def secure_sum(grid: Grid, context: Context, nodes: list[int], what: str, scale: float, config: dict,
               timeout: float) -> SecureSum:
    """The sum over ``nodes`` of each client's count vector ``what``, by SecAgg+. A client that
    drops out is left out of the sum (``nodes`` of the result say who is in it).

    Flower 1.41's SecAgg+ recovers from a client lost after the key-sharing stage, but halts when
    one is lost before it (it then looks for shares that client never sent); a halted round is
    started again with the clients that answered its last stage. FederationError if fewer than 3
    remain or no progress is made."""
    start = time.perf_counter()
    requested, alive = len(nodes), list(nodes)
    while True:
        shares, threshold = protocol_sizes(len(alive))
        q = quantization_range(len(alive))
        recorder = _Answers(grid)
        results = _secagg_round(recorder, context, alive, what, scale, config, timeout, shares, threshold, q)
        if results:
            break
        answered = sorted(recorder.answered & set(alive))
        if len(answered) >= len(alive) or len(answered) < 3:
            raise FederationError(f"the secure {what} round halted: {len(answered)} of {len(alive)} clients answered "
                                  f"SecAgg+ within {timeout:g}s (a secure sum needs {threshold}, and never fewer "
                                  "than 3); restart the lost SuperNodes")
        log(WARNING, "secure %s round halted (nodes %s did not answer); starting it again with the %d others", what,
            sorted(set(alive) - set(answered)), len(answered))
        alive = answered
    contributed = sorted(int(proxy.node_id) for proxy, _ in results)
    if len(contributed) < 3:  # the pooled vector goes back to the clients: with two, each learns the other's
        raise FederationError(f"only {len(contributed)} of {requested} clients finished the secure {what} round "
                              f"(nodes {sorted(set(nodes) - set(contributed))} were lost); a secure sum needs at "
                              "least 3: restart the lost SuperNodes")
    mean = parameters_to_ndarrays(results[0][1].parameters)[0].astype(np.float64)
    bound = len(contributed) * 2.0 * scale / q
    if bound >= 0.5:
        log(WARNING, "secure %s round: counts may be off by one (error bound %.3g); fewer clients or smaller "
            "counts keep them exact", what, bound)
    raw = mean * len(contributed) * scale
    seconds = time.perf_counter() - start
    log(INFO, "secure %s round: %d of %d clients, %d entries, %.2fs", what, len(contributed), requested, raw.size,
        seconds)
    return SecureSum(what, np.rint(raw).astype(np.int64), contributed, requested, shares, threshold, q, float(scale),
                     bound, seconds, raw)


def _secagg_round(grid: Grid, context: Context, nodes: list[int], what: str, scale: float, config: dict,
                  timeout: float, shares: int, threshold: int, q: int) -> list | None:
    """One SecAgg+ round through Flower's legacy workflow; its (proxy, FitRes) results, or None if it halted."""
    manager = SimpleClientManager()
    for node in nodes:
        manager.register(GridClientProxy(node, grid, context.run_id))
    strategy = _Collect(len(nodes), {**config, WHAT: what, "scale": float(scale)})
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: 1}),
                        MAIN_PARAMS_RECORD: _empty_parameters()})
    legacy = LegacyContext(Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                                   state=state, run_config=context.run_config),
                           config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager)
    SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold, max_weight=1.0, clipping_range=1.0,
                       quantization_range=q, modulus_range=MODULUS, timeout=timeout)(grid, legacy)
    return strategy.results


class _Answers(Grid):
    """The grid, remembering which nodes answered the last exchange (to restart a halted round). An
    error a client sends itself counts (it is alive: Flower's SecAgg+ clients fail the unmask stage
    when a neighbour vanished before sharing keys); a lost node's reply comes from the SuperLink."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.answered: set[int] = set()

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.answered = {m.metadata.src_node_id for m in replies}
        return replies

    @property
    def run(self):
        return self.grid.run

    def set_run(self, run_id):
        return self.grid.set_run(run_id)

    def create_message(self, *args, **kwargs):
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)


def _empty_parameters():
    """SecAgg+ reads the workflow's current parameters from the context; our clients ignore them."""
    return compat.parameters_to_arrayrecord(ndarrays_to_parameters([np.zeros(1, dtype=np.float32)]), True)


def secure_vocabulary(grid: Grid, context: Context, nodes: list[int], settings: Settings) -> tuple[list[str], SecureSum]:
    """The vocabulary without clear word counts: each client's number of training words (the
    bound), then the secure sum of its counts of the public candidate words; the vocabulary is the
    candidates whose pooled count reaches min-count, ordered as the clear round orders them."""
    candidates = read_candidates(resolve_path(settings.vocab_candidates, "vocab-candidates"))
    sizes = ask(grid, {n: RecordDict() for n in nodes}, "query.vocab", settings.round_timeout)
    scale = max(1, max(int(r["sizes"]["tokens"]) for r in sizes.values()))
    pooled = secure_sum(grid, context, nodes, "vocab", scale, {"candidates-hash": vocab_hash(candidates)},
                        settings.round_timeout)
    return build_vocab(dict(zip(candidates, pooled.total.tolist())), settings.min_count), pooled


def secure_scores(grid: Grid, context: Context, clients: list[ClientInfo], settings: Settings,
                  config: ConfigRecord) -> tuple[dict[int, float], SecureSum | None]:
    """Each client's score, computed by the client: jsd against the pooled label histogram, which
    only a secure sum reveals (and which every client then receives), or its own entropy.
    Returns node -> score (clients that dropped out of the secure round are missing)."""
    content = RecordDict({"config": ConfigRecord({**dict(config), "score": settings.score})})
    pooled = None
    if settings.score == "jsd":
        pooled = secure_sum(grid, context, [c.node_id for c in clients], "labels",
                            max(1, max(histogram_mass(settings, c) for c in clients)), dict(config), settings.round_timeout)
        content["pooled"] = MetricRecord({"counts": [int(v) for v in pooled.total]})
    asked = [c for c in clients if pooled is None or c.node_id in pooled.nodes]
    replies = ask(grid, {c.node_id: content for c in asked}, "query.score", settings.round_timeout)
    return {c.node_id: float(replies[c.node_id]["metrics"]["score"]) for c in asked}, pooled


def histogram_mass(settings: Settings, client: ClientInfo) -> int:
    """What a client's score histogram sums to, which bounds each of its counts in the secure sum."""
    return client.n_train + (client.n_train_rows if settings.score_histogram == "tokens" else 0)


def left_out(before: list[int], after: list[int], settings: Settings, what: str) -> list[dict[str, object]]:
    """Nodes lost during a secure round: recorded and left out while min-train-clients remain;
    otherwise the run stops with one line."""
    lost = sorted(set(before) - set(after))
    if lost and len(after) < settings.min_clients:
        raise FederationError(f"node(s) {lost} dropped out of the secure {what} round and {len(after)} of "
                              f"{len(before)} clients remain, fewer than min-train-clients={settings.min_clients}: "
                              "restart those SuperNodes, or lower min-train-clients to go on without them")
    for node in lost:
        log(WARNING, "node %d dropped out of the secure %s round; the run goes on without it", node, what)
    return [{"node": node, "phase": f"secure {what}", "reason": "dropped out of the SecAgg+ round"} for node in lost]
