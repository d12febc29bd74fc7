"""`hasa report --grid`: a `hasa grid` folder as one map of paired deltas (grid.json, grid.md, heat maps).

For every cell, every arm other than the baseline and every round count R, each arm is paired with
the baseline over the seeds both have, on the accuracy of round R (the history row of round R; the
final summary when R is the run's last round and the history lacks it), as `hasa report` pairs one
sweep (report.paired_summaries' statistics). A map that a background grid is still filling is
normal: a cell, arm or round without common seeds is an empty entry, never an error.

grid.json holds fractions like summary.json, plus ``delta_pp`` (the paired mean difference in
percentage points, what the tables and heat maps show).

Besides round counts, ``best`` reads each run at its own best round (the highest mean client
accuracy, the earliest of ties): what early stopping would keep. It tells "an arm pays late" from
"the baseline over-fits by then". The round is chosen on the test splits (the runs hold no
validation split), so it is an optimistic bound, the same for every arm; the screen ignores it.

The screen's p criterion cannot fire on few seeds: the smallest two-sided Wilcoxon p of n pairs is
2 / 2^n, 0.25 at the screen's 3 seeds, so there only |Δ mean| sends a cell on (grid.json's
``screen_min_p`` and the printed screen say so). Pooled groups of cells are tested over seeds, not
(cell, seed) pairs: cells share each seed's split, so the seed is the independent unit (``pooled``).
No p-value is corrected for multiple comparisons.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hasa_flwr.study.grid import read_grid
from hasa_flwr.data.atomic import write_text_atomic
from hasa_flwr.study.report import SUMMARIES, ReportError, _pyplot, empty_paired, load_runs, pct, pval, save
from hasa_flwr.federation.results import write_json_atomic
from hasa_flwr.study.stats import describe, min_wilcoxon_p, paired

DEFAULT_ROUNDS = (8, 20, 40)
BEST = "best"              # each run at its own best round (module docstring)
SCREEN_DELTA_PP = 0.3      # the grid files' screen: |delta mean| >= 0.3 points ...
SCREEN_P = 0.2             # ... or p < 0.2 at any round count sends a cell to seeds 0-9 (needs >= 4 pairs)
SCREEN_SEEDS = range(10)
CELL_AXIS = "cell"         # the one coordinate of cells whose sweep.json names no axis values


@dataclass(frozen=True)
class MapCell:
    name: str
    values: dict[str, str]                        # axis -> value label, as sweep.json's "cell"
    runs: dict[str, dict[int, dict[str, Any]]]    # arm -> seed -> results.json


@dataclass(frozen=True)
class GridMap:
    folder: Path
    grid_file: str | None
    axes: dict[str, list[str]]                    # axis -> value labels in map order
    arms: list[str]
    cells: list[MapCell]


@dataclass(frozen=True)
class Layout:
    """Where each cell sits in a 2-D table: rows = one axis, columns = the other axes' combinations."""

    row_title: str
    rows: list[str]
    col_title: str
    cols: list[str]
    where: dict[str, tuple[int, int]]


# ----------------------------------------------------------------------------- loading


def _manifest(cell_dir: Path) -> dict[str, Any]:
    path = cell_dir / "sweep.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as err:
        raise ReportError(f"{path} is unreadable ({err}): re-run `hasa grid` on the same --out to rewrite it") from err


