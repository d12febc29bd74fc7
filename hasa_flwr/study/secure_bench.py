"""`hasa bench secure`: the secure statistics path against the clear one, per seed.

Runs the server's statistics phases (vocabulary, query, scores) in-process on a loopback
federation (the real ClientApp and Flower's SecAgg+, messages serialised as over the network),
once in the clear and twice under secure-stats: with the clear run's vocabulary as a shared
vocab-path (isolates the secure label sum: score error, ranks, widths) and with the vocabulary
from public candidate words (what a user who shares no vocabulary file gets). Reports errors,
identities, seconds and bytes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.data.prepare import write_vocab
from hasa_flwr.federation.results import write_json_atomic
from hasa_flwr.study.dry_run import statistics_phases, widths


def compare_seed(run_config: dict, candidates: str, workdir: Path) -> dict[str, Any]:
    settings = settings_from_run_config(run_config)
    statistics_phases(run_config)  # warm-up: the first pass also reads and encodes every client's data
    clear = statistics_phases(run_config)
    vocab_file = workdir / f"vocab-seed-{settings.seed}.txt"
    write_vocab(clear["vocab"], vocab_file)
    same_vocab = statistics_phases({**run_config, "secure-stats": True, "vocab-path": str(vocab_file)})
    row: dict[str, Any] = {"seed": settings.seed, "clients": len(clear["clients"])}
    a = np.array([clear["scores"][c.node_id] for c in clear["clients"]])
    b = np.array([same_vocab["scores"][c.node_id] for c in same_vocab["clients"]])
    truth = np.stack([c.label_counts for c in clear["clients"]]).sum(0)
    raw = same_vocab["secure"][0].raw
    row.update(score_max_abs_error=float(np.abs(a - b).max()),
               score_max_rel_error=float((np.abs(a - b) / np.abs(a)).max()),
               pooled_max_abs_error_before_rounding=float(np.abs(raw - truth).max()),
               pooled_exact=bool((same_vocab["secure"][0].total == truth).all()),
               ranks_identical=bool((np.argsort(a, kind="stable") == np.argsort(b, kind="stable")).all()),
               widths_identical=bool(np.array_equal(widths(settings, clear["clients"], clear["scores"]),
                                                    widths(settings, same_vocab["clients"], same_vocab["scores"]))),
               seconds_clear=clear["seconds"], seconds_secure=same_vocab["seconds"],
               bytes_clear=sum(clear["grid"].bytes.values()), bytes_secure=sum(same_vocab["grid"].bytes.values()),
               exchanges_clear=clear["grid"].exchanges, exchanges_secure=same_vocab["grid"].exchanges)
    if candidates:
        own = statistics_phases({**run_config, "secure-stats": True, "vocab-candidates": candidates})
        clear_words, secure_words = set(clear["vocab"][2:]), set(own["vocab"][2:])
        order = {c.name: i for i, c in enumerate(clear["clients"])}
        ws = widths(settings, own["clients"], own["scores"])
        wc = widths(settings, clear["clients"], clear["scores"])
        row.update(vocab_clear=len(clear_words), vocab_secure=len(secure_words),
                   vocab_kept=len(clear_words & secure_words) / len(clear_words),
                   vocab_extra=len(secure_words - clear_words),
                   candidate_widths_max_abs_diff=float(max(abs(ws[i] - wc[order[c.name]])
                                                           for i, c in enumerate(own["clients"]))),
                   seconds_secure_vocab=own["seconds"], bytes_secure_vocab=sum(own["grid"].bytes.values()),
                   exchanges_secure_vocab=own["grid"].exchanges)
    return row


def bench_secure(run_config: dict, seeds: list[int], candidates: str = "") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hasa-secure-") as tmp:
        rows = [compare_seed({**run_config, "seed": s}, candidates, Path(tmp)) for s in seeds]
    return {"rows": rows, "seeds": seeds, "candidates": candidates}


def markdown(result: dict[str, Any]) -> str:
    cols = ["seed", "score_max_abs_error", "score_max_rel_error", "pooled_exact", "ranks_identical",
            "widths_identical", "seconds_clear", "seconds_secure", "bytes_clear", "bytes_secure", "exchanges_clear",
            "exchanges_secure"]
    if result["candidates"]:
        cols += ["vocab_clear", "vocab_secure", "vocab_kept", "candidate_widths_max_abs_diff", "seconds_secure_vocab",
                 "bytes_secure_vocab", "exchanges_secure_vocab"]
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def write_bench(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "secure.md"
    md.write_text(markdown(result))
    return write_json_atomic(out / "secure.json", json.loads(json.dumps(result))), md
