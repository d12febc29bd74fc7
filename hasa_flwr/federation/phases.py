"""The server's phases before and after the training rounds, one function each, in protocol order.

server_app.run calls them top-down: a new run's ``fresh_start`` (vocabulary_round -> query_stats
-> initial_supernet -> scores_round -> allocation_round) or a resumed run's ``resume_start``, then
the HASA rounds, then delivery_round. Each takes the grid and what earlier phases produced, so a
phase can also run alone (benchmarks, the loopback tests).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from logging import WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # the simulation engine's grid

from hasa_flwr.method.allocation import Allocation, allocate
from hasa_flwr.federation.checkpoint import Checkpoint, ResumeError, allocation_from_record
from hasa_flwr.federation.config import Settings
from hasa_flwr.data import DataError, vocab_hash
from hasa_flwr.method.models import mac_cost
from hasa_flwr.federation.run_models import init_from, meta_for
from hasa_flwr.method.scores import scores_from_counts
from hasa_flwr.federation.secure_stats import SecureSum, left_out, secure_scores, secure_vocabulary
from hasa_flwr.federation.strategy import (ClientInfo, FederationError, agree_vocabulary, deliver_subnets, query_losses,
                                          query_stats)
from hasa_flwr.method.subnet import deployed_units, extract


def initial_supernet(settings: Settings, num_classes: int, input_shape, vocab) -> torch.nn.Module:
    """This seed's fresh supernet, or the saved one ``init-from`` names (checked against this run)."""
    model = settings.initial_model(num_classes, input_shape)
    if settings.init_from:
        model.load_state_dict(init_from(settings, num_classes, input_shape, vocab).state)
    return model


def delivery_round(grid: Grid, settings: Settings, clients: list[ClientInfo], final: dict, model, num_classes: int,
                   input_shape, vocab, roster: list[dict], run_id: int) -> dict[str, str] | None:
    """Deployment only: each device stores its own subnet. In simulation the devices are this
    machine, and the subnets are already under the run folder's clients/."""
    if isinstance(grid, InMemoryGrid):
        return None
    units = deployed_units(settings.extraction, {c.partition_id: c.width for c in clients}, settings.sizes)
    subnets = {c.node_id: (ArrayRecord(extract(final, model.slicing_spec(), units[c.partition_id], settings.sizes)),
                           json.dumps(meta_for(settings, num_classes=num_classes, input_shape=input_shape, vocab=vocab,
                                               clients=roster, run_id=run_id, width=c.width, client=c.name)))
               for c in clients}
    return deliver_subnets(grid, clients, subnets, run_id, settings.round_timeout)


def vocabulary_round(grid: Grid, context: Context, nodes: list[int], settings: Settings, secure: list[SecureSum],
                     dropped: list[dict]) -> tuple[list[str] | None, str | None]:
    """Text only: the words every client encodes with: the shared vocab-path ("file"), pooled
    clear counts ("round"), or under secure-stats a SecAgg+ sum over public candidates ("secure")."""
    if settings.source.kind != "text":
        return None, None
    try:
        if settings.secure_stats and not settings.vocab_path:
            vocab, pooled = secure_vocabulary(grid, context, nodes, settings)
            secure.append(pooled)
            dropped += left_out(nodes, pooled.nodes, settings, "vocab")
            return vocab, "secure"
        return agree_vocabulary(grid, nodes, settings.vocab_path, settings.min_count, settings.round_timeout)
    except DataError as err:  # the server's own copy of vocab-path or vocab-candidates
        raise FederationError(f"server: {err}") from None


def scores_round(grid: Grid, context: Context, settings: Settings, clients: list[ClientInfo], model,
                 initial: ArrayRecord, config: ConfigRecord, secure: list[SecureSum],
                 dropped: list[dict]) -> dict[int, float]:
    """Each client's heterogeneity score (node -> score): from the query round's label counts, or
    computed by the clients themselves (secure-stats, and loss)."""
    if settings.score == "loss":
        losses = query_losses(grid, clients, initial, settings.budget, settings.round_timeout, model.slicing_spec(),
                              settings.sizes, config)
        return dict(zip((c.node_id for c in clients), losses))
    if settings.score == "given":
        return {c.node_id: settings.score_values[c.partition_id] for c in clients}
    if settings.secure_stats and settings.score in ("jsd", "entropy"):
        scores, pooled = secure_scores(grid, context, clients, settings, config)
        if pooled is not None:
            secure.append(pooled)
            dropped += left_out([c.node_id for c in clients], pooled.nodes, settings, "labels")
        return scores
    counts = np.stack([c.label_counts for c in clients]) if clients[0].label_counts is not None else \
        np.zeros((len(clients), 1))  # score=random under secure-stats: no counts were sent
    return dict(zip((c.node_id for c in clients), scores_from_counts(settings.score, counts, settings.seed)))


def allocation_round(settings: Settings, clients: list[ClientInfo], scores: np.ndarray, model) -> Allocation:
    """Scores -> widths under the budget; stored on ``clients``."""
    for c in clients:  # a SuperNode's own max-width wins over the run config's list
        c.cap = c.node_cap if c.node_cap is not None else settings.width_caps[c.partition_id]
    sizes = np.array([settings.budget_size(c.n_train, c.n_train_rows) for c in clients])
    allocation = allocate(settings.allocation, scores, sizes, budget=settings.budget, w_min=settings.width_min,
                          w_max=settings.width_max, caps=np.array([c.cap for c in clients]), seed=settings.seed,
                          cost=mac_cost(model) if settings.budget_cost == "macs" else None, supernet=settings.sizes)
    for c, score, rank, width in zip(clients, allocation.scores, allocation.ranks, allocation.widths):
        c.score, c.rank, c.width = float(score), float(rank), float(width)
    return allocation


