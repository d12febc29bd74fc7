"""Flower ServerApp: vocabulary round -> query round -> scores -> allocation -> HASA rounds -> models ->
results.json (the phases are in hasa_flwr/federation/phases.py)."""

from logging import ERROR, INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from hasa_flwr.federation.checkpoint import allocation_record, claim, read_checkpoint, write_checkpoint
from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.data import vocab_hash
from hasa_flwr.federation.polling import prompt
from hasa_flwr.federation.phases import (allocation_round, check_resumable, delivery_round, initial_supernet, restore_roster,
                              roster_record, scores_round, vocabulary_round)
from hasa_flwr.federation.results import build_results, format_table, results_path, write_json_atomic
from hasa_flwr.federation.run_models import CLIENTS, meta_for, save_run_models
from hasa_flwr.federation.secure_stats import SecureSum
from hasa_flwr.federation.strategy import FederationError, HasaStrategy, query_stats, wait_for_nodes

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
    grid = prompt(grid, settings.reply_poll)
    resumed = read_checkpoint(settings.resume_from) if settings.resume_from else None
    run_dir = Path(settings.resume_from).expanduser().absolute() if resumed else \
        results_path(settings.results_dir, context.run_id).parent
    if resumed:
        check_resumable(settings, resumed)
        claim(run_dir)  # a second process writing this folder would corrupt it
    # a resumed run needs its roster back (devices dropped before training are not waited for)
    expected = len(resumed.progress["roster"]) if resumed else settings.num_clients
    nodes = wait_for_nodes(grid, expected, settings.wait_seconds)
    if resumed is None:
        secure: list[SecureSum] = []   # the SecAgg+ rounds (secure-stats), for results.json's privacy block
        dropped: list[dict] = []       # devices lost before training
        vocab, vocab_source = vocabulary_round(grid, context, nodes, settings, secure, dropped)
        nodes = [n for n in nodes if n not in {d["node"] for d in dropped}]
    else:  # the statistics are never recomputed: they came from the devices as they were then
        p = resumed.progress
        vocab, vocab_source, secure, dropped = resumed.meta["vocab"], p["vocab_source"], p["secure"], p["dropped"]
    clients, num_classes, input_shape = query_stats(grid, nodes, settings.num_clients, settings.dataset,
                                                    settings.round_timeout, vocab, send_words=vocab_source != "file")
    config = ConfigRecord({"vocab-hash": vocab_hash(vocab)} if vocab else {})
    model = initial_supernet(settings, num_classes, input_shape, vocab)
    if resumed is None:
        initial = ArrayRecord(model.state_dict())
        scores = scores_round(grid, context, settings, clients, model, initial, config, secure, dropped)
        clients = [c for c in clients if c.node_id in scores]
        allocation = allocation_round(settings, clients, np.array([scores[c.node_id] for c in clients]), model)
        secure = [s.record() for s in secure]
    else:
        clients, allocation = restore_roster(clients, resumed)
        initial = ArrayRecord(resumed.state)

    strategy = HasaStrategy(clients, model.slicing_spec(), settings.sizes, extraction=settings.extraction,
                            aggregation=settings.aggregation, seed=settings.seed, num_rounds=settings.num_rounds,
                            fused=settings.fused_evaluation, fraction_train=settings.fraction_train,
                            fraction_evaluate=settings.fraction_evaluate,
                            min_train_clients=settings.min_train_clients, deadline=settings.deadline)
    done = resumed.round if resumed else 0
    first_run_id = resumed.progress["run_id"] if resumed else context.run_id
    resumes = [*resumed.progress["resumes"], {"run_id": context.run_id, "after_round": done}] if resumed else []
    if resumed:
        strategy.restore(resumed.progress["strategy"], done)
    roster = [{"name": c.name, "partition_id": c.partition_id, "width": c.width, "cap": c.cap} for c in clients]
    meta = meta_for(settings, num_classes=num_classes, input_shape=input_shape, vocab=vocab, clients=roster,
                    run_id=first_run_id)

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        """Flower calls this after every round (as its evaluate_fn): the round's checkpoint."""
        if server_round > 0:
            if server_round + done == 1:  # the folder exists from the first checkpoint on, never for a failed start
                claim(run_dir)
            write_checkpoint(run_dir, server_round + done, arrays.to_torch_state_dict(), meta, {
                "round": server_round + done, "run_id": first_run_id, "resumes": resumes,
                "run_config": dict(context.run_config),
                "vocab_source": vocab_source, "secure": secure, "dropped": dropped,
                "roster": roster_record(clients), "allocation": allocation_record(allocation),
                "strategy": strategy.progress()})

    result = strategy.start(grid, initial, num_rounds=settings.num_rounds - done, timeout=settings.deadline,
                            train_config=config, evaluate_config=config, evaluate_fn=checkpoint)

    path = run_dir / "results.json"
    final = result.arrays.to_torch_state_dict()
    results = build_results(settings, clients, allocation, strategy.history, strategy.rejected, run_id=first_run_id,
                            vocab=vocab, vocab_source=vocab_source, secure=secure)
    results.update(exchanges=strategy.exchanges, dropped=dropped, resumes=resumes)
    if settings.save_model:
        models = save_run_models(run_dir, settings, final, model.slicing_spec(), num_classes=num_classes,
                                 input_shape=input_shape, vocab=vocab, clients=roster, run_id=first_run_id)
        results["model"] = {"supernet": str(models), "clients": str(run_dir / CLIENTS)}
    results.setdefault("model", {})["delivered"] = delivery_round(grid, settings, clients, final, model, num_classes,
                                                                  input_shape, vocab, roster, context.run_id)
    write_json_atomic(path, results)  # last: a results.json means the run and its models are complete
    log(INFO, "\n%s\nresults: %s", format_table(results), path)
