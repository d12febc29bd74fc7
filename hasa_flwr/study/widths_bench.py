"""What each device gets for its budget: size, compute, latency and accuracy of every prefix width.

For each width w of a finished run's supernet: parameters and multiply-accumulates of the width-w
prefix (counted from its sliced shapes, the rule of ``models.mac_cost``), the size of its ONNX
file, ONNX Runtime's latency for one input on this CPU (median after warm-up, one thread, so
numbers compare across machines of one kind), and the prefix's test accuracy averaged over the
run's clients, each on its own test split (rebuilt from the run config; "n/a" when this machine
does not hold the data).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hasa_flwr.data import ClientData, FederatedData
from hasa_flwr.export import ExportError, atomic_path, is_text, onnx_bytes, ort_session, random_inputs, require_onnx, run_data
from hasa_flwr.method.model_files import load_model
from hasa_flwr.method.models import mac_cost

DEFAULT_WIDTHS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class WidthRow:
    width: float
    params: int
    macs: int                 # per input: one image, or one title of max_title_words - 1 positions
    mac_fraction: float       # of the full model's, as the budget's "macs" cost counts it
    onnx_bytes: int
    latency_ms: float         # median, batch 1
    accuracy: float | None    # mean over clients of each client's own test accuracy


def parse_widths(text: str) -> list[float]:
    """'0.2,0.4,1' -> [0.2, 0.4, 1.0], each in (0, 1]."""
    try:
        widths = sorted({float(w) for w in text.replace(" ", "").split(",") if w})
    except ValueError:
        raise ExportError(f"--widths {text!r} is not a comma-separated list of numbers: e.g. 0.2,0.5,1.0") from None
    bad = [w for w in widths if not 0.0 < w <= 1.0]
    if not widths or bad:
        raise ExportError(f"--widths {text!r} has width(s) outside (0, 1]{': ' + str(bad) if bad else ''}: give "
                          "fractions of the supernet's width, e.g. 0.2,0.5,1.0")
    return widths


def count_macs(model: nn.Module, positions: int) -> int:
    """Multiply-accumulates per input: weights of rank >= 2 (a conv's once per output position), embeddings free."""
    per_position = 0
    for name, t in model.state_dict().items():
        if t.ndim < 2 or name.startswith("embedding"):
            continue
        per_position += t.numel() * (getattr(model, "conv_positions", 1) if t.ndim == 4 else 1)
    return per_position * positions


def one_input(meta: dict[str, Any], fed: FederatedData | None) -> np.ndarray:
    """A batch-1 input for the latency: a real test title or image when the data is here."""
    if fed is not None:
        return fed.clients[0].x_test[:1].numpy()
    return random_inputs(meta, 1).numpy()


def latency_ms(session, x: np.ndarray, repeats: int, warmup: int) -> float:
    name = session.get_inputs()[0].name
    feed = {name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def mean_accuracy(model: nn.Module, clients: list[ClientData]) -> float | None:
    from hasa_flwr.method.train import evaluate

    if not clients:
        return None
    return float(np.mean([evaluate(model, c.x_test, c.y_test)["accuracy"] for c in clients]))


def run_clients(meta: dict[str, Any], fed: FederatedData | None) -> list[ClientData]:
    """The run's clients' data (those named in the model's metadata; all when it names none)."""
    if fed is None:
        return []
    names = [c["name"] for c in meta.get("clients") or []]
    return [c for c in fed.clients if not names or c.name in names]


def bench_widths(run_dir: str | Path, widths: list[float], *, repeats: int = 200,
                 warmup: int = 20) -> dict[str, Any]:
    """Every width's row, plus what was measured on which inputs (nothing is written here)."""
    require_onnx()
    if repeats < 1 or warmup < 0:
        raise ExportError(f"--repeats must be at least 1 (got {repeats}) and --warmup at least 0 (got {warmup})")
    saved = load_model(run_dir)
    if saved.width != 1.0:
        raise ExportError(f"{saved.folder} is a width-{saved.width:g} subnet: bench the run folder (its supernet in "
                          "model/) to compare widths")
    meta = {k: v for k, v in saved.meta.items() if k not in ("tensors", "weights_sha256")}
    fed, why = run_data(meta)
    clients = run_clients(meta, fed)
    x = one_input(meta, fed)
    positions = x.shape[1] if is_text(meta) else 1
    cost = mac_cost(saved.build())
    rows = []
    for w in widths:
        model = saved.build(w)
        data = onnx_bytes(model, {**meta, "width": w, "client": None})
        rows.append(WidthRow(w, sum(p.numel() for p in model.parameters()), count_macs(model, positions),
                             float(cost(w)), len(data), latency_ms(ort_session(data, threads=1), x, repeats, warmup),
                             mean_accuracy(model, clients)))
    return {"run": str(Path(run_dir)), "model": meta["model"], "run_id": meta.get("run_id"),
            "dataset": meta["run_config"].get("dataset"), "rows": [asdict(r) for r in rows],
            "clients": [{"name": c["name"], "width": c["width"], "cap": c.get("cap")}
                        for c in meta.get("clients") or []],
            "accuracy_clients": [c.name for c in clients], "data_note": why,
            "latency": {"runtime": "onnxruntime CPU, 1 thread", "batch": 1, "repeats": repeats, "warmup": warmup,
                        "input": "real test input" if fed is not None else "random valid input",
                        "torch_threads": torch.get_num_threads()},
            "macs_per": f"title of {positions} positions" if is_text(meta) else "image"}


def markdown(result: dict[str, Any]) -> str:
    lat = result["latency"]
    accuracy = (f"mean over {len(result['accuracy_clients'])} clients, each on its own test split"
                if result["accuracy_clients"]
                else f"n/a, the run's data is not on this machine ({result['data_note']})")
    run = result.get("run_id") or Path(result["run"]).name  # not the folder: a committed file names no home path
    lines = [f"# Widths of run {run} ({result['dataset']}, {result['model']['kind']} "
             f"{result['model']['sizes']})", "",
             f"MACs per {result['macs_per']}; latency: median of {lat['repeats']} batch-1 runs on a {lat['input']} "
             f"({lat['runtime']}); accuracy: {accuracy}.", "",
             "| width | params | MACs | MACs / full | ONNX KiB | latency ms | accuracy |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['width']:g} | {r['params']:,} | {r['macs']:,} | {r['mac_fraction']:.3f} | "
                     f"{r['onnx_bytes'] / 1024:.1f} | {r['latency_ms']:.4f} | {acc} |")
    if result["clients"]:
        lines += ["", "Allocated: " + ", ".join(f"{c['name']} {c['width']:.3g}" for c in result["clients"])]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    widths = [r["width"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(widths, [r["latency_ms"] for r in rows], "o-", color="tab:red", label="latency (ms)")
    ax.set_xlabel("width")
    ax.set_ylabel("ONNX Runtime latency per input (ms)", color="tab:red")
    if any(r["accuracy"] is not None for r in rows):
        acc = ax.twinx()
        acc.plot(widths, [r["accuracy"] for r in rows], "s-", color="tab:blue")
        acc.set_ylabel("mean client test accuracy", color="tab:blue")
    ax.set_title(f"{result['dataset']}: what each width gets")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def write_bench(result: dict[str, Any], out: str | Path) -> list[Path]:
    """widths.json, widths.md and widths.png in ``out``, each written atomically."""
    out = Path(out)
    paths = [out / "widths.json", out / "widths.md", out / "widths.png"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown(result))
    with atomic_path(paths[2]) as tmp:
        plot(result, tmp)
    return paths