def _load_cell_runs(cell_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """A cell's finished runs; a cell that has none yet is empty, not an error (load_runs would raise)."""
    return load_runs(cell_dir) if any(cell_dir.glob("*/seed-*/results.json")) else {}


def _label_key(label: str) -> tuple:
    """Numbers by value, other labels naturally ("8-16" before "16-32")."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)])


def _order_from_grid_file(path: str | None, found: dict[str, MapCell]
                          ) -> tuple[dict[str, list[str]], list[str], list[MapCell]] | None:
    """Axes, arms and cells in the recorded grid file's order (its unstarted cells empty), if it still fits."""
    if not path or not Path(path).is_file():
        return None
    try:
        grid = read_grid(path)
    except ValueError:
        return None
    names = {c.name for c in grid.cells}
    if not set(found) <= names:  # the file was edited since: infer the order instead
        return None
    axes: dict[str, list[str]] = {}
    for c in grid.cells:
        for axis, label in c.values.items():
            axes.setdefault(axis, [])
            if label not in axes[axis]:
                axes[axis].append(label)
    cells = [MapCell(c.name, dict(c.values), found[c.name].runs if c.name in found else {}) for c in grid.cells]
    return axes, list(grid.arms), cells


def _inferred_order(found: dict[str, MapCell]) -> tuple[dict[str, list[str]], list[MapCell]]:
    """Axes from the cells' recorded values; a map whose cells disagree on the axes gets one row per cell."""
    keys = {tuple(c.values) for c in found.values()}
    if len(keys) != 1 or not next(iter(keys)):
        cells = [MapCell(name, {CELL_AXIS: name}, found[name].runs) for name in sorted(found)]
        return {CELL_AXIS: sorted(found)}, cells
    axes = {a: sorted({c.values[a] for c in found.values()}, key=_label_key) for a in next(iter(keys))}
    cells = sorted(found.values(), key=lambda c: [axes[a].index(c.values[a]) for a in axes])
    return axes, cells


def in_repository(recorded: str | None, folder: Path | None = None) -> str | None:
    """The grid file as a reader of a committed map can use it: its path inside its git repository
    (a grid run from a worktree records an absolute path that only existed on that machine). Once
    that worktree is gone, the same file inside the repository that holds the map ``folder``."""
    if not recorded:
        return recorded
    path = Path(recorded)
    for root in path.parents:
        if (root / ".git").exists():
            return path.relative_to(root).as_posix()
    repo = next((r for r in Path(folder).absolute().parents if (r / ".git").exists()), None) if folder else None
    for k in range(1, len(path.parts)) if repo else ():
        if (repo / Path(*path.parts[k:])).is_file():
            return Path(*path.parts[k:]).as_posix()
    return recorded


def load_map(folder: Path) -> GridMap:
    """Every cell folder of a `hasa grid --out` folder (a sweep.json or a results.json makes a folder a cell)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder: pass the --out folder of `hasa grid`")
    found: dict[str, MapCell] = {}
    arms: list[str] = []
    grid_file = None
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        manifest = _manifest(d)
        if not manifest and not any(d.glob("*/seed-*/results.json")):
            continue
        runs = _load_cell_runs(d)
        found[d.name] = MapCell(d.name, {str(k): str(v) for k, v in (manifest.get("cell") or {}).items()}, runs)
        arms = list(dict.fromkeys([*arms, *manifest.get("strategies", []), *sorted(runs)]))
        grid_file = grid_file or manifest.get("grid")
    if not found:
        hint = (f"; {folder} holds a sweep.json, so it is a sweep folder: use `hasa report {folder}`"
                if (folder / "sweep.json").is_file() else f": run `hasa grid GRID.toml --out {folder}` first")
        raise ReportError(f"no grid cell (<cell>/<arm>/seed-<k>/results.json) under {folder}{hint}")
    shown = in_repository(grid_file, folder)
    ordered = _order_from_grid_file(grid_file if grid_file and Path(grid_file).is_file() else shown, found)
    grid_file = shown
    if ordered is not None:
        axes, grid_arms, cells = ordered
        arms = [*grid_arms, *(a for a in arms if a not in grid_arms)]
    else:
        axes, cells = _inferred_order(found)
    return GridMap(folder, grid_file, axes, arms, cells)


# ----------------------------------------------------------------------------- statistics


def last_round(res: dict[str, Any]) -> int:
    rounds = [int(h["round"]) for h in res.get("history", [])]
    return int(res.get("config", {}).get("num_rounds") or max(rounds, default=0))


def best_round(res: dict[str, Any]) -> int | None:
    """The round of a run's highest mean client accuracy (the earliest of ties), None without history."""
    rows = [h for h in res.get("history", []) if all(h.get(s) is not None for s in SUMMARIES)]
    return int(max(rows, key=lambda h: (float(h["mean"]), -int(h["round"])))["round"]) if rows else None


def at_round(res: dict[str, Any], rnd: int | str) -> dict[str, float] | None:
    """mean/worst/tail of one run after ``rnd`` rounds (or at its ``best`` round), None if it has no
    evaluation there."""
    if rnd == BEST:
        best = best_round(res)
        return None if best is None else at_round(res, best)
    for h in res.get("history", []):
        if int(h["round"]) == rnd and all(h.get(s) is not None for s in SUMMARIES):
            return {s: float(h[s]) for s in SUMMARIES}
    if rnd == last_round(res) and res.get("summary"):
        return {s: float(res["summary"][s]) for s in SUMMARIES}
    return None


def _values(runs: dict[int, dict[str, Any]], rnd: int | str) -> dict[int, dict[str, float]]:
    out = {seed: at_round(res, rnd) for seed, res in runs.items()}
    return {seed: v for seed, v in out.items() if v is not None}


def compare(arm: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], rnd: int | str) -> dict[str, Any]:
    """Arm - baseline at round ``rnd``, paired over the seeds both have an evaluation for."""
    a, b = _values(arm, rnd), _values(base, rnd)
    seeds = sorted(set(a) & set(b))
    entry: dict[str, Any] = {"seeds": seeds, "n": len(seeds), "baseline": None}
    if seeds:
        entry["baseline"] = {s: float(np.mean([b[k][s] for k in seeds])) for s in SUMMARIES}
    for s in SUMMARIES:
        p = paired([a[k][s] for k in seeds], [b[k][s] for k in seeds]) if seeds else empty_paired()
        entry[s] = {**p, "delta_pp": None if p["mean_diff"] is None else 100 * p["mean_diff"]}
    if rnd == BEST:  # which rounds were kept, per paired seed
        entry["best_rounds"] = {"arm": [best_round(arm[k]) for k in seeds], "baseline": [best_round(base[k]) for k in seeds]}
    return entry


