"""Flower ServerApp: devices -> a fresh start (vocabulary, query, scores, allocation) or a resumed one ->
HASA rounds with a checkpoint each -> models -> results.json (the phases are in
hasa_flwr/federation/phases.py)."""

from logging import ERROR, INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from hasa_flwr.federation.checkpoint import allocation_record, claim, read_checkpoint, release, write_checkpoint
from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.federation.cores import leave_cores_to_clients
from hasa_flwr.federation.phases import check_resumable, delivery_round, fresh_start, resume_start, roster_record
from hasa_flwr.federation.polling import prompt
from hasa_flwr.federation.results import build_results, format_table, results_path, write_json_atomic
from hasa_flwr.federation.run_models import CLIENTS, meta_for, save_run_models
from hasa_flwr.federation.strategy import FederationError, HasaStrategy, wait_for_nodes

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
    leave_cores_to_clients(grid)
    resumed = read_checkpoint(settings.resume_from) if settings.resume_from else None
    run_dir = Path(settings.resume_from).expanduser().absolute() if resumed else \
        results_path(settings.results_dir, context.run_id).parent
    if resumed:
        check_resumable(settings, resumed)
        claim(run_dir)  # a second process writing this folder would corrupt it
    # a resumed run needs its roster back (devices dropped before training are not waited for)
    expected = len(resumed.progress["roster"]) if resumed else settings.num_clients
    nodes = wait_for_nodes(grid, expected, settings.wait_seconds)
    start = resume_start(grid, settings, resumed, nodes) if resumed else fresh_start(grid, context, settings, nodes)
    clients, allocation, model, vocab = start.clients, start.allocation, start.model, start.vocab
    num_classes, input_shape = start.num_classes, start.input_shape

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
                "vocab_source": start.vocab_source, "secure": start.secure, "dropped": start.dropped,
                "roster": roster_record(clients), "allocation": allocation_record(allocation),
                "strategy": strategy.progress()})

    result = strategy.start(grid, start.initial, num_rounds=settings.num_rounds - done, timeout=settings.deadline,
                            train_config=start.config, evaluate_config=start.config, evaluate_fn=checkpoint)

    path = run_dir / "results.json"
    # Flower sets result.arrays only when a round ran; a run resumed from its final checkpoint has none left
    final = (result.arrays if len(result.arrays) else start.initial).to_torch_state_dict()
    results = build_results(settings, clients, allocation, strategy.history, strategy.rejected, run_id=first_run_id,
                            vocab=vocab, vocab_source=start.vocab_source, secure=start.secure)
    results.update(exchanges=strategy.exchanges, dropped=start.dropped, resumes=resumes)
    if settings.save_model:
        models = save_run_models(run_dir, settings, final, model.slicing_spec(), num_classes=num_classes,
                                 input_shape=input_shape, vocab=vocab, clients=roster, run_id=first_run_id)
        results["model"] = {"supernet": str(models), "clients": str(run_dir / CLIENTS)}
    results.setdefault("model", {})["delivered"] = delivery_round(grid, settings, clients, final, model, num_classes,
                                                                  input_shape, vocab, roster, first_run_id)
    write_json_atomic(path, results)  # last: a results.json means the run and its models are complete
    release(run_dir)
    log(INFO, "\n%s\nresults: %s", format_table(results), path)