# a resumed run may change only these (where results go, how long to wait)
RESUMABLE_CHANGES = ("results_dir", "data_path", "wait_seconds", "round_timeout", "round_deadline", "reply_poll",
                     "resume_from")


def check_resumable(settings: Settings, checkpoint: Checkpoint) -> None:
    """A run resumes only with the settings it was started with (ResumeError names the differences)."""
    # a setting added after the checkpoint was written counts as its default (what that run used)
    defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
    recorded, now = {**defaults, **checkpoint.meta["run_config"]}, settings.to_dict()
    diffs = [k for k in sorted(set(recorded) | set(now)) if k not in RESUMABLE_CHANGES
             and _plain(recorded.get(k)) != _plain(now.get(k))]
    if diffs:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} then, {now.get(k)!r} now" for k in diffs[:3])
        raise ResumeError(f"the run config differs from the checkpointed run's ({shown}): resume with `hasa run "
                          "--resume <run folder>`, which reuses the recorded config")
    if checkpoint.round > settings.num_rounds:
        raise ResumeError(f"the checkpoint is after round {checkpoint.round} of {settings.num_rounds}")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def restore_roster(clients: list[ClientInfo], checkpoint: Checkpoint) -> tuple[list[ClientInfo], Allocation]:
    """The checkpointed roster and allocation onto this run's nodes, matched by client name (a node
    id may change when a SuperNode restarts; its name and data do not). A device that was not in
    the roster is left out; one that is missing, or whose data changed, stops the resume."""
    by_name = {c.name: c for c in clients}
    restored = []
    for row in checkpoint.progress["roster"]:
        c = by_name.get(row["name"])
        if c is None:
            raise ResumeError(f"client {row['name']!r} of the checkpointed run is not connected: start its SuperNode "
                              "(same client-name and data), then resume")
        if (c.n_train, c.n_test) != (row["n_train"], row["n_test"]):
            raise ResumeError(f"client {row['name']!r} now has {c.n_train}/{c.n_test} training/test samples, the "
                              f"checkpointed run {row['n_train']}/{row['n_test']}: its data changed; start a new run")
        c.partition_id, c.cap, c.score, c.rank, c.width = (row["partition_id"], row["cap"], row["score"], row["rank"],
                                                          row["width"])
        restored.append(c)
    for name in sorted(set(by_name) - {r["name"] for r in checkpoint.progress["roster"]}):
        log(WARNING, "client %r joined after the run started; it is left out of the resumed run", name)
    return restored, allocation_from_record(checkpoint.progress["allocation"])


def roster_record(clients: list[ClientInfo]) -> list[dict]:
    return [{"name": c.name, "partition_id": c.partition_id, "n_train": c.n_train, "n_test": c.n_test,
             "cap": c.cap, "score": c.score, "rank": c.rank, "width": c.width} for c in clients]


@dataclass
class Start:
    """What the training rounds begin from."""

    clients: list[ClientInfo]   # the roster, each with its width
    allocation: Allocation
    model: torch.nn.Module      # the supernet (its architecture; ``initial`` holds the weights to start from)
    initial: ArrayRecord
    config: ConfigRecord        # sent with every round (the vocabulary's hash)
    num_classes: int
    input_shape: tuple[int, ...] | None
    vocab: list[str] | None
    vocab_source: str | None
    secure: list[dict]          # the SecAgg+ rounds, for results.json's privacy block
    dropped: list[dict]         # devices lost before training


def fresh_start(grid: Grid, context: Context, settings: Settings, nodes: list[int]) -> Start:
    """A new run: the statistics rounds, the supernet, the scores and the allocation."""
    secure: list[SecureSum] = []
    dropped: list[dict] = []
    vocab, vocab_source = vocabulary_round(grid, context, nodes, settings, secure, dropped)
    nodes = [n for n in nodes if n not in {d["node"] for d in dropped}]
    clients, num_classes, input_shape = query_stats(grid, nodes, settings.num_clients, settings.dataset,
                                                    settings.round_timeout, vocab, send_words=vocab_source != "file")
    config = ConfigRecord({"vocab-hash": vocab_hash(vocab)} if vocab else {})
    model = initial_supernet(settings, num_classes, input_shape, vocab)
    initial = ArrayRecord(model.state_dict())
    scores = scores_round(grid, context, settings, clients, model, initial, config, secure, dropped)
    clients = [c for c in clients if c.node_id in scores]
    allocation = allocation_round(settings, clients, np.array([scores[c.node_id] for c in clients]), model)
    return Start(clients, allocation, model, initial, config, num_classes, input_shape, vocab, vocab_source,
                 [s.record() for s in secure], dropped)


def resume_start(grid: Grid, settings: Settings, checkpoint: Checkpoint, nodes: list[int]) -> Start:
    """A resumed run: the checkpoint's statistics, roster and weights. The statistics are never
    recomputed (they came from the devices as they were then); the query round only finds each
    client's node again."""
    p = checkpoint.progress
    vocab, vocab_source = checkpoint.meta["vocab"], p["vocab_source"]
    clients, num_classes, input_shape = query_stats(grid, nodes, settings.num_clients, settings.dataset,
                                                    settings.round_timeout, vocab, send_words=vocab_source != "file")
    config = ConfigRecord({"vocab-hash": vocab_hash(vocab)} if vocab else {})
    model = settings.initial_model(num_classes, input_shape)  # the architecture: the weights are the checkpoint's
    clients, allocation = restore_roster(clients, checkpoint)
    return Start(clients, allocation, model, ArrayRecord(checkpoint.state), config, num_classes, input_shape, vocab,
                 vocab_source, p["secure"], p["dropped"])