def baseline_lands(base: dict[int, dict[str, Any]], rnd: int | str) -> dict[str, Any] | None:
    """Where the baseline itself is at round ``rnd``, over every seed it has there."""
    v = _values(base, rnd)
    if not v:
        return None
    lands = {"seeds": sorted(v), **{s: describe([v[k][s] for k in sorted(v)]) for s in SUMMARIES}}
    if rnd == BEST:
        lands["best_rounds"] = [best_round(base[k]) for k in sorted(v)]
    return lands


def screen_p(stat: dict[str, Any]) -> float | None:
    """The screen's p: Wilcoxon, or the paired t-test where Wilcoxon is undefined."""
    return stat["wilcoxon_p"] if stat["wilcoxon_p"] is not None else stat["ttest_p"]


def screen_reasons(arm: str, rnd: int | str, entry: dict[str, Any]) -> list[str]:
    """Why the grid files' screen sends a cell to seeds 0-9 at this arm and round (empty: it does not;
    the screen is written on round counts, so ``best`` never flags)."""
    stat = entry["mean"]
    if not entry["n"] or rnd == BEST:
        return []
    p = screen_p(stat)
    if abs(stat["delta_pp"]) >= SCREEN_DELTA_PP - 1e-9 or (p is not None and p < SCREEN_P):
        return [f"{arm} at round {rnd}: Δ mean {stat['delta_pp']:+.2f} pp, p {pval(p)}, n {entry['n']}"]
    return []


