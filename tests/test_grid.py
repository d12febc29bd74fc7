"""`hasa grid`: parsing a grid file, cell names, seed-major order and resume (no Flower)."""

import json

import pytest

from hasa_flwr.study.grid import read_grid, run_grid
from test_sweep import ROOT, FakeRunner

GRID = """
seeds = "0-1"
[fixed]
num-server-rounds = 2
num-clients = 3
embed-dim = 4
hidden-dim = 8
[axes]
lr = [0.001, 0.01]
model = [{ name = "small", embed-dim = 4, hidden-dim = 8 }, { embed-dim = 8, hidden-dim = 16 }]
[arms]
uniform = { strategy = "uniform" }
hasa-selective = { strategy = "hasa", aggregation = "selective" }
"""


def write(tmp_path, text=GRID):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def test_cells_are_the_product_of_the_axes(tmp_path):
    grid = read_grid(write(tmp_path))
    assert [c.name for c in grid.cells] == ["lr-0.001__model-small", "lr-0.001__model-8-16",
                                            "lr-0.01__model-small", "lr-0.01__model-8-16"]
    assert grid.cells[1].sets == {"lr": 0.001, "embed-dim": 8, "hidden-dim": 16}
    assert grid.seeds == [0, 1]


def test_runs_seed_major_and_resumes(tmp_path):
    grid = read_grid(write(tmp_path))
    runner = FakeRunner()
    out = tmp_path / "map"
    outcome = run_grid(ROOT, grid, out, runner=runner, progress=False, command="hasa grid (test)")
    assert len(outcome.done) == 2 * 4 * 2
    assert [seed for _, seed, _ in runner.calls] == [0] * 8 + [1] * 8  # every cell has seed 0 before any seed 1
    res = json.loads((out / "lr-0.01__model-8-16" / "hasa-selective" / "seed-1" / "results.json").read_text())
    assert (res["config"]["aggregation"], res["config"]["lr"], res["config"]["hidden_dim"]) == ("selective", 0.01, 16)
    assert json.loads((out / "lr-0.01__model-8-16" / "sweep.json").read_text())["invocations"][0]["commit"]
    again = run_grid(ROOT, grid, out, runner=runner, progress=False, command="hasa grid (test)")
    assert (len(again.done), len(again.skipped)) == (0, 16)
    # a resume that finds everything done records no invocation (sweep.json stays the record of runs)
    assert len(json.loads((out / "lr-0.01__model-8-16" / "sweep.json").read_text())["invocations"]) == 1


@pytest.mark.parametrize("text, match", [
    ("[axes]\nlr = [0.1]\n", "no \\[arms\\]"),
    ("[axes]\nlr = []\n[arms]\nu = {strategy='uniform'}\n", "non-empty list"),
    ("bogus = 1\n[arms]\nu = {strategy='uniform'}\n", "unknown key"),
    ("[axes]\nm = [{name='a b', lr=0.1}]\n[arms]\nu = {strategy='uniform'}\n", "folder|letters"),
    ("[axes]\nmodel = [{embed-dim=64}, {hidden-dim=64}]\n[arms]\nu = {strategy='uniform'}\n",
     "two cells are named 'model-64'.*name ="),
    ("[axes]\nlr = [0.1]\nopt = [{lr=0.01, optimizer='sgd'}]\n[arms]\nu = {strategy='uniform'}\n",
     "axes 'lr' and 'opt' both set lr"),
])
def test_bad_grid_files_name_the_problem(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_grid(write(tmp_path, text))


def test_unknown_cell_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown cell"):
        run_grid(ROOT, read_grid(write(tmp_path)), tmp_path / "map", cells=["nope"], runner=FakeRunner(),
                 progress=False)


def test_a_bad_late_cell_fails_before_the_first_run(tmp_path):
    """Cross-field checks (here the budget against the width caps, which needs the data) run for
    every cell x arm up front: the last cell's error comes before any run, with the cell's name."""
    text = GRID.replace("lr = [0.001, 0.01]", "budget = [0.5, 0.95]").replace(
        'model = [{ name = "small", embed-dim = 4, hidden-dim = 8 }, { embed-dim = 8, hidden-dim = 16 }]', "")
    grid = read_grid(write(tmp_path, text))
    assert [c.name for c in grid.cells] == ["budget-0.5", "budget-0.95"]
    runner = FakeRunner()
    with pytest.raises(ValueError, match="^grid cell budget-0.95: .*budget"):
        run_grid(ROOT, grid, tmp_path / "map", runner=runner, progress=False)
    assert runner.calls == [] and not (tmp_path / "map").exists()
