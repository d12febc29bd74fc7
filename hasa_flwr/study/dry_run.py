"""The server's phases up to the allocation, in-process and without training: what widths a run
config gives each client (`hasa allocate`), and how much an option changes them.

The phases run on a loopback federation (the real ClientApp, messages serialised as over the
network; `federation.loopback`), so the scores and widths are exactly those a `flwr run` of the
same config starts its training with. HASA's widths depend on the scores only through their
ranks: an option that moves the scores but keeps their order leaves every run unchanged, which
this shows per seed without a single training round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from hasa_flwr.data.atomic import write_text_atomic
from hasa_flwr.federation.config import Settings, settings_from_run_config
from hasa_flwr.federation.loopback import LoopbackGrid
from hasa_flwr.federation.phases import allocation_round, scores_round, vocabulary_round
from hasa_flwr.federation.results import write_json_atomic
from hasa_flwr.federation.strategy import ClientInfo, query_stats
from hasa_flwr.study.launch import merge_config


def loopback_nodes(num_clients: int) -> dict[int, dict]:
    """Node id -> node config of a simulated federation (partition ids, as `flwr run` gives them)."""
    return {100 + i: {"partition-id": i, "num-partitions": num_clients} for i in range(num_clients)}


def statistics_phases(run_config: dict, drop: Callable[[Message, int], bool] | None = None) -> dict[str, Any]:
    """The phases up to the scores on a loopback federation of num-clients nodes."""
    import client_app  # the app's own ClientApp (installed beside this package)

    settings = settings_from_run_config(run_config)
    nodes = loopback_nodes(settings.num_clients)
    grid = LoopbackGrid(client_app.app, run_config, nodes, drop=drop)
    context = Context(1, 1, {}, RecordDict(), run_config)
    secure, dropped = [], []
    start = time.perf_counter()
    vocab, source = vocabulary_round(grid, context, sorted(nodes), settings, secure, dropped)
    alive = [n for n in sorted(nodes) if n not in {d["node"] for d in dropped}]
    clients, _, _ = query_stats(grid, alive, settings.num_clients, settings.dataset, settings.round_timeout, vocab,
                                send_words=source != "file")
    scores = scores_round(grid, context, settings, clients, None, None, ConfigRecord({}), secure, dropped)
    return {"grid": grid, "vocab": vocab, "clients": clients, "scores": scores, "secure": secure,
            "dropped": dropped, "seconds": time.perf_counter() - start}


def widths(settings: Settings, clients: list[ClientInfo], scores: dict[int, float]) -> np.ndarray:
    """The run's own allocation phase on these scores."""
    return allocation_round(settings, clients, np.array([scores[c.node_id] for c in clients]), None).widths


def allocation(run_config: dict) -> list[dict[str, Any]]:
    """One row per client, in client-number order: sizes, score, rank and width."""
    settings = settings_from_run_config(run_config)
    p = statistics_phases(run_config)
    widths(settings, p["clients"], p["scores"])  # stores score, rank and width on each client
    return [{"partition_id": c.partition_id, "name": c.name, "n_train": c.n_train, "n_train_rows": c.n_train_rows,
             "score": c.score, "rank": c.rank, "width": c.width} for c in p["clients"]]


def compare_allocations(run_config: dict, seeds: list[int], variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per seed, the base config's allocation and each variant's (base + its run-config values): do
    the clients keep their score order, and how far does each width move?"""
    configs = {name: merge_config(run_config, sets) for name, sets in variants.items()}
    for config in configs.values():  # every name and value is checked before the first seed
        settings_from_run_config(config)
    out: dict[str, Any] = {"variants": variants, "seeds": {}}
    for seed in seeds:
        base = allocation({**run_config, "seed": seed})
        row: dict[str, Any] = {"base": base}
        for name, config in configs.items():
            other = allocation({**config, "seed": seed})
            row[name] = {"clients": other,
                         "same_order": [c["rank"] for c in other] == [c["rank"] for c in base],
                         "max_width_change": max(abs(a["width"] - b["width"]) for a, b in zip(base, other))}
        out["seeds"][str(seed)] = row
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    seeds = result["seeds"]
    lines = [f"`{command}`", "",
             "Per seed: does each variant keep the clients' score order (HASA's widths depend on the scores "
             "only through it), and the largest change of any client's width.", "",
             "| variant | run config | same order (seeds) | max width change, mean over seeds | largest |",
             "|---|---|---:|---:|---:|"]
    for name, sets in result["variants"].items():
        rows = [s[name] for s in seeds.values()]
        moves = [r["max_width_change"] for r in rows]
        shown = ", ".join(f"{k}={v}" for k, v in sets.items())
        lines.append(f"| {name} | {shown} | {sum(r['same_order'] for r in rows)}/{len(rows)} | "
                     f"{np.mean(moves):.4f} | {max(moves):.4f} |")
    first = next(iter(seeds))
    lines += ["", f"Seed {first}, width per client (base, then each variant):", "",
              "| client | n_train | rows (titles or images) | base | " + " | ".join(result["variants"]) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(result["variants"])]
    for i, c in enumerate(seeds[first]["base"]):
        others = " | ".join(f"{seeds[first][v]['clients'][i]['width']:.3f}" for v in result["variants"])
        lines.append(f"| {c['partition_id']} {c['name']} | {c['n_train']} | {c['n_train_rows']} | "
                     f"{c['width']:.3f} | {others} |")
    return "\n".join(lines) + "\n"


def write_allocations(result: dict[str, Any], out: Path, command: str) -> tuple[Path, Path]:
    json_path = write_json_atomic(out / "allocate.json", {**result, "command": command})
    return json_path, write_text_atomic(out / "allocate.md", markdown(result, command))
