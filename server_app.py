"""Flower ServerApp: vocabulary round -> query round -> scores -> allocation -> HASA rounds -> models ->
results.json (the phases are in hasa_flwr/phases.py)."""

from logging import ERROR, INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from hasa_flwr.config import settings_from_run_config
from hasa_flwr.data import vocab_hash
from hasa_flwr.phases import (allocation_round, delivery_round, initial_supernet, scores_round,
                              vocabulary_round)
from hasa_flwr.results import build_results, format_table, results_path, write_json_atomic
from hasa_flwr.run_models import CLIENTS, save_run_models
from hasa_flwr.secure_stats import SecureSum
from hasa_flwr.strategy import FederationError, HasaStrategy, query_stats, wait_for_nodes

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
                            fused=settings.fused_evaluation, fraction_train=settings.fraction_train,
                            fraction_evaluate=settings.fraction_evaluate,
                            min_train_clients=settings.min_train_clients, deadline=settings.deadline)
    result = strategy.start(grid, initial, num_rounds=settings.num_rounds, timeout=settings.deadline,
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
