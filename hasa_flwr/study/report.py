"""Turn a sweep folder into summary.json, summary.md and PNG plots; analyse calibration runs.

Accuracies are fractions in JSON (0.138, not 13.8); summary.md shows percentages for reading.
Paired statistics compare each strategy with `uniform` over the seeds both have (matched seeds:
the same split, initialisation and shuffling). Every p-value is per comparison: none is corrected
for the several strategies and summaries compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hasa_flwr.data.atomic import atomic_path, write_text_atomic
from hasa_flwr.federation.config import STRATEGIES, upgrade_recorded
from hasa_flwr.study.stats import describe, paired, spearman

SUMMARIES = ("mean", "worst", "tail")
CALIBRATION_SCORES = ("jsd", "entropy", "loss")


class ReportError(ValueError):
    """The folder cannot be reported on as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------- loading


def load_runs(folder: Path, command: str = "hasa sweep") -> dict[str, dict[int, dict[str, Any]]]:
    """``<folder>/<name>/seed-<k>/results.json`` -> {name: {seed: results}}; ``command`` wrote the
    folder (named in the errors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder: pass the --out folder of `{command}`")
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*/seed-*/results.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ReportError(f"{path} is unreadable ({err}): delete it and resume the sweep") from err
        seed = int(res.get("seed", path.parent.name.removeprefix("seed-")))
        if f"seed-{seed}" != path.parent.name:
            raise ReportError(f"{path} records seed {seed}, not {path.parent.name}: the folder was edited by hand")
        if not res.get("summary"):
            raise ReportError(f"{path} has no summary (no client was evaluated): delete it and re-run that run")
        runs.setdefault(path.parent.parent.name, {})[seed] = res
    if not runs:
        raise ReportError(f"no <strategy>/seed-<k>/results.json under {folder}: run `{command} --out {folder}` first")
    return runs


def strategy_order(names: Iterable[str]) -> list[str]:
    known = [s for s in STRATEGIES if s in names]
    return known + sorted(set(names) - set(known))


# ----------------------------------------------------------------------------- summary


def client_means(runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-client means over seeds of accuracy, full-width accuracy, width and score."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for res in runs.values():
        for c in res["clients"]:
            by_pid.setdefault(int(c["partition_id"]), []).append(c)
    rows = []
    for pid in sorted(by_pid):
        cs = by_pid[pid]
        acc = describe([c["accuracy"] for c in cs if c["accuracy"] is not None])

        def mean_of(key: str) -> float | None:
            vals = [c[key] for c in cs if c.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        rows.append({"partition_id": pid, "name": cs[0]["name"], "n_train": mean_of("n_train"),
                     "accuracy": acc["mean"], "accuracy_ci95": acc["ci95"], "top3": mean_of("top3"),
                     "full_width_accuracy": mean_of("full_width_accuracy"), "width": mean_of("width"),
                     "score": mean_of("score"), "rank": mean_of("rank"), "seeds": acc["n"]})
    return rows


def convergence(runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round, the mean over seeds of the run's mean and worst client accuracy."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for res in runs.values():
        for h in res.get("history", []):
            by_round.setdefault(int(h["round"]), []).append(h)
    out = []
    for r in sorted(by_round):
        hs = by_round[r]
        out.append({"round": r, "mean": describe([h["mean"] for h in hs]), "worst": describe([h["worst"] for h in hs]),
                    "seconds": float(np.mean([h["seconds"] for h in hs]))})
    return out


def empty_paired() -> dict[str, Any]:
    return {"mean_diff": None, "wilcoxon_p": None, "ttest_p": None, "wins": 0, "ties": 0, "n": 0}


def consistency_warnings(runs: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """Settings that should be equal across every run of a comparison but are not."""
    keys = ("dataset", "num_clients", "num_rounds", "budget", "budget_cost", "local_epochs", "batch_size", "lr",
            "optimizer", "embed_dim", "hidden_dim", "score", "width_min", "width_max")  # aggregation is a method axis
    seen: dict[str, set] = {k: set() for k in keys}
    for by_seed in runs.values():
        for res in by_seed.values():
            for k in keys:
                v = upgrade_recorded(res.get("config", {})).get(k)  # runs from before user data said "medium"
                seen[k].add(tuple(v) if isinstance(v, list) else v)
    return [f"{k} differs across runs: {sorted(map(str, v))}" for k, v in seen.items() if len(v) > 1]


def full_width_mean(res: dict[str, Any]) -> float | None:
    """Unweighted mean over clients of the full-width model's accuracy (None if any is missing)."""
    values = [c.get("full_width_accuracy") for c in res["clients"]]
    return None if any(v is None for v in values) else float(np.mean(values))


