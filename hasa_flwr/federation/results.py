"""results.json (docs/METHOD.md section 9): build, write atomically, print as a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hasa_flwr.method.allocation import Allocation
from hasa_flwr.federation.config import Settings
from hasa_flwr.data import vocab_hash
from hasa_flwr.data.atomic import write_text_atomic
from hasa_flwr.method.metrics import summarize
from hasa_flwr.federation.strategy import ClientInfo


def privacy(settings: Settings, vocab_source: str | None, secure: list[dict] | None = None) -> dict[str, Any]:
    """What the server learned about each client, what it learned only as a federation-wide sum
    (secure-stats: SecAgg+), and what each client learned from the federation."""
    seen = ["name", "n_train", "n_test", "n_train_rows", "max_width"]
    clear_counts = not settings.secure_stats
    if clear_counts:
        seen.append("label_counts")  # sent in the query round (the server computes the scores from them)
    elif settings.score in ("jsd", "entropy"):
        seen.append("score")  # each client computes its own and sends only the scalar
    if settings.score == "loss":
        seen.append("initial_loss")
    if vocab_source == "round":
        seen.append("word_counts")
    if vocab_source == "secure":
        seen.append("training_word_total")  # the bound on its counts for the secure sum
    if settings.source.kind == "image":
        seen += ["input_shape", "class_names_hash"]  # the query round: the CNN's shape, the class-list check
    seen += ["trained_subnet_parameters", "test_accuracy", "test_top3", "test_loss", "majority_accuracy", "train_loss",
             "train_message_seconds"]
    pooled = {"vocab": "word_counts_of_public_candidates", "labels": "label_histogram"}
    received = ["supernet_prefix_or_subset_at_own_width", "allocated_width", "run_config"]
    if vocab_source:
        received.append("vocabulary_hash (words from vocab-path)" if vocab_source == "file" else "vocabulary")
    if any(r["what"] == "labels" for r in secure or []):
        received.append("pooled_label_histogram")
    return {"secure_stats": settings.secure_stats, "server_saw_per_client": sorted(set(seen)),
            "server_saw_pooled_only": sorted({pooled[r["what"]] for r in secure or []}),
            "client_received": received, "secure_rounds": list(secure or [])}


def build_results(settings: Settings, clients: list[ClientInfo], allocation: Allocation, history: list[dict],
                  rejected: list[dict], *, run_id: int, vocab: list[str] | None = None,
                  vocab_source: str | None = None, secure: list[dict] | None = None) -> dict[str, Any]:
    rows = [{"partition_id": c.partition_id, "name": c.name, "n_train": c.n_train, "n_test": c.n_test,
             "n_train_rows": c.n_train_rows, "score": c.score, "rank": c.rank, "width": c.width, "cap": c.cap,
             "accuracy": c.metrics.get("accuracy"), "top3": c.metrics.get("top3"), "loss": c.metrics.get("loss"),
             "majority_accuracy": c.metrics.get("majority"),
             "full_width_accuracy": c.metrics.get("full-width-accuracy")} for c in clients]
    evaluated = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    return {
        "config": settings.to_dict(),
        "strategy": settings.strategy,
        "allocation": settings.allocation,
        "extraction": settings.extraction,
        "seed": settings.seed,
        "run_id": run_id,
        "budget": {"B": settings.budget, "cost": settings.budget_cost, "used": allocation.used,
                   "cost_used": allocation.cost_used, "cost_target": allocation.cost_target,
                   "passes": allocation.passes},
        "clients": rows,
        "summary": summarize(evaluated) if evaluated else None,
        "vocabulary": None if vocab is None else {"size": len(vocab), "hash": vocab_hash(vocab),
                                                  "source": vocab_source},
        "privacy": privacy(settings, vocab_source, secure),
        "history": history,
        "rejected_updates": rejected,
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """Readers never see half a file (data/atomic.py)."""
    return write_text_atomic(path, json.dumps(payload, indent=1))


def results_path(results_dir: str, run_id: int) -> Path:
    """``<results-dir>/<run-id>/results.json``; relative dirs are relative to where `flwr run` started."""
    return Path(results_dir).expanduser().absolute() / str(run_id) / "results.json"


def format_table(results: dict[str, Any]) -> str:
    """The per-client table and summary printed at the end of a run."""
    lines = [f"{'id':>2}  {'client':<26} {'n_train':>7} {'score':>8} {'width':>6} {'acc':>7} {'majority':>8} "
             f"{'full':>7}"]

    def pct(v: float | None, width: int) -> str:
        return f"{'-' if v is None else f'{v:.4f}':>{width}}"

    for r in results["clients"]:
        lines.append(f"{r['partition_id']:>2}  {r['name'][:26]:<26} {r['n_train']:>7} {r['score']:>8.4f} "
                     f"{r['width']:>6.3f} {pct(r['accuracy'], 7)} {pct(r.get('majority_accuracy'), 8)} "
                     f"{pct(r['full_width_accuracy'], 7)}")
    s, b = results["summary"], results["budget"]
    if s:
        lines.append(f"mean {s['mean']:.4f}  worst {s['worst']:.4f}  tail {s['tail']:.4f}  std {s['std']:.4f}  "
                     f"(budget B={b['B']:g}, used {b['used']:.6f}, {b['passes']} passes)")
    return "\n".join(lines)
