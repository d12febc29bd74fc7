"""Flower ServerApp: vocabulary round -> query round -> allocation -> HASA rounds -> models -> results.json."""

import json
from logging import ERROR, INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # the simulation engine's grid

from hasa_flwr.allocation import Allocation, allocate
from hasa_flwr.config import Settings, settings_from_run_config
from hasa_flwr.data import DataError, vocab_hash
from hasa_flwr.models import mac_cost
from hasa_flwr.results import build_results, format_table, results_path, write_json_atomic
from hasa_flwr.scores import scores_from_counts
from hasa_flwr.run_models import CLIENTS, init_from, meta_for, save_run_models
from hasa_flwr.secure_stats import SecureSum, left_out, secure_scores, secure_vocabulary
from hasa_flwr.subnet import prefix_state
from hasa_flwr.strategy import (ClientInfo, FederationError, HasaStrategy, agree_vocabulary, deliver_subnets,
                                query_losses, query_stats, wait_for_nodes)

app = ServerApp()


class RunStopped(RuntimeError):
    """Ends the run as failed with one line. Not SystemExit: Flower flushes a deployed ServerApp's
    logs (and marks the run failed) only for exceptions, so a sys.exit would lose the line."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run(grid, context)
    except (ValueError, FederationError) as err:  # DataError is a ValueError
        log(ERROR, "hasa-flwr: %s", err)
        raise RunStopped(f"hasa-flwr: {err}") from None


def run(grid: Grid, context: Context) -> None:
    settings = settings_from_run_config(context.run_config)
    nodes = wait_for_nodes(grid, settings.num_clients, settings.wait_seconds)
    secure: list[SecureSum] = []   # the SecAgg+ rounds (secure-stats), for results.json's privacy block
    dropped: list[dict] = []       # devices lost before training
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

    strategy = HasaStrategy(clients, model.slicing_spec(), settings.sizes, extraction=settings.extraction,
                            aggregation=settings.aggregation, seed=settings.seed, num_rounds=settings.num_rounds,
                            fused=settings.fused_evaluation)
    result = strategy.start(grid, initial, num_rounds=settings.num_rounds, timeout=settings.round_timeout,
                            train_config=config, evaluate_config=config)

    path = results_path(settings.results_dir, context.run_id)
    final = result.arrays.to_torch_state_dict()
    roster = [{"name": c.name, "partition_id": c.partition_id, "width": c.width, "cap": c.cap} for c in clients]
    results = build_results(settings, clients, allocation, strategy.history, strategy.rejected, run_id=context.run_id,
                            vocab=vocab, vocab_source=vocab_source, secure=[s.record() for s in secure])
    results["exchanges"] = strategy.exchanges
    results["dropped"] = dropped
    if settings.save_model:
        models = save_run_models(path.parent, settings, final, model.slicing_spec(), num_classes=num_classes,
                                 input_shape=input_shape, vocab=vocab, clients=roster, run_id=context.run_id)
        results["model"] = {"supernet": str(models), "clients": str(path.parent / CLIENTS)}
    results.setdefault("model", {})["delivered"] = delivery_round(grid, settings, clients, final, model, num_classes,
                                                                  input_shape, vocab, roster, context.run_id)
    write_json_atomic(path, results)  # last: a results.json means the run and its models are complete
    log(INFO, "\n%s\nresults: %s", format_table(results), path)


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
    subnets = {c.node_id: (ArrayRecord(prefix_state(final, model.slicing_spec(), settings.sizes, c.width)),
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
    allocation = allocate(settings.allocation, scores, np.array([c.n_train for c in clients]),
                          budget=settings.budget, w_min=settings.width_min, w_max=settings.width_max,
                          caps=np.array([c.cap for c in clients]), seed=settings.seed,
                          cost=mac_cost(model) if settings.budget_cost == "macs" else None)
    for c, score, rank, width in zip(clients, allocation.scores, allocation.ranks, allocation.widths):
        c.score, c.rank, c.width = float(score), float(rank), float(width)
    return allocation
