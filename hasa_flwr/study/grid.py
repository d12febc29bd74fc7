"""Grids of presets: the research map of when an allocation rule pays (`hasa grid`).

A grid file is written before anything runs and names everything the map will hold:

    preset = "conf/medium.toml"        # relative to the grid file's folder or the app
    seeds = "0-2"                      # the screen; `--seeds` extends a cell to more seeds
    [fixed]                            # run-config values every cell shares
    num-server-rounds = 40
    [axes]                             # the product of these is the set of cells
    lr = [0.001, 0.003, 0.01]
    model = [{name = "64-128", embed-dim = 64, hidden-dim = 128}, ...]
    [arms]                             # what runs in every cell (a folder each)
    uniform = {strategy = "uniform"}
    hasa = {strategy = "hasa", aggregation = "full"}

Layout: ``<out>/<cell>/<arm>/seed-<k>/results.json`` (each cell folder is an ordinary sweep
folder, so `hasa report <out>/<cell>` works on it). Runs go seed-major across the whole grid, so
a map stopped at any point has the same seeds in every cell; re-running resumes. Every cell x arm
config (and its data and budget) is checked before the first run.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hasa_flwr.study.launch import read_toml
from hasa_flwr.study.sweep import (Job, LABEL, Runner, SweepError, SweepOutcome, base_config, default_runner, now_utc,
                                   parse_seeds, plan_jobs, run_jobs)


@dataclass(frozen=True)
class Cell:
    name: str                      # folder name, e.g. "lr-0.001__model-64-128"
    values: dict[str, Any]         # axis -> the label of its value (what the map's tables show)
    sets: dict[str, Any]           # the run-config values this cell sets


@dataclass(frozen=True)
class Grid:
    preset: Path | None
    seeds: list[int]
    fixed: dict[str, Any]
    cells: list[Cell]
    arms: dict[str, dict[str, Any]]
    source: Path


def _axis_values(axis: str, values: Any) -> list[tuple[str, dict[str, Any]]]:
    """(label, run-config sets) per value: a scalar sets ``axis``; a table sets its keys."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"grid axis '{axis}' must be a non-empty list of values")
    out = []
    for v in values:
        if isinstance(v, dict):
            sets = {k: x for k, x in v.items() if k != "name"}
            label = str(v.get("name") or "-".join(str(x) for x in sets.values()))
        else:
            sets, label = {axis: v}, f"{v:g}" if isinstance(v, float) else str(v)
        if not LABEL.fullmatch(label):
            raise ValueError(f"grid axis '{axis}': value label '{label}' must be letters, digits, '.', '_' or '-' "
                             "(give a table value a name = \"...\")")
        out.append((label, sets))
    return out