def paired_summaries(runs: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Paired statistics of ``runs`` against ``other`` on their matched seeds, per summary."""
    matched = sorted(set(runs) & set(other))
    out = {}
    for s in SUMMARIES:
        out[s] = (paired([runs[k]["summary"][s] for k in matched], [other[k]["summary"][s] for k in matched])
                  if matched else empty_paired())
        out[s]["seeds"] = matched
    return out


def summarize_sweep(runs: dict[str, dict[int, dict[str, Any]]], baseline: str = "uniform",
                    focus: str = "hasa") -> dict[str, Any]:
    """The summary.json payload (see the module docstring and docs/METHOD.md section 6)."""
    if baseline not in runs:
        raise ReportError(f"no '{baseline}' runs found (strategies: {', '.join(strategy_order(runs))}): the paired "
                          f"statistics compare every strategy with {baseline}; add it with `hasa sweep --strategies "
                          f"{baseline},...` into the same folder")
    base = runs[baseline]
    out: dict[str, Any] = {"metric": "top-1 accuracy on each client's own test split (fraction)",
                           "baseline": baseline, "strategies": {}}
    any_run = next(iter(base.values()))
    cfg = any_run.get("config", {})
    out["setup"] = {k: cfg.get(k) for k in ("dataset", "num_clients", "num_rounds", "budget", "budget_cost",
                                            "aggregation", "score", "width_min", "width_max")}
    other = {name: agg for name, by_seed in runs.items()
             if (agg := next(iter(by_seed.values())).get("config", {}).get("aggregation")) != cfg.get("aggregation")}
    if other:  # strategies whose aggregation differs from the baseline's (hasa-focus: selective)
        out["setup"]["aggregation_of"] = other
    for name in strategy_order(runs):
        by_seed = runs[name]
        seeds = sorted(by_seed)
        entry: dict[str, Any] = {"seeds": seeds}
        for s in SUMMARIES:
            entry[s] = describe([by_seed[k]["summary"][s] for k in seeds])
        entry["client_std"] = describe([by_seed[k]["summary"]["std"] for k in seeds])
        full = [full_width_mean(by_seed[k]) for k in seeds]
        if all(v is not None for v in full):  # rolling/random units are trained for the full model, not a prefix
            entry["full_width_mean"] = describe(full)
        by_summary = paired_summaries(by_seed, base)
        entry["paired_vs_uniform"] = by_summary["mean"]
        entry["paired_vs_uniform_worst"] = by_summary["worst"]
        entry["paired_vs_uniform_tail"] = by_summary["tail"]
        entry["per_client"] = client_means(by_seed)
        entry["convergence"] = convergence(by_seed)
        entry["allocation"] = by_seed[seeds[0]].get("allocation")
        entry["extraction"] = by_seed[seeds[0]].get("extraction")
        out["strategies"][name] = entry
    out["per_client_means"] = {name: {c["name"]: c["accuracy"] for c in e["per_client"]}
                               for name, e in out["strategies"].items()}
    if focus in runs:  # the paper's claims are about HASA against each baseline, not only uniform
        out[f"{focus}_vs"] = {name: paired_summaries(runs[focus], runs[name])
                              for name in strategy_order(runs) if name != focus}
    out["warnings"] = consistency_warnings(runs)
    return out


# ----------------------------------------------------------------------------- Markdown


def pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def pm(d: dict[str, Any]) -> str:
    return f"{pct(d['mean'])} ± {pct(d['ci95'])}" if d.get("ci95") is not None else pct(d["mean"])


def pval(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def summary_markdown(summary: dict[str, Any], calibrations: list[dict[str, Any]] | None = None) -> str:
    setup = summary.get("setup", {})
    lines = ["# Sweep summary", "",
             f"Data set `{setup.get('dataset')}`, {setup.get('num_clients')} clients, "
             f"{setup.get('num_rounds')} rounds, "
             f"budget B = {setup.get('budget')} ({setup.get('budget_cost')} cost), score `{setup.get('score')}`, "
             f"aggregation `{setup.get('aggregation')}`"
             + "".join(f" (`{agg}`: {', '.join(k for k, v in setup['aggregation_of'].items() if v == agg)})"
                       for agg in sorted(set(setup.get("aggregation_of", {}).values()))) + "."
             + (f" Runs of {', '.join(summary['compared_with']['strategies'])} come from "
                f"`{summary['compared_with']['source']}`." if summary.get("compared_with") else ""), "",
             "Top-1 accuracy in % (summary.json holds fractions): mean ± t-based 95% CI over seeds. "
             "Paired columns compare with `uniform` on matched seeds: difference of the mean client accuracy "
             "(percentage points), Wilcoxon signed-rank and paired t-test p-values (two-sided), and seeds where the "
             "strategy's mean beats uniform's. The last column is the mean client accuracy of the full-width "
             "supernet (what rolling and random extraction train for; the headline metric evaluates each client's "
             "width-w prefix, which they never train as one unit).", "",
             "| strategy | seeds | mean | worst | tail | Δ mean vs uniform | Wilcoxon p | t-test p | wins/n | "
             "full-width model |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in summary["strategies"].items():
        p = e["paired_vs_uniform"]
        diff = "-" if p["mean_diff"] is None else f"{100 * p['mean_diff']:+.2f}"
        full = pm(e["full_width_mean"]) if "full_width_mean" in e else "-"
        lines.append(f"| {name} | {len(e['seeds'])} | {pm(e['mean'])} | {pm(e['worst'])} | {pm(e['tail'])} | {diff} | "
                     f"{pval(p['wilcoxon_p'])} | {pval(p['ttest_p'])} | {p['wins']}/{p['n']} | {full} |")
    lines += ["", "Worst and tail clients, paired against uniform (Δ in percentage points, Wilcoxon p, wins/n):", "",
              "| strategy | Δ worst | p | wins | Δ tail | p | wins |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in summary["strategies"].items():
        cells = []
        for key in ("paired_vs_uniform_worst", "paired_vs_uniform_tail"):
            p = e[key]
            cells += ["-" if p["mean_diff"] is None else f"{100 * p['mean_diff']:+.2f}", pval(p["wilcoxon_p"]),
                      f"{p['wins']}/{p['n']}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, versus in summary.items():
        if key.endswith("_vs") and isinstance(versus, dict):
            focus = key[:-3]
            lines += ["", f"`{focus}` paired against each strategy on matched seeds (Δ = {focus} − strategy in "
                      f"percentage points, Wilcoxon p, seeds where {focus} is higher):", "",
                      "| strategy | Δ mean | p | wins | Δ worst | p | wins | Δ tail | p | wins |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, by_summary in versus.items():
                cells = []
                for s in SUMMARIES:
                    p = by_summary[s]
                    cells += ["-" if p["mean_diff"] is None else f"{100 * p['mean_diff']:+.2f}",
                              pval(p["wilcoxon_p"]), f"{p['wins']}/{p['n']}"]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    names = list(summary["strategies"])
    clients = summary["strategies"][names[0]]["per_client"]
    lines += ["", "Per-client accuracy in % (mean over seeds) and mean width:", "",
              "| client | n_train | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for i, c in enumerate(clients):
        cells = []
        for name in names:
            pc = {r["partition_id"]: r for r in summary["strategies"][name]["per_client"]}.get(c["partition_id"])
            cells.append("-" if pc is None else f"{pct(pc['accuracy'])} (w {pc['width']:.2f})")
        n_train = "-" if c["n_train"] is None else f"{c['n_train']:.0f}"
        lines.append(f"| {c['partition_id']} {c['name']} | {n_train} | " + " | ".join(cells) + " |")
    if summary.get("warnings"):
        lines += ["", "**Warnings:** " + "; ".join(summary["warnings"])]
    calibrations = calibrations or []
    if len(calibrations) > 1:
        lines += ["", "## Score validity, all data sets", "",
                  "Spearman rho (p) between each score and the measured need for width, per data set:", "",
                  "| data set | seeds | " + " | ".join(CALIBRATION_SCORES) + " |",
                  "|---|---|" + "---:|" * len(CALIBRATION_SCORES)]
        for c in calibrations:
            cells = ["-" if c["spearman"][s]["rho"] is None else
                     f"{c['spearman'][s]['rho']:+.2f} ({pval(c['spearman'][s]['p'])})" for s in CALIBRATION_SCORES]
            lines.append(f"| {c['dataset']} | {len(c['seeds'])} | " + " | ".join(cells) + " |")
    for c in calibrations:
        lines += ["", calibration_markdown(c)]
    lines += ["", "Plots: per_client.png, convergence.png, score_vs_width.png"
              + (", score_vs_need.png" if calibrations else "") + "."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 120) -> Path:
    """Write a figure whole or not at all (a folder may be watched while it fills) and free it
    (plots are made in loops over sweeps). Figures without a layout engine get tight_layout."""
    path = Path(path)
    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        _pyplot().close(fig)
    return path


def plot_per_client(summary: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    names = list(summary["strategies"])
    clients = summary["strategies"][names[0]]["per_client"]
    x = np.arange(len(clients))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(clients)), 4.5))
    for i, name in enumerate(names):
        rows = {r["partition_id"]: r for r in summary["strategies"][name]["per_client"]}
        acc = [100 * rows[c["partition_id"]]["accuracy"] if c["partition_id"] in rows else np.nan for c in clients]
        err = [100 * (rows[c["partition_id"]]["accuracy_ci95"] or 0.0) if c["partition_id"] in rows else 0.0
               for c in clients]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, acc, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(x, [f"{c['partition_id']}: {c['name'][:18]}" for c in clients], rotation=25, ha="right",
                  fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Per-client accuracy by strategy (mean over seeds, 95% CI)")
    ax.legend(fontsize=8, ncol=min(4, len(names)))
    return save(fig, path)


def plot_convergence(summary: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for name, e in summary["strategies"].items():
        rounds = [h["round"] for h in e["convergence"]]
        for ax, key in zip(axes, ("mean", "worst")):
            m = np.array([100 * h[key]["mean"] for h in e["convergence"]])
            ci = np.array([100 * (h[key]["ci95"] or 0.0) for h in e["convergence"]])
            (line,) = ax.plot(rounds, m, marker="o", ms=3, label=name)
            ax.fill_between(rounds, m - ci, m + ci, color=line.get_color(), alpha=0.12)
    from matplotlib.ticker import MaxNLocator

    for ax, title in zip(axes, ("mean client accuracy", "worst client accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title + " per round (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save(fig, path)


def plot_score_vs_width(summary: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    names = list(summary["strategies"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), sharey=True, squeeze=False)
    score_name = summary.get("setup", {}).get("score") or "score"
    for ax, name in zip(axes.flat, names):
        pcs = [c for c in summary["strategies"][name]["per_client"] if c["score"] is not None]
        xs, ys = [c["score"] for c in pcs], [c["width"] for c in pcs]
        ax.scatter(xs, ys, s=[12 + 40 * (c["n_train"] or 0) / max(1, max(d["n_train"] or 0 for d in pcs))
                              for c in pcs], alpha=0.8)
        for c in pcs:
            ax.annotate(str(c["partition_id"]), (c["score"], c["width"]), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"score ({score_name}; hasa-random: its random score)", fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("width (mean over seeds)")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("Assigned width vs heterogeneity score (marker size ~ n_train; labels = partition id)", fontsize=10)
    return save(fig, path)


def plot_score_vs_need(calibration: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    scores = [s for s in CALIBRATION_SCORES if s in calibration["spearman"]]
    fig, axes = plt.subplots(1, len(scores), figsize=(3.8 * len(scores), 3.4), squeeze=False)
    need = [100 * c["need"] for c in calibration["clients"]]
    for ax, s in zip(axes[0], scores):
        xs = [c[s] for c in calibration["clients"]]
        ax.scatter(xs, need)
        for c, x, y in zip(calibration["clients"], xs, need):
            ax.annotate(str(c["partition_id"]), (x, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
        rho = calibration["spearman"][s]["rho"]
        ax.set_title(f"{s}: Spearman rho = {'-' if rho is None else f'{rho:+.2f}'}", fontsize=9)
        ax.set_xlabel(f"{s} score (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"need for width: acc(1.0) - acc({calibration['budget']:g}) (pp)")
    fig.suptitle(f"Score validity on {calibration['dataset']} ({len(calibration['seeds'])} seeds)", fontsize=10)
    return save(fig, path)


# ----------------------------------------------------------------------------- report


def write_report(folder: Path, calibration: Path | list[Path] | None = None, out: Path | None = None,
                 compare: Path | None = None) -> dict[str, Path]:
    """`hasa report`: summary.json, summary.md and the PNGs into ``out`` (default: the sweep folder).

    ``calibration``: one calibration folder, or several (the first is this sweep's data set; the
    others join the score-validity table, e.g. Medium beside digits). ``compare``: a sweep folder
    whose strategies that ``folder`` lacks join the comparison.
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    runs = load_runs(folder)
    added = {name: by_seed for name, by_seed in load_runs(compare).items() if name not in runs} if compare else {}
    summary = summarize_sweep({**runs, **added})
    if compare is not None:
        summary["compared_with"] = {"source": str(compare), "strategies": strategy_order(added)}
    sources = [Path(calibration)] if isinstance(calibration, (str, Path)) else [Path(c) for c in calibration or []]
    calibs = [load_calibration(c) for c in sources]
    calib = calibs[0] if calibs else None
    if calib is not None:
        summary["calibration"] = {"source": str(sources[0]), "dataset": calib["dataset"],
                                  "spearman": calib["spearman"]}
        summary["score_validity"] = [{"source": str(src), "dataset": c["dataset"], "seeds": c["seeds"],
                                      "spearman": c["spearman"]} for src, c in zip(sources, calibs)]
    summary["source"] = str(folder)
    manifest = folder / "sweep.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        summary["sweep"] = {k: m.get(k) for k in ("command", "preset", "overrides", "hardware")}
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary.json": out / "summary.json", "summary.md": out / "summary.md"}
    write_text_atomic(paths["summary.json"], json.dumps(summary, indent=1) + "\n")
    write_text_atomic(paths["summary.md"], summary_markdown(summary, calibs))
    paths["per_client.png"] = plot_per_client(summary, out / "per_client.png")
    paths["convergence.png"] = plot_convergence(summary, out / "convergence.png")
    paths["score_vs_width.png"] = plot_score_vs_width(summary, out / "score_vs_width.png")
    if calib is not None:
        paths["score_vs_need.png"] = plot_score_vs_need(calib, out / "score_vs_need.png")
    return paths


# ----------------------------------------------------------------------------- calibration


def load_calibration(folder: Path) -> dict[str, Any]:
    """calibration.json of a calibration folder, computed (and written) if it is missing or stale."""
    path = folder / "calibration.json"
    if path.is_file():
        calib = json.loads(path.read_text())
        if calib.get("runs") == _run_count(folder):
            return calib
    return write_calibration(folder)


def _run_count(folder: Path) -> int:
    return len(list(folder.glob("*/seed-*/results.json")))


def client_scores(config: dict[str, Any]) -> dict[str, np.ndarray]:
    """jsd, entropy and loss scores for one seed's clients, as the ServerApp computes them.

    ``loss``: mean training loss of the initial supernet (torch.manual_seed(seed), as server_app.py)
    at width B, prefix units, on each client's training split (client.query_loss).
    """
    from hasa_flwr.federation.config import Settings
    from hasa_flwr.method.scores import entropy_scores, jsd_scores
    from hasa_flwr.method.train import evaluate

    settings = Settings.from_dict({**config, "data_path": recorded_data_path(str(config.get("data_path", "")))})
    fed = settings.load_data()
    counts = np.stack([c.label_counts(fed.num_classes, settings.score_histogram) for c in fed.clients])
    full = settings.initial_model(fed.num_classes, fed.input_shape)
    sub = settings.prefix_of(full, fed.num_classes, settings.budget)
    losses = np.array([evaluate(sub, c.x_train, c.y_train)["loss"] for c in fed.clients])
    return {"jsd": jsd_scores(counts), "entropy": entropy_scores(counts), "loss": losses}


def recorded_data_path(path: str) -> str:
    """A data-path recorded on another machine (absolute, missing here) as its file or folder name,
    which resolve_path looks up under $HASA_DATA_DIR; a relative one is looked up there as it is."""
    return Path(path).name if path and Path(path).is_absolute() and not Path(path).exists() else path


def evaluated_clients(full: dict[int, dict], low: dict[int, dict], seeds: list[int]) -> tuple[list[int], list[str]]:
    """Partition ids with an accuracy in both runs of every seed, and a note per client left out: a
    failed evaluation records a null accuracy, and its need is unknown, not zero."""
    acc = {(run, k): {c["partition_id"]: c["accuracy"] for c in by_seed[k]["clients"]}
           for run, by_seed in (("width 1.0", full), ("width B", low)) for k in seeds}
    pids = sorted({p for by_pid in acc.values() for p in by_pid})
    kept, notes = [], []
    for p in pids:
        gaps = [f"{run} seed {k}" for (run, k), by_pid in acc.items() if by_pid.get(p) is None]
        if gaps:
            notes.append(f"client {p}, no accuracy in {', '.join(gaps)}")
        else:
            kept.append(p)
    return kept, notes


def calibration_analysis(folder: Path) -> dict[str, Any]:
    """need_i = mean over seeds of acc_i(width 1.0) - acc_i(width B); Spearman with each score."""
    runs = load_runs(folder, "hasa calibrate")
    full_name = next((n for n in runs if n in ("width-1.0", "width-1")), None)
    narrow = [n for n in runs if n != full_name]
    if full_name is None or len(narrow) != 1:
        raise ReportError(f"{folder} needs exactly two run folders, width-1.0 and width-<B> (found "
                          f"{', '.join(sorted(runs))}): make it with `hasa calibrate --out {folder}`")
    full, low = runs[full_name], runs[narrow[0]]
    seeds = sorted(set(full) & set(low))
    if not seeds:
        raise ReportError(f"{folder}: no seed has both a width-1.0 and a {narrow[0]} run")
    for k in seeds:
        widths = [c["width"] for c in full[k]["clients"]]
        if min(widths) < 1.0 - 1e-9:
            raise ReportError(f"{folder}/{full_name}/seed-{k}: widths {widths} are not all 1.0")
    budget = float(low[seeds[0]]["config"]["budget"])
    pids, skipped = evaluated_clients(full, low, seeds)
    if len(pids) < 2:
        raise ReportError(f"{folder}: fewer than 2 clients have an accuracy in every run"
                          + (f" ({'; '.join(skipped)})" if skipped else ""))
    names = {c["partition_id"]: c["name"] for k in seeds for c in low[k]["clients"]}
    n_train = {c["partition_id"]: int(c["n_train"]) for k in seeds for c in low[k]["clients"]}
    per_seed_need, per_seed_scores, acc_full, acc_low = [], {s: [] for s in CALIBRATION_SCORES}, [], []
    for k in seeds:
        a_full = {c["partition_id"]: c["accuracy"] for c in full[k]["clients"]}
        a_low = {c["partition_id"]: c["accuracy"] for c in low[k]["clients"]}
        acc_full.append([a_full[p] for p in pids])
        acc_low.append([a_low[p] for p in pids])
        per_seed_need.append([a_full[p] - a_low[p] for p in pids])
        scores = client_scores(low[k]["config"])  # indexed by partition id (the server's client number)
        for s in CALIBRATION_SCORES:
            per_seed_scores[s].append(np.asarray(scores[s])[pids])
    need = np.mean(per_seed_need, axis=0)
    mean_scores = {s: np.mean(v, axis=0) for s, v in per_seed_scores.items()}
    clients = []
    for i, p in enumerate(pids):
        clients.append({"partition_id": p, "name": names[p], "need": float(need[i]),
                        "need_per_seed": [float(row[i]) for row in per_seed_need],
                        "accuracy_full": float(np.mean([row[i] for row in acc_full])),
                        "accuracy_budget": float(np.mean([row[i] for row in acc_low])),
                        "n_train": n_train[p],
                        **{s: float(mean_scores[s][i]) for s in CALIBRATION_SCORES}})
    rho = {s: spearman(mean_scores[s], need) for s in CALIBRATION_SCORES}
    for s in CALIBRATION_SCORES:
        rho[s]["per_seed"] = [spearman(per_seed_scores[s][j], per_seed_need[j])["rho"] for j in range(len(seeds))]
    sizes = np.array([c["n_train"] for c in clients], dtype=np.float64)
    return {"dataset": low[seeds[0]]["config"]["dataset"], "budget": budget, "seeds": seeds, "runs": _run_count(folder),
            "num_rounds": low[seeds[0]]["config"]["num_rounds"], "clients": clients, "spearman": rho,
            "spearman_n_train": spearman(sizes, need), "skipped": skipped,
            "definition": "need_i = mean over seeds of accuracy_i(width 1.0) - accuracy_i(width B), uniform "
                          "allocation, prefix subnets; scores from training-split label counts (jsd, entropy) and "
                          "the initial supernet's loss at width B (loss), averaged over seeds"}


def calibration_markdown(calib: dict[str, Any]) -> str:
    lines = [f"## Score validity on {calib['dataset']}", "",
             f"need for width = accuracy at width 1.0 - accuracy at width {calib['budget']:g} (uniform, prefix), mean "
             f"over seeds {calib['seeds']} ({calib['num_rounds']} rounds). Spearman correlation of each score with "
             "need (the HASA rule assumes a positive one):", "",
             "| score | Spearman rho | p | per-seed rho |", "|---|---:|---:|---|"]
    for s in CALIBRATION_SCORES:
        r = calib["spearman"][s]
        per = ", ".join("-" if v is None else f"{v:+.2f}" for v in r.get("per_seed", []))
        rho = "-" if r["rho"] is None else f"{r['rho']:+.3f}"
        lines.append(f"| {s} | {rho} | {pval(r['p'])} | {per} |")
    sz = calib.get("spearman_n_train")
    if sz and sz["rho"] is not None:
        lines.append(f"| (n_train, for reference) | {sz['rho']:+.3f} | {pval(sz['p'])} | |")
    if calib.get("skipped"):
        lines += ["", "Left out (a null accuracy: its evaluation failed): " + "; ".join(calib["skipped"]) + "."]
    lines += ["", "| client | n_train | acc width 1.0 | acc width B | need (pp) | jsd | entropy | loss |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in calib["clients"]:
        lines.append(f"| {c['partition_id']} {c['name']} | {c['n_train']} | {pct(c['accuracy_full'])} | "
                     f"{pct(c['accuracy_budget'])} | {100 * c['need']:+.2f} | {c['jsd']:.4f} | {c['entropy']:.4f} | "
                     f"{c['loss']:.4f} |")
    lines += ["", "The oracle check (does HASA gain when the score *is* the need?): the measured need as given "
              f"scores, `--set score=given --set score-values={oracle_score_values(calib)}`"]
    return "\n".join(lines) + "\n"


def oracle_score_values(calib: dict[str, Any]) -> str:
    """The measured need per partition id as a `score-values` run-config string."""
    need = {c["partition_id"]: c["need"] for c in calib["clients"]}
    return ",".join(f"{need[i]:.5f}" for i in sorted(need))


def write_calibration(folder: Path) -> dict[str, Any]:
    """calibration.json, calibration.md and score_vs_need.png in the calibration folder."""
    folder = Path(folder)
    calib = calibration_analysis(folder)
    write_text_atomic(folder / "calibration.json", json.dumps(calib, indent=1) + "\n")
    write_text_atomic(folder / "calibration.md", calibration_markdown(calib))
    plot_score_vs_need(calib, folder / "score_vs_need.png")
    return calib