def format_seeds(seeds: list[int]) -> str:
    """[3, 4, 5, 7] -> '3-5,7' (what --seeds reads)."""
    parts = []
    for _, group in itertools.groupby(enumerate(sorted(seeds)), key=lambda t: t[1] - t[0]):
        run = [s for _, s in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def cell_screen(gmap: GridMap, cell: MapCell, reasons: list[str]) -> dict[str, Any]:
    """The screen's verdict for one cell, with the `hasa grid` command that extends it to seeds 0-9."""
    have = set.intersection(*(set(cell.runs.get(a, {})) for a in gmap.arms))  # an arm not started has no seed
    missing = [k for k in SCREEN_SEEDS if k not in have]
    command = None
    if reasons and missing:
        command = (f"hasa grid {gmap.grid_file or 'GRID.toml'} --out {gmap.folder} --seeds {format_seeds(missing)} "
                   f"--cells {cell.name}")
    return {"flagged": bool(reasons), "reasons": reasons, "missing_seeds": missing, "command": command}


def default_rounds(gmap: GridMap) -> list[int]:
    """8, 20 and 40 where some run got that far, and always the runs' last round."""
    last = max((last_round(r) for c in gmap.cells for by_seed in c.runs.values() for r in by_seed.values()),
               default=max(DEFAULT_ROUNDS))
    return sorted({r for r in DEFAULT_ROUNDS if r <= last} | {last})


def parse_rounds(text: str | None) -> list[int | str] | None:
    """`--rounds 8,20,40[,best]`; None (the default rounds) when not given."""
    if not text:
        return None
    tokens = {t for t in text.replace(" ", "").split(",") if t}
    numbers = tokens - {BEST}
    if not tokens or not all(t.isdigit() and int(t) >= 1 for t in numbers):
        raise ReportError(f"--rounds '{text}' not understood: give round counts and/or 'best', e.g. --rounds 8,20,40,best")
    return [*sorted(int(t) for t in numbers), *[BEST] * (BEST in tokens)]


def round_label(rnd: int | str) -> str:
    return "best round" if rnd == BEST else f"round {rnd}"


def pooled(gmap: GridMap, baseline: str, arms: list[str], rounds: list[int | str]) -> list[dict[str, Any]]:
    """Arm - baseline over a group of cells: all cells, then each value of each axis. A cell's few
    seeds cannot show a pattern that many cells share; the group's seeds can (pooled_over_seeds)."""
    groups = [("all cells", gmap.cells)] if len(gmap.cells) > 1 else []
    groups += [(f"{axis} = {value}", [c for c in gmap.cells if c.values.get(axis) == value])
               for axis, values in gmap.axes.items() if len(values) > 1 for value in values]
    return [{"cells": label, "arms": {arm: {str(r): pooled_over_seeds(cells, arm, baseline, r) for r in rounds}
                                      for arm in arms}} for label, cells in groups]


def pooled_over_seeds(cells: list[MapCell], arm: str, baseline: str, rnd: int | str) -> dict[str, Any]:
    """Per seed the mean over cells, then the paired test over seeds: cells share each seed's split,
    so (cell, seed) pairs are not independent and the seed is the unit. Only the seeds that every
    cell with pairs has count, so each seed averages the same cells (a screen's extra seeds go to
    the cells it picked by their Δ: averaging them in would bias the pooled Δ toward them)."""
    paired_cells = []
    for cell in cells:
        a, b = _values(cell.runs.get(arm, {}), rnd), _values(cell.runs.get(baseline, {}), rnd)
        if set(a) & set(b):
            paired_cells.append((a, b))
    seeds = sorted(set.intersection(*(set(a) & set(b) for a, b in paired_cells))) if paired_cells else []
    entry: dict[str, Any] = {"n": len(seeds), "seeds": seeds, "n_cells": len(paired_cells) if seeds else 0}
    for s in SUMMARIES:
        entry[s] = _pooled_stat([np.mean([a[k][s] for a, _ in paired_cells]) for k in seeds],
                                [np.mean([b[k][s] for _, b in paired_cells]) for k in seeds])
    return entry


def _pooled_stat(arm: list[float], base: list[float]) -> dict[str, Any] | None:
    if not arm:
        return None
    p = paired(arm, base)
    return {**p, "delta_pp": 100 * p["mean_diff"]}


def screen_min_p(cells: list[dict[str, Any]], rounds: list[int | str]) -> dict[str, float]:
    """The smallest p each number of paired seeds in the map can reach: where it is >= SCREEN_P, only
    the |Δ| criterion can send a cell on (3 seeds: 0.25)."""
    ns = {e["n"] for c in cells for by_round in c["arms"].values() for r in rounds if r != BEST
          for e in [by_round[str(r)]] if e["n"]}
    return {str(n): min_wilcoxon_p(n) for n in sorted(ns)}


def summarize_map(gmap: GridMap, baseline: str = "uniform", rounds: list[int | str] | None = None) -> dict[str, Any]:
    """The grid.json payload."""
    if baseline not in gmap.arms:
        raise ReportError(f"no '{baseline}' arm in any cell of {gmap.folder} (arms: {', '.join(gmap.arms) or 'none'}):"
                          f" pass --baseline with one of them")
    rounds = rounds or default_rounds(gmap)
    arms = [a for a in gmap.arms if a != baseline]
    cells = []
    for cell in gmap.cells:
        base = cell.runs.get(baseline, {})
        entry: dict[str, Any] = {"name": cell.name, "values": cell.values,
                                 "seeds": {a: sorted(cell.runs.get(a, {})) for a in gmap.arms},
                                 "baseline": {str(r): baseline_lands(base, r) for r in rounds}, "arms": {}}
        reasons = []
        for arm in arms:
            by_round = {str(r): compare(cell.runs.get(arm, {}), base, r) for r in rounds}
            entry["arms"][arm] = by_round
            reasons += [why for r in rounds for why in screen_reasons(arm, r, by_round[str(r)])]
        entry["screen"] = cell_screen(gmap, cell, reasons)
        cells.append(entry)
    return {"metric": "top-1 accuracy on each client's own test split (fraction); delta_pp in percentage points",
            "source": str(gmap.folder), "grid": gmap.grid_file, "baseline": baseline, "arms": arms,
            "rounds": rounds, "axes": gmap.axes,
            "screen_rule": f"|Δ mean| >= {SCREEN_DELTA_PP} pp or p < {SCREEN_P} (Wilcoxon; paired t where "
                           "Wilcoxon is undefined) at any round count, for any arm: run seeds 0-9",
            "screen_min_p": screen_min_p(cells, rounds),
            "pooled_unit": "seed: per seed the mean over the group's cells (the seeds they all have), then paired",
            "cells": cells, "pooled": pooled(gmap, baseline, arms, rounds)}


# ----------------------------------------------------------------------------- layout


def layout(summary: dict[str, Any], flat: bool = False) -> Layout:
    """Rows = the first axis, columns = combinations of the others; ``flat`` or no axis: one row per cell."""
    axes, cells = summary["axes"], summary["cells"]
    if flat or not axes or list(axes) == [CELL_AXIS]:
        return Layout("cell", [c["name"] for c in cells], "", [""], {c["name"]: (i, 0) for i, c in enumerate(cells)})
    first, *others = axes
    combos = list(itertools.product(*(axes[a] for a in others)))
    if len(others) == 1:
        cols, col_title = [c[0] for c in combos], others[0]
    else:
        cols, col_title = [", ".join(f"{a}={v}" for a, v in zip(others, c)) for c in combos], ""
    where = {c["name"]: (axes[first].index(c["values"][first]),
                         combos.index(tuple(c["values"][a] for a in others))) for c in cells}
    return Layout(first, list(axes[first]), col_title, cols, where)


def grid_of(summary: dict[str, Any], lay: Layout, value) -> list[list[Any]]:
    """value(cell) placed at each cell's (row, column); None where no cell sits."""
    out: list[list[Any]] = [[None] * len(lay.cols) for _ in lay.rows]
    for c in summary["cells"]:
        i, j = lay.where[c["name"]]
        out[i][j] = value(c)
    return out


# ----------------------------------------------------------------------------- Markdown


def delta_text(entry: dict[str, Any] | None, metric: str) -> str:
    """'-1.12 (p 0.006, n 3)'; 't' marks a paired-t p where Wilcoxon is undefined; '-' without pairs."""
    if not entry or not entry["n"]:
        return "-"
    stat = entry[metric]
    p = screen_p(stat)
    mark = " t" if stat["wilcoxon_p"] is None and p is not None else ""
    return f"{stat['delta_pp']:+.2f} (p {pval(p)}{mark}, n {entry['n']})"


def baseline_text(lands: dict[str, Any] | None) -> str:
    if not lands:
        return "-"
    at = f", median round {statistics.median(lands['best_rounds']):g}" if lands.get("best_rounds") else ""
    return " / ".join(pct(lands[s]["mean"], 1) for s in SUMMARIES) + f" (n {len(lands['seeds'])}{at})"


def table(lay: Layout, cells: list[list[str | None]]) -> list[str]:
    head = f"{lay.row_title} \\ {lay.col_title}" if lay.col_title else lay.row_title
    cols = [c or "Δ" for c in lay.cols] if any(lay.cols) else ["value"]
    lines = [f"| {head} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, row in zip(lay.rows, cells):
        lines.append(f"| {label} | " + " | ".join(v or "-" for v in row) + " |")
    return lines


def map_markdown(summary: dict[str, Any]) -> str:
    base, rounds = summary["baseline"], summary["rounds"]
    lay = layout(summary, flat=len(summary["axes"]) > 2)
    lines = ["# Research map", "",
             f"Folder `{summary['source']}`" + (f", grid file `{summary['grid']}`" if summary["grid"] else "")
             + f"; baseline `{base}`; round counts {', '.join(map(str, rounds))}.", "",
             f"Entries: arm − {base} in percentage points, the mean over the seeds both have of the paired "
             "difference, with the two-sided Wilcoxon signed-rank p (marked t: paired t-test, where Wilcoxon is "
             "undefined) and the number of paired seeds; '-': no common seed yet. grid.json holds every number "
             "(and wins, t-test p).", ""]
    lines += screen_markdown(summary)
    lines += pooled_markdown(summary)
    lines += ["", f"## Where `{base}` lands", "", "mean / worst / tail client accuracy in %, mean over its seeds:"]
    for r in rounds:
        lines += ["", f"{round_label(r).capitalize()}:", ""]
        lines += table(lay, grid_of(summary, lay, lambda c, r=r: baseline_text(c["baseline"][str(r)])))
    for arm in summary["arms"]:
        lines += ["", f"## `{arm}` − `{base}`"]
        for r in rounds:
            for metric in SUMMARIES:
                lines += ["", f"Δ {metric}, {round_label(r)}:", ""]
                lines += table(lay, grid_of(summary, lay,
                                            lambda c, r=r, m=metric, a=arm: delta_text(c["arms"][a][str(r)], m)))
    lines += ["", "Heat maps: " + ", ".join(f"grid_{a}.png" for a in summary["arms"]) + "."]
    return "\n".join(lines) + "\n"


def pooled_markdown(summary: dict[str, Any]) -> list[str]:
    if not summary["pooled"]:
        return []
    base, rounds = summary["baseline"], summary["rounds"]
    lines = ["", "## Pooled over cells", "",
             f"Arm − {base} over the cells named: per seed the mean over the cells (only seeds every cell has), "
             "then paired over seeds, since cells share each seed's split. Δ in percentage points, two-sided "
             "Wilcoxon p, seeds where the arm is higher / seeds. A direction across the map, not a test of any "
             "one cell; no correction for multiple comparisons."]
    for arm in summary["arms"]:
        for metric in SUMMARIES:
            lines += ["", f"`{arm}`, Δ {metric}:", "", "| cells | " + " | ".join(round_label(r) for r in rounds) + " |",
                      "|---|" + "---:|" * len(rounds)]
            for g in summary["pooled"]:
                cells = []
                for r in rounds:
                    st = g["arms"][arm][str(r)][metric]
                    cells.append("-" if st is None else
                                 f"{st['delta_pp']:+.2f} (p {pval(screen_p(st))}, {st['wins']}/{st['n']} seeds)")
                lines.append(f"| {g['cells']} | " + " | ".join(cells) + " |")
    return lines


def screen_markdown(summary: dict[str, Any]) -> list[str]:
    flagged = [c for c in summary["cells"] if c["screen"]["flagged"]]
    lines = ["## Screen", "", f"Rule: {summary['screen_rule']}.", ""] + min_p_lines(summary.get("screen_min_p", {}))
    if not flagged:
        return lines + ["No cell meets the rule yet."]
    for c in flagged:
        s = c["screen"]
        todo = f"needs seeds {format_seeds(s['missing_seeds'])}" if s["missing_seeds"] else "has seeds 0-9"
        lines.append(f"- **{c['name']}** ({todo}): " + "; ".join(s["reasons"]))
    commands = {}
    for c in flagged:  # one command per set of missing seeds (a seed-major map has one)
        if c["screen"]["missing_seeds"]:
            commands.setdefault(format_seeds(c["screen"]["missing_seeds"]), []).append(c["name"])
    for seeds, names in commands.items():
        lines += ["", f"    hasa grid {summary['grid'] or 'GRID.toml'} --out {summary['source']} --seeds {seeds} "
                      f"--cells {','.join(names)}"]
    return lines


def min_p_lines(min_p: dict[str, float]) -> list[str]:
    """Say where the p criterion cannot fire: too few pairs for any Wilcoxon p below SCREEN_P."""
    if not min_p:
        return []
    where = ", ".join(f"{n} pairs: {pval(p)}" for n, p in min_p.items())
    blind = [int(n) for n, p in min_p.items() if p >= SCREEN_P]
    note = f"; with {max(blind)} pairs or fewer only |Δ mean| >= {SCREEN_DELTA_PP} pp can flag a cell" if blind else ""
    return [f"Smallest attainable two-sided Wilcoxon p ({where}){note}.", ""]


# ----------------------------------------------------------------------------- heat maps


def plot_arm(summary: dict[str, Any], arm: str, path: Path) -> Path:
    """Rows = Δ mean/worst/tail, columns = round counts; each panel a heat map over the map's axes."""
    plt = _pyplot()
    from matplotlib.colors import Normalize

    lay, rounds = layout(summary), summary["rounds"]
    pw, ph = max(3.2, 1.25 * len(lay.cols) + 1.6), max(2.4, 0.75 * len(lay.rows) + 1.3)
    fig, axes = plt.subplots(len(SUMMARIES), len(rounds), figsize=(pw * len(rounds) + 1.2, ph * len(SUMMARIES)),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#e6e6e6")
    for i, metric in enumerate(SUMMARIES):
        entries = [grid_of(summary, lay, lambda c, r=r: c["arms"][arm][str(r)]) for r in rounds]
        values = [np.array([[np.nan if not e or not e["n"] else e[metric]["delta_pp"] for e in row] for row in grid],
                           dtype=float) for grid in entries]
        lim = max([float(np.nanmax(np.abs(v))) for v in values if np.isfinite(v).any()] + [0.05])
        norm = Normalize(-lim, lim)  # centred at 0: blue = arm higher
        for j, (r, grid, v) in enumerate(zip(rounds, entries, values)):
            im = _panel(axes[i][j], lay, grid, v, metric, cmap, norm)
            axes[i][j].set_title(f"Δ {metric}, {round_label(r)}", fontsize=9)
        fig.colorbar(im, ax=list(axes[i]), shrink=0.9, label=f"Δ {metric} (pp)")
    fig.suptitle(f"{arm} − {summary['baseline']} (percentage points, paired over common seeds; "
                 f"blue: {arm} higher; grey: no pairs)", fontsize=10)
    return save(fig, path, dpi=110)


def _panel(ax, lay: Layout, grid: list[list[Any]], values: np.ndarray, metric: str, cmap, norm):
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for (i, j), e in np.ndenumerate(np.array(grid, dtype=object)):
        if not e or not e["n"]:
            ax.text(j, i, "-" if e is not None else "", ha="center", va="center", fontsize=8, color="#777777")
            continue
        v = values[i, j]
        color = "white" if abs(v) > 0.6 * norm.vmax else "black"
        ax.text(j, i, f"{v:+.2f}\np {pval(screen_p(e[metric]))}\nn {e['n']}", ha="center", va="center",
                fontsize=7.5, color=color)
    ax.set_xticks(range(len(lay.cols)), [c.replace(", ", "\n") for c in lay.cols], fontsize=8)
    ax.set_yticks(range(len(lay.rows)), lay.rows, fontsize=8)
    ax.set_xlabel(lay.col_title, fontsize=8)
    ax.set_ylabel(lay.row_title, fontsize=8)
    return im


# ----------------------------------------------------------------------------- writing


def write_grid_report(folder: Path, out: Path | None = None, baseline: str = "uniform",
                      rounds: list[int | str] | None = None) -> dict[str, Path]:
    """grid.json, grid.md and grid_<arm>.png into ``out`` (default: the grid folder)."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    summary = summarize_map(load_map(folder), baseline, rounds)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"grid.json": write_json_atomic(out / "grid.json", summary),
             "grid.md": write_text_atomic(out / "grid.md", map_markdown(summary))}
    for arm in summary["arms"]:
        paths[f"grid_{arm}.png"] = plot_arm(summary, arm, out / f"grid_{arm}.png")
    return paths


def cmd_report_grid(args: argparse.Namespace) -> int:
    """`hasa report --grid DIR` (called by cli.cmd_report)."""
    if not args.grid or args.folder:
        raise ReportError("pass either a sweep folder (`hasa report DIR`) or a grid folder (`hasa report --grid DIR`)")
    if args.calibration or args.compare:
        raise ReportError("--calibration and --compare go with a sweep folder, not with --grid")
    paths = write_grid_report(Path(args.grid), out=Path(args.out) if args.out else None, baseline=args.baseline,
                              rounds=parse_rounds(args.rounds))
    summary = json.loads(paths["grid.json"].read_text())
    print("\n".join(screen_markdown(summary)) + "\n")  # the tables are long: they stay in grid.md
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