def read_grid(path: str | Path) -> Grid:
    """Parse and check a grid file; a ValueError names what is wrong."""
    path = Path(path)
    raw = read_toml(path, "grid file")
    unknown = set(raw) - {"preset", "seeds", "fixed", "axes", "arms"}
    if unknown:
        raise ValueError(f"grid file {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         "use preset, seeds, [fixed], [axes], [arms]")
    axes, arms = raw.get("axes") or {}, raw.get("arms") or {}
    if not arms:
        raise ValueError(f"grid file {path} has no [arms]: name what runs in each cell, e.g. uniform = "
                         "{strategy = \"uniform\"}")
    for arm in arms:
        if not LABEL.fullmatch(arm):
            raise ValueError(f"grid arm '{arm}' is not a plain folder name")
    per_axis = [[(axis, label, sets) for label, sets in _axis_values(axis, vals)] for axis, vals in axes.items()]
    _check_axes_apart(path, per_axis)
    cells = []
    for combo in itertools.product(*per_axis):
        name = "__".join(f"{axis}-{label}" for axis, label, _ in combo) or "all"
        sets = {k: v for _, _, s in combo for k, v in s.items()}
        cells.append(Cell(name, {axis: label for axis, label, _ in combo}, sets))
    _check_names_unique(path, cells)
    preset = raw.get("preset")
    return Grid(preset=Path(preset) if preset else None, seeds=parse_seeds(raw.get("seeds", "0-2")),
                fixed=dict(raw.get("fixed") or {}), cells=cells, arms={a: dict(v) for a, v in arms.items()},
                source=path.absolute())


def _check_axes_apart(path: Path, per_axis: list[list[tuple[str, str, dict[str, Any]]]]) -> None:
    """Two axes setting one key: the later would silently override the earlier in some cells."""
    owner: dict[str, str] = {}
    for values in per_axis:
        axis = values[0][0]
        for key in sorted({k for _, _, sets in values for k in sets}):
            if key in owner:
                raise ValueError(f"grid file {path}: axes '{owner[key]}' and '{axis}' both set {key}: "
                                 "set each run-config key in one axis only")
            owner[key] = axis


def _check_names_unique(path: Path, cells: list[Cell]) -> None:
    """One folder per cell: two cells with one name would run one's settings in the other's folder."""
    seen: set[str] = set()
    for cell in cells:
        if cell.name in seen:
            raise ValueError(f"grid file {path}: two cells are named '{cell.name}': give the table values of an "
                             "axis distinct name = \"...\" labels")
        seen.add(cell.name)


def cell_jobs(grid: Grid, seeds: list[int]) -> list[Job]:
    """A cell's runs: every arm for each seed, seed-major."""
    return [Job(arm, seed, sets) for seed in seeds for arm, sets in grid.arms.items()]


@contextlib.contextmanager
def named(cell: Cell) -> Iterator[None]:
    """An error raised inside names the cell it is about (a map has many)."""
    try:
        yield
    except SweepError as err:
        raise SweepError(f"grid cell {cell.name}: {err}") from None
    except ValueError as err:
        raise ValueError(f"grid cell {cell.name}: {err}") from None


def resolve_preset(grid: Grid, app: Path) -> str | None:
    if grid.preset is None:
        return None
    for base in (grid.source.parent, app):
        if (base / grid.preset).is_file():
            return str(base / grid.preset)
    raise ValueError(f"grid preset {grid.preset} not found next to {grid.source} or in {app}")


def run_grid(app: Path, grid: Grid, out: Path, *, seeds: list[int] | None = None, cells: list[str] | None = None,
             runner: Runner | None = None, federation_config: str = "", keep_going: bool = False,
             progress: bool = True, command: str | None = None, run_timeout: float | None = None,
             jobs: int = 1) -> SweepOutcome:
    """Every (seed, cell, arm) not finished yet, seed-major; every config is checked before any run."""
    app = Path(app).absolute()
    preset = resolve_preset(grid, app)
    chosen = [c for c in grid.cells if cells is None or c.name in cells]
    if cells is not None and len(chosen) != len(set(cells)):
        known = ", ".join(c.name for c in grid.cells)
        raise ValueError(f"unknown cell(s) in {', '.join(cells)}: the grid's cells are {known}")
    bases = {}
    for cell in chosen:  # every cell x arm x seed as run_jobs checks it, before the first run
        with named(cell):
            bases[cell.name] = base_config(app, preset, {**grid.fixed, **cell.sets})
            plan_jobs(out / cell.name, bases[cell.name], cell_jobs(grid, seeds or grid.seeds),
                      federation_config=federation_config, parallel=jobs)
    runner = runner or default_runner(app, None, run_timeout)
    total, started = SweepOutcome(), now_utc()  # one invocation in each cell's sweep.json, however many seeds
    for seed in seeds or grid.seeds:
        for cell in chosen:
            meta = {"kind": "grid", "grid": str(grid.source), "cell": cell.values, "preset": preset,
                    "overrides": {**grid.fixed, **cell.sets}, "app": str(app),
                    "strategies": list(grid.arms), "seeds": [seed]}
            done = run_jobs(out / cell.name, bases[cell.name], cell_jobs(grid, [seed]), runner,
                            federation_config=federation_config, keep_going=keep_going, progress=progress, meta=meta,
                            command=command, parallel=jobs, started=started)
            total.done += done.done
            total.skipped += done.skipped
            total.failed += done.failed
            total.seconds.update({f"{cell.name}/{k}": v for k, v in done.seconds.items()})
    return total

