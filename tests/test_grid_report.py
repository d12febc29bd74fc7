"""`hasa report --grid`: the research map's paired deltas, screen and outputs, on a fake grid folder (no Flower)."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from hasa_flwr.cli import main
from hasa_flwr.study.grid_report import (BEST, GridMap, MapCell, ReportError, at_round, best_round, default_rounds,
                                         format_seeds, layout, load_map, parse_rounds, screen_reasons, summarize_map,
                                         write_grid_report)

ROUNDS = 4
ARMS = ["uniform", "hasa", "hasa-selective"]
GRID = """
seeds = "0-2"
[fixed]
num-server-rounds = 4
[axes]
lr = [0.001, 0.01, 0.1]
model = [{ name = "small", embed-dim = 4, hidden-dim = 8 }, { name = "big", embed-dim = 8, hidden-dim = 16 }]
[arms]
uniform = { strategy = "uniform" }
hasa = { strategy = "hasa", aggregation = "full" }
hasa-selective = { strategy = "hasa", aggregation = "selective" }
"""

A, B, C, D = "lr-0.001__model-small", "lr-0.001__model-big", "lr-0.01__model-small", "lr-0.01__model-big"
VALUES = {A: {"lr": "0.001", "model": "small"}, B: {"lr": "0.001", "model": "big"},
          C: {"lr": "0.01", "model": "small"}, D: {"lr": "0.01", "model": "big"}}

# cell A, final round: uniform has seeds 0-3 (seed 3 unpaired, an outlier), hasa seeds 0-2, hasa-selective none
A_UNIFORM = {"mean": [0.50, 0.52, 0.54, 0.90], "worst": [0.30, 0.31, 0.32, 0.81], "tail": [0.40, 0.41, 0.42, 0.81]}
A_HASA = {"mean": [0.52, 0.53, 0.535], "worst": [0.27, 0.28, 0.29], "tail": [0.40, 0.41, 0.42]}
A_STEP = {"uniform": 0.01, "hasa": 0.025}  # per-round climb: hasa - uniform differs by round
C_DIFF = [0.001, 0.002, 0.0015, 0.0025, 0.0012]  # small (0.16 pp) but 5/5 positive: Wilcoxon p 0.0625


def at(final, step, r):
    return final - step * (ROUNDS - r)


def write_run(root, cell, arm, seed, final, step=0.01, history_rounds=range(1, ROUNDS + 1)):
    """results.json whose round r accuracy is ``final - step * (ROUNDS - r)``; summary = ``final``."""
    history = [{"round": r, "train_loss": 1.0, **{s: at(v, step, r) for s, v in final.items()}, "std": 0.1,
                "clients": 3, "accuracies": {}, "seconds": 0.1} for r in history_rounds]
    res = {"config": {"num_rounds": ROUNDS, "seed": seed}, "seed": seed, "summary": {**final, "std": 0.1},
           "history": history, "clients": []}
    path = root / cell / arm / f"seed-{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))


def write_manifest(root, cell, grid_file):
    (root / cell).mkdir(parents=True, exist_ok=True)
    (root / cell / "sweep.json").write_text(json.dumps({"kind": "grid", "grid": str(grid_file),
                                                       "cell": VALUES[cell], "strategies": ARMS}))


def pick(d, k):
    return {s: v[k] for s, v in d.items()}


def make_map(tmp_path, manifests=True):
    """Four cells of a six-cell grid (lr 0.1 never started); see the constants above."""
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(GRID)
    root = tmp_path / "map"
    for k in range(4):  # uniform seed 0's history lacks the last round: its summary stands in
        write_run(root, A, "uniform", k, pick(A_UNIFORM, k), A_STEP["uniform"],
                  history_rounds=range(1, ROUNDS) if k == 0 else range(1, ROUNDS + 1))
    for k in range(3):
        write_run(root, A, "hasa", k, pick(A_HASA, k), A_STEP["hasa"])
        base = {"mean": 0.6 + 0.01 * k, "worst": 0.4, "tail": 0.5}
        write_run(root, B, "uniform", k, base)
        write_run(root, B, "hasa", k, {**base, "mean": base["mean"] + [0.001, -0.001, 0.0005][k]})
        write_run(root, B, "hasa-selective", k, base)
    for k in range(5):
        base = {"mean": 0.7 - 0.01 * k, "worst": 0.5, "tail": 0.6}
        write_run(root, C, "uniform", k, base)
        write_run(root, C, "hasa", k, {**base, "mean": base["mean"] + C_DIFF[k]})
        write_run(root, C, "hasa-selective", k, base)
    write_run(root, D, "uniform", 0, {"mean": 0.5, "worst": 0.3, "tail": 0.4})
    write_run(root, D, "hasa", 1, {"mean": 0.6, "worst": 0.3, "tail": 0.4})
    if manifests:
        for cell in VALUES:
            write_manifest(root, cell, grid_file)
    return root


def cells_by_name(summary):
    return {c["name"]: c for c in summary["cells"]}


def test_paired_deltas_use_only_the_common_seeds(tmp_path):
    summary = summarize_map(load_map(make_map(tmp_path)), rounds=[2, 4])
    a = cells_by_name(summary)[A]["arms"]["hasa"]
    final = a["4"]
    assert final["seeds"] == [0, 1, 2] and final["n"] == 3  # seed 0 of uniform: from its summary
    d = np.array(A_HASA["mean"]) - np.array(A_UNIFORM["mean"][:3])
    assert final["mean"]["delta_pp"] == pytest.approx(100 * d.mean()) == pytest.approx(5 / 6)
    assert final["mean"]["mean_diff"] == pytest.approx(d.mean())
    assert final["mean"]["wins"] == 2
    assert final["mean"]["wilcoxon_p"] == pytest.approx(sps.wilcoxon(A_HASA["mean"], A_UNIFORM["mean"][:3]).pvalue)
    assert final["mean"]["ttest_p"] == pytest.approx(sps.ttest_rel(A_HASA["mean"], A_UNIFORM["mean"][:3]).pvalue)
    assert final["baseline"]["mean"] == pytest.approx(0.52)  # the unpaired seed 3 (0.90) is left out
    assert final["worst"]["delta_pp"] == pytest.approx(-3.0) and final["worst"]["wins"] == 0
    assert final["worst"]["wilcoxon_p"] == pytest.approx(0.25)  # 3 of 3 lower: the smallest p of 3 pairs
    assert final["tail"]["delta_pp"] == 0.0 and final["tail"]["wilcoxon_p"] == 1.0
    # round 2 from the history: hasa climbs 2.5 points a round, uniform 1, so hasa - uniform is 3 points lower
    early = a["2"]
    ua = [at(v, A_STEP["uniform"], 2) for v in A_UNIFORM["mean"][:3]]
    ha = [at(v, A_STEP["hasa"], 2) for v in A_HASA["mean"]]
    assert early["mean"]["delta_pp"] == pytest.approx(5 / 6 - 3)
    assert early["mean"]["wins"] == 0 and early["mean"]["n"] == 3
    assert early["mean"]["wilcoxon_p"] == pytest.approx(sps.wilcoxon(ha, ua).pvalue)
    assert early["baseline"]["mean"] == pytest.approx(0.50)


def test_pooled_groups_are_tested_over_seeds_not_cell_seed_pairs(tmp_path):
    """Cells share each seed's split: per seed the mean over the group's cells, then paired over the
    seeds that every cell with pairs has (C's seeds 3-4 would weigh C alone)."""
    summary = summarize_map(load_map(make_map(tmp_path)), rounds=[4])
    groups = {g["cells"]: g["arms"]["hasa"]["4"] for g in summary["pooled"]}
    assert list(groups) == ["all cells", "lr = 0.001", "lr = 0.01", "lr = 0.1", "model = small", "model = big"]
    # all cells: A, B and C on their common seeds 0-2 (D's uniform and hasa share no seed: left out)
    hasa = [np.mean([A_HASA["mean"][k], 0.6 + 0.01 * k + [0.001, -0.001, 0.0005][k], 0.7 - 0.01 * k + C_DIFF[k]])
            for k in range(3)]
    uniform = [np.mean([A_UNIFORM["mean"][k], 0.6 + 0.01 * k, 0.7 - 0.01 * k]) for k in range(3)]
    every = groups["all cells"]
    assert every["n"] == 3 and every["seeds"] == [0, 1, 2] and every["n_cells"] == 3 and every["mean"]["n"] == 3
    assert every["mean"]["delta_pp"] == pytest.approx(100 * np.mean(np.array(hasa) - np.array(uniform)))
    assert every["mean"]["wilcoxon_p"] == pytest.approx(sps.wilcoxon(hasa, uniform).pvalue)
    assert groups["lr = 0.01"]["seeds"] == [0, 1, 2, 3, 4] and groups["lr = 0.01"]["n_cells"] == 1
    assert groups["lr = 0.001"]["n"] == 3 and groups["model = small"]["n_cells"] == 2
    assert groups["lr = 0.1"]["n"] == 0 and groups["lr = 0.1"]["mean"] is None  # never started: empty
    assert summary["pooled_unit"].startswith("seed")
    text = write_grid_report(tmp_path / "map", rounds=[4])["grid.md"].read_text()
    assert "## Pooled over cells" in text and "| lr = 0.1 | - |" in text and "/3 seeds)" in text


def test_the_screen_says_where_its_p_criterion_cannot_fire(tmp_path):
    """The smallest two-sided Wilcoxon p of n pairs is 2 / 2^n: at 3 seeds 0.25, never below 0.2."""
    from hasa_flwr.study.grid_report import screen_markdown
    from hasa_flwr.study.stats import min_wilcoxon_p

    assert [min_wilcoxon_p(n) for n in (0, 1, 3, 4)] == [1.0, 1.0, 0.25, 0.125]
    assert paired_p([1e-3, 2e-3, 3e-3]) == pytest.approx(min_wilcoxon_p(3))
    assert paired_p([1e-3 * k for k in range(1, 11)]) == pytest.approx(min_wilcoxon_p(10))
    summary = summarize_map(load_map(make_map(tmp_path)), rounds=[2, 4])
    assert summary["screen_min_p"] == {"3": 0.25, "5": 0.0625}
    text = "\n".join(screen_markdown(summary))
    assert "(3 pairs: 0.250, 5 pairs: 0.062); with 3 pairs or fewer only |Δ mean| >= 0.3 pp can flag a cell" in text


def paired_p(diffs):
    from hasa_flwr.study.stats import paired

    return paired(diffs, [0.0] * len(diffs))["wilcoxon_p"]


def test_baseline_lands_over_all_its_seeds(tmp_path):
    summary = summarize_map(load_map(make_map(tmp_path)), rounds=[2, 4])
    lands = cells_by_name(summary)[A]["baseline"]["4"]
    assert lands["seeds"] == [0, 1, 2, 3]
    assert lands["mean"]["mean"] == pytest.approx(np.mean(A_UNIFORM["mean"]))
    assert lands["worst"]["n"] == 4


def test_partial_cells_and_arms_are_empty_not_errors(tmp_path):
    summary = summarize_map(load_map(make_map(tmp_path)), rounds=[2, 4])
    cells = cells_by_name(summary)
    assert list(cells) == [A, B, C, D, "lr-0.1__model-small", "lr-0.1__model-big"]  # the grid file's order
    assert summary["axes"] == {"lr": ["0.001", "0.01", "0.1"], "model": ["small", "big"]}
    assert summary["arms"] == ["hasa", "hasa-selective"] and summary["rounds"] == [2, 4]
    for entry in (cells[A]["arms"]["hasa-selective"]["4"], cells[D]["arms"]["hasa"]["4"],
                  cells["lr-0.1__model-big"]["arms"]["hasa"]["2"]):
        assert entry["n"] == 0 and entry["seeds"] == [] and entry["baseline"] is None
        assert entry["mean"]["delta_pp"] is None and entry["mean"]["wilcoxon_p"] is None
    assert cells[D]["baseline"]["4"]["seeds"] == [0]
    assert cells["lr-0.1__model-small"]["baseline"]["4"] is None
    assert not cells[D]["screen"]["flagged"] and not cells["lr-0.1__model-small"]["screen"]["flagged"]


def test_screen_flags_large_deltas_and_small_p(tmp_path):
    summary = summarize_map(load_map(make_map(tmp_path)), rounds=[2, 4])
    cells = cells_by_name(summary)
    a, b, c = cells[A]["screen"], cells[B]["screen"], cells[C]["screen"]
    assert a["flagged"] and any(r.startswith("hasa at round 4: Δ mean +0.83 pp") for r in a["reasons"])
    assert a["missing_seeds"] == list(range(10))  # hasa-selective has no seed yet
    assert not b["flagged"] and b["command"] is None  # |Δ| 0.02 pp, p >= 0.25
    assert c["flagged"] and all("p 0.062" in r for r in c["reasons"]) and len(c["reasons"]) == 2
    assert abs(cells[C]["arms"]["hasa"]["4"]["mean"]["delta_pp"]) < 0.3
    assert c["missing_seeds"] == [5, 6, 7, 8, 9]
    assert c["command"].endswith(f"--seeds 5-9 --cells {C}") and str(tmp_path / "grid.toml") in c["command"]


def test_screen_uses_t_only_where_wilcoxon_is_undefined():
    def entry(delta, w, t, n=3):
        return {"n": n, "mean": {"delta_pp": delta, "wilcoxon_p": w, "ttest_p": t}}

    assert screen_reasons("hasa", 8, entry(0.1, None, 0.1))
    assert not screen_reasons("hasa", 8, entry(0.1, None, 0.5))
    assert not screen_reasons("hasa", 8, entry(0.1, 0.5, 0.01))  # Wilcoxon is defined: it decides
    assert screen_reasons("hasa", 8, entry(-0.3, 0.9, 0.9))
    assert not screen_reasons("hasa", 8, entry(0.29, 0.9, 0.9))
    assert not screen_reasons("hasa", 8, entry(None, None, None, n=0))


def test_writes_json_markdown_and_heat_maps_through_the_cli(tmp_path, capsys):
    root = make_map(tmp_path)
    out = tmp_path / "report"
    assert main(["report", "--grid", str(root), "--rounds", "2,4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Screen" in printed and f"--cells {A},{C}" not in printed  # A needs 0-9, C 5-9: two commands
    assert f"--seeds 5-9 --cells {C}" in printed
    assert json.loads((out / "grid.json").read_text())["baseline"] == "uniform"
    md = (out / "grid.md").read_text()
    assert "| lr \\ model | small | big |" in md
    assert "| 0.001 | +0.83 (p 0.500, n 3) | +0.02 (p 1.000, n 3) |" in md  # Δ mean, round 4, hasa
    assert "| 0.1 | - | - |" in md
    assert "| 0.001 | 61.5 / 43.5 / 51.0 (n 4) | 61.0 / 40.0 / 50.0 (n 3) |" in md  # where uniform lands, round 4
    for arm in ("hasa", "hasa-selective"):
        png = out / f"grid_{arm}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(out.glob(".*")) and not (root / "grid.json").exists()  # no temp file left behind


def test_without_the_grid_file_the_axes_come_from_the_cells(tmp_path):
    root = make_map(tmp_path)
    (tmp_path / "grid.toml").unlink()
    gmap = load_map(root)
    assert [c.name for c in gmap.cells] == [B, A, D, C]  # labels ordered naturally: big before small
    assert gmap.axes == {"lr": ["0.001", "0.01"], "model": ["big", "small"]}
    assert gmap.arms == ARMS


def test_cells_without_manifests_get_one_row_each(tmp_path):
    root = make_map(tmp_path, manifests=False)
    paths = write_grid_report(root, rounds=[4])
    summary = json.loads(paths["grid.json"].read_text())
    assert summary["axes"] == {"cell": [B, A, D, C]}  # by name
    assert summary["arms"] == ["hasa", "hasa-selective"]
    assert f"| {A} | +0.83 (p 0.500, n 3) |" in paths["grid.md"].read_text()
    assert paths["grid_hasa.png"].is_file()


def test_missing_cells_and_baselines_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no grid cell"):
        load_map(empty)
    sweep = tmp_path / "sweep"
    write_run(sweep.parent, "sweep", "uniform", 0, {"mean": 0.5, "worst": 0.3, "tail": 0.4})
    (sweep / "sweep.json").write_text("{}")
    with pytest.raises(ReportError, match="sweep folder.*hasa report"):
        load_map(sweep)
    with pytest.raises(ReportError, match="not a folder"):
        load_map(tmp_path / "nowhere")
    root = make_map(tmp_path)
    with pytest.raises(ReportError, match="no 'fedavg' arm.*uniform, hasa, hasa-selective.*--baseline"):
        summarize_map(load_map(root), baseline="fedavg")
    for argv in (["report", "--grid", str(empty)], ["report", "--grid", str(root), "--baseline", "fedavg"],
                 ["report", "--grid", str(root), "--rounds", "x"], ["report"],
                 ["report", str(root), "--grid", str(root)]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("hasa: error: ") and err.count("\n") == 1
    assert not (root / "grid.json").exists()


def test_another_baseline_pairs_against_it(tmp_path):
    summary = summarize_map(load_map(make_map(tmp_path)), baseline="hasa", rounds=[4])
    assert summary["arms"] == ["uniform", "hasa-selective"]
    entry = cells_by_name(summary)[A]["arms"]["uniform"]["4"]
    assert entry["mean"]["delta_pp"] == pytest.approx(-5 / 6) and entry["mean"]["wins"] == 1


def test_default_rounds_and_small_parsers():
    def one_run(num_rounds):
        return GridMap(None, None, {}, ["uniform"],
                       [MapCell("c", {}, {"uniform": {0: {"config": {"num_rounds": num_rounds}}}})])

    assert default_rounds(one_run(40)) == [8, 20, 40]
    assert default_rounds(one_run(30)) == [8, 20, 30]
    assert default_rounds(one_run(4)) == [4]
    assert format_seeds([3, 4, 5, 7, 9, 10]) == "3-5,7,9-10"
    assert parse_rounds("40, 8,20") == [8, 20, 40] and parse_rounds(None) is None
    assert parse_rounds("best,40,8") == [8, 40, BEST] and parse_rounds("best") == [BEST]
    for bad in ("0,8", "best,x", "8.5", ","):
        with pytest.raises(ReportError, match="--rounds"):
            parse_rounds(bad)


def test_layout_rows_are_the_first_axis_columns_the_rest():
    axes = {"lr": ["0.1", "0.2"], "model": ["s", "b"], "bs": ["8", "16", "32"]}
    cells = [{"name": f"{lr}-{m}-{bs}", "values": {"lr": lr, "model": m, "bs": bs}}
             for lr in axes["lr"] for m in axes["model"] for bs in axes["bs"]]
    lay = layout({"axes": axes, "cells": cells})
    assert lay.rows == ["0.1", "0.2"] and len(lay.cols) == 6 and lay.cols[1] == "model=s, bs=16"
    assert lay.where["0.2-b-32"] == (1, 5)
    flat = layout({"axes": axes, "cells": cells}, flat=True)  # grid.md with more than two axes: a row per cell
    assert flat.rows == [c["name"] for c in cells] and flat.cols == [""] and flat.where["0.2-b-32"] == (11, 0)


def test_a_grid_file_in_a_repository_is_shown_by_its_path_there(tmp_path):
    """A map run from a worktree records an absolute grid path; the committed report names the file
    as every clone has it."""
    from hasa_flwr.study.grid_report import in_repository

    (tmp_path / "wt" / ".git").parent.mkdir()
    (tmp_path / "wt" / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git is a file
    assert in_repository(str(tmp_path / "wt" / "benchmarks" / "map" / "g.toml")) == "benchmarks/map/g.toml"
    assert in_repository(str(tmp_path / "loose" / "g.toml")) == str(tmp_path / "loose" / "g.toml")
    assert in_repository(None) is None
    # the worktree is gone: the file as the repository holding the map has it
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "benchmarks" / "map" / "out").mkdir(parents=True)
    (tmp_path / "repo" / "benchmarks" / "map" / "g.toml").write_text("")
    gone = str(tmp_path / "gone-wt" / "benchmarks" / "map" / "g.toml")
    assert in_repository(gone, tmp_path / "repo" / "benchmarks" / "map" / "out") == "benchmarks/map/g.toml"
    assert in_repository(gone, tmp_path / "loose") == gone


def test_best_round_tells_a_late_gain_from_a_baseline_that_over_fits(tmp_path):
    """uniform peaks at round 2 and falls, hasa climbs to a lower peak at round 4: hasa is ahead at
    the last round but behind when each run is read at its own best round."""
    root = tmp_path / "map"
    curves = {"uniform": [0.50, 0.60, 0.55, 0.52], "hasa": [0.40, 0.50, 0.56, 0.58]}
    for k in range(3):
        for arm, curve in curves.items():
            history = [{"round": r, "mean": m + 0.01 * k, "worst": m / 2, "tail": m - 0.1} for r, m in
                       enumerate(curve, start=1)]
            history.append({"round": 5, "mean": None, "worst": None, "tail": None})  # no evaluation: skipped
            path = root / "cell" / arm / f"seed-{k}" / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"config": {"num_rounds": 4}, "history": history,
                                        "summary": {s: history[3][s] for s in ("mean", "worst", "tail")}}))
    one = json.loads((root / "cell" / "uniform" / "seed-0" / "results.json").read_text())
    assert best_round(one) == 2 and at_round(one, BEST) == {"mean": 0.60, "worst": 0.30, "tail": 0.5}
    assert best_round({"history": []}) is None and at_round({"history": []}, BEST) is None
    tie = {"history": [{"round": r, "mean": 0.5, "worst": 0.1 * r, "tail": 0.1} for r in (1, 2)]}
    assert best_round(tie) == 1  # the earliest of ties: what early stopping keeps

    summary = summarize_map(load_map(root), rounds=[4, BEST])
    hasa = summary["cells"][0]["arms"]["hasa"]
    assert hasa["4"]["mean"]["delta_pp"] == pytest.approx(6.0)
    assert hasa[BEST]["mean"]["delta_pp"] == pytest.approx(-2.0)
    assert hasa[BEST]["worst"]["delta_pp"] == pytest.approx(-1.0)
    assert hasa[BEST]["best_rounds"] == {"arm": [4, 4, 4], "baseline": [2, 2, 2]}
    assert summary["cells"][0]["baseline"][BEST]["mean"]["mean"] == pytest.approx(0.61)
    assert screen_reasons("hasa", BEST, hasa[BEST]) == []  # the screen is written on round counts only
    assert summary["pooled"] == []  # one cell: nothing to pool

    out = tmp_path / "report"
    assert main(["report", "--grid", str(root), "--rounds", "4,best", "--out", str(out)]) == 0
    md = (out / "grid.md").read_text()
    assert "Δ mean, best round:" in md and "Best round:" in md
    assert "| cell | 61.0 / 30.0 / 50.0 (n 3, median round 2) |" in md  # where uniform lands at its best
    assert (out / "grid_hasa.png").stat().st_size > 10_000
