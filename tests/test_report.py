"""`hasa report` and the across-seed statistics, on synthetic fake results (no Flower)."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from hasa_flwr.method.metrics import summarize
from hasa_flwr.study.report import ReportError, load_runs, summarize_sweep, write_report
from hasa_flwr.study.stats import describe, paired, spearman

NAMES = ["A", "B", "C", "D", "E", "F", "G"]


def fake_results(strategy, seed, accs, widths=None, rounds=3):
    widths = widths or [0.5] * len(accs)
    clients = [{"partition_id": i, "name": NAMES[i], "n_train": 100 * (7 - i), "n_test": 20, "score": 0.1 * i,
                "rank": i / 6, "width": w, "cap": 0.8, "accuracy": a, "top3": min(1.0, a + 0.1), "loss": 5.0,
                "full_width_accuracy": a + 0.01} for i, (a, w) in enumerate(zip(accs, widths))]
    s = summarize(accs)
    history = [{"round": r, "train_loss": 6.0 - r, "mean": s["mean"] * r / rounds, "worst": s["worst"] * r / rounds,
                "seconds": 1.0} for r in range(1, rounds + 1)]
    config = {"dataset": "synthetic", "num_clients": 7, "num_rounds": rounds, "budget": 0.5, "budget_cost": "width",
              "strategy": strategy, "seed": seed, "score": "jsd", "aggregation": "full", "width_min": 0.2,
              "width_max": 0.8}
    return {"config": config, "strategy": strategy, "allocation": "uniform", "extraction": "prefix", "seed": seed,
            "run_id": 1, "budget": {"B": 0.5, "cost": "width", "used": 0.5, "passes": 1}, "clients": clients,
            "summary": s, "history": history, "rejected_updates": []}


def write_fake(folder, strategy, seed, accs, **kw):
    path = folder / strategy / f"seed-{seed}" / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fake_results(strategy, seed, accs, **kw)))
    return path


def make_sweep(folder, seeds=range(5)):
    """uniform and hasa with known per-seed client accuracies; hasa wins on seeds 0-3 only."""
    rng = np.random.default_rng(0)
    accs = {}
    for k in seeds:
        base = rng.uniform(0.05, 0.2, size=7)
        bump = 0.01 * (k + 1) if k < 4 else -0.005
        accs[("uniform", k)] = base
        accs[("hasa", k)] = base + bump
        write_fake(folder, "uniform", k, base.tolist())
        write_fake(folder, "hasa", k, (base + bump).tolist(), widths=[0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.2])
    return accs


def test_describe_ci_matches_manual_t():
    v = [0.10, 0.12, 0.13, 0.11, 0.15]
    d = describe(v)
    sd = np.std(v, ddof=1)
    assert d["mean"] == pytest.approx(np.mean(v))
    assert d["std"] == pytest.approx(sd)
    assert d["ci95"] == pytest.approx(2.7764451051977987 * sd / math.sqrt(5))  # t_{0.975, 4}
    one = describe([0.3])
    assert one["mean"] == 0.3 and one["ci95"] is None and one["std"] is None


def test_paired_matches_scipy_and_counts_wins():
    a = np.array([0.15, 0.13, 0.16, 0.12, 0.14, 0.17])
    b = np.array([0.12, 0.13, 0.11, 0.13, 0.10, 0.12])
    p = paired(a, b)
    assert p["mean_diff"] == pytest.approx(np.mean(a - b))
    assert p["wilcoxon_p"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert p["ttest_p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert p["wins"] == 4 and p["ties"] == 1 and p["n"] == 6


def test_paired_all_equal_differences():
    a = [0.1, 0.2, 0.3]
    zero = paired(a, a)
    assert zero["mean_diff"] == 0.0 and zero["wilcoxon_p"] == 1.0 and zero["ttest_p"] == 1.0 and zero["wins"] == 0
    shifted = paired([x + 0.01 for x in a], a)  # constant non-zero difference: t undefined, never NaN
    assert shifted["wins"] == 3 and shifted["mean_diff"] == pytest.approx(0.01)
    assert shifted["ttest_p"] is None
    assert shifted["wilcoxon_p"] is None or 0 < shifted["wilcoxon_p"] <= 1
    json.dumps(shifted, allow_nan=False)


def test_constant_differences_have_no_t_test_up_to_float_rounding():
    """scipy says 0.0 for exactly constant differences and 1e-31 for ones that differ in the 17th
    digit: both are a t-test without spread, undefined, not 'certain'."""
    assert paired([2, 3, 4], [1, 2, 3])["ttest_p"] is None
    assert paired([0.11, 0.12, 0.13], [0.10, 0.11, 0.12])["ttest_p"] is None  # d = 0.01 +- 1e-17
    assert paired([-0.5, -0.5], [0.0, 0.0])["ttest_p"] is None
    spread = paired([0.11, 0.12, 0.14], [0.10, 0.11, 0.12])
    assert spread["ttest_p"] == pytest.approx(sps.ttest_rel([0.11, 0.12, 0.14], [0.10, 0.11, 0.12]).pvalue)


def test_spearman():
    r = spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 11])
    assert r["rho"] == pytest.approx(1.0)
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4])["rho"] is None  # constant side: undefined, not NaN


def test_report_schema_and_numbers(tmp_path):
    accs = make_sweep(tmp_path)
    paths = write_report(tmp_path)
    summary = json.loads(paths["summary.json"].read_text())
    assert list(summary["strategies"]) == ["uniform", "hasa"]
    h = summary["strategies"]["hasa"]
    assert h["seeds"] == [0, 1, 2, 3, 4]
    for key in ("mean", "worst", "tail"):
        assert set(h[key]) >= {"mean", "std", "ci95"}
    means = [summarize(accs[("hasa", k)])["mean"] for k in range(5)]
    base = [summarize(accs[("uniform", k)])["mean"] for k in range(5)]
    assert h["mean"]["mean"] == pytest.approx(np.mean(means))
    t = sps.t.ppf(0.975, 4)
    assert h["mean"]["ci95"] == pytest.approx(t * np.std(means, ddof=1) / math.sqrt(5))
    tails = [summarize(accs[("hasa", k)])["tail"] for k in range(5)]
    assert h["tail"]["mean"] == pytest.approx(np.mean(tails))
    # fake full-width accuracy = accuracy + 0.01 per client
    assert h["full_width_mean"]["mean"] == pytest.approx(np.mean(means) + 0.01)
    p = h["paired_vs_uniform"]
    assert set(p) >= {"mean_diff", "wilcoxon_p", "ttest_p", "wins"}
    assert p["wins"] == 4 and p["n"] == 5
    assert p["mean_diff"] == pytest.approx(np.mean(np.array(means) - np.array(base)))
    assert p["wilcoxon_p"] == pytest.approx(sps.wilcoxon(means, base).pvalue)
    assert p["ttest_p"] == pytest.approx(sps.ttest_rel(means, base).pvalue)
    u = summary["strategies"]["uniform"]["paired_vs_uniform"]
    assert u["mean_diff"] == 0.0 and u["wilcoxon_p"] == 1.0 and u["wins"] == 0
    # per-client means per strategy, fractions not percent
    pc = {c["name"]: c for c in h["per_client"]}
    assert pc["A"]["accuracy"] == pytest.approx(np.mean([accs[("hasa", k)][0] for k in range(5)]))
    assert pc["A"]["width"] == pytest.approx(0.8)
    assert summary["per_client_means"]["uniform"]["B"] == pytest.approx(
        np.mean([accs[("uniform", k)][1] for k in range(5)]))
    assert all(0 <= c["accuracy"] <= 1 for c in h["per_client"])
    assert [r["round"] for r in h["convergence"]] == [1, 2, 3]
    json.dumps(summary, allow_nan=False)
    md = paths["summary.md"].read_text()
    assert "| hasa | 5 |" in md and "4/5" in md
    for name in ("per_client.png", "convergence.png", "score_vs_width.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # every output written whole: no temp file left behind
    assert not (tmp_path / "score_vs_need.png").exists()


def test_unmatched_seeds_are_paired_on_the_intersection(tmp_path):
    make_sweep(tmp_path, seeds=range(3))
    write_fake(tmp_path, "fjord", 1, [0.1] * 7)
    write_fake(tmp_path, "fjord", 2, [0.2] * 7)
    write_fake(tmp_path, "fjord", 7, [0.3] * 7)  # no uniform seed 7: not paired
    summary = summarize_sweep(load_runs(tmp_path))
    f = summary["strategies"]["fjord"]
    assert f["seeds"] == [1, 2, 7] and f["paired_vs_uniform"]["n"] == 2
    assert f["paired_vs_uniform"]["seeds"] == [1, 2]
    # hasa against each other strategy, same matching: Δ = hasa - other
    v = summary["hasa_vs"]
    assert list(v) == ["uniform", "fjord"] and v["fjord"]["worst"]["seeds"] == [1, 2]
    hasa = load_runs(tmp_path)["hasa"]
    assert v["fjord"]["worst"]["mean_diff"] == pytest.approx(np.mean([hasa[k]["summary"]["worst"] - w
                                                                       for k, w in ((1, 0.1), (2, 0.2))]))
    assert v["uniform"]["mean"] == summary["strategies"]["hasa"]["paired_vs_uniform"]


def test_missing_uniform_is_a_clear_error(tmp_path):
    write_fake(tmp_path, "hasa", 0, [0.1] * 7)
    with pytest.raises(ReportError, match="no 'uniform' runs"):
        write_report(tmp_path)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="hasa sweep"):
        load_runs(tmp_path)


def test_calibration_analysis_and_score_vs_need(tmp_path):
    """need from fake width-1.0 / width-0.5 runs; scores computed in-process on the synthetic data."""
    from hasa_flwr.study.launch import app_defaults
    from hasa_flwr.federation.config import settings_from_run_config
    from conftest import ROOT

    from hasa_flwr.study.report import write_calibration

    calib = tmp_path / "calib"
    settings = settings_from_run_config({**app_defaults(ROOT), "embed-dim": 8, "hidden-dim": 8}).to_dict()
    for k in (0, 1):
        need = np.linspace(0.0, 0.06, 7)
        low = np.full(7, 0.1)
        for name, acc, width, budget in (("width-1.0", low + need, 1.0, 1.0), ("width-0.5", low, 0.5, 0.5)):
            path = write_fake(calib, "uniform", k, acc.tolist(), widths=[width] * 7)
            res = json.loads(path.read_text())
            res["config"] = {**settings, "seed": k, "budget": budget, "strategy": "uniform"}
            target = calib / name / f"seed-{k}" / "results.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(res))
            path.unlink()
        (calib / "uniform" / f"seed-{k}").rmdir()
    (calib / "uniform").rmdir()
    c = write_calibration(calib)
    assert [round(x["need"], 6) for x in c["clients"]] == [round(x, 6) for x in np.linspace(0.0, 0.06, 7)]
    assert set(c["spearman"]) == {"jsd", "entropy", "loss"}
    for s in ("jsd", "entropy", "loss"):
        assert c["spearman"][s]["rho"] is not None and -1 <= c["spearman"][s]["rho"] <= 1
        assert len(c["spearman"][s]["per_seed"]) == 2
    assert (calib / "calibration.md").read_text().startswith("## Score validity on synthetic")
    assert (calib / "score_vs_need.png").stat().st_size > 1000
    sweep = tmp_path / "sweep"
    make_sweep(sweep, seeds=range(2))
    paths = write_report(sweep, calibration=calib)
    assert paths["score_vs_need.png"].stat().st_size > 1000
    assert "Score validity" in paths["summary.md"].read_text()
    assert json.loads(paths["summary.json"].read_text())["calibration"]["spearman"]["jsd"]["rho"] is not None
    # a second calibration folder joins the score-validity table
    paths = write_report(sweep, calibration=[calib, calib])
    summary = json.loads(paths["summary.json"].read_text())
    assert [v["dataset"] for v in summary["score_validity"]] == ["synthetic", "synthetic"]
    md = paths["summary.md"].read_text()
    assert "## Score validity, all data sets" in md and md.count("| synthetic | 2 |") == 2


def calibration_folder(root, accs_full, accs_low, config=None):
    """A `hasa calibrate` folder: width-1.0 and width-0.5 runs per seed with the given accuracies."""
    for k, (full, low) in enumerate(zip(accs_full, accs_low)):
        for name, acc, width in (("width-1.0", full, 1.0), ("width-0.5", low, 0.5)):
            res = fake_results("uniform", k, [0.0] * len(acc), widths=[width] * len(acc))
            for c, a in zip(res["clients"], acc):
                c["accuracy"] = a
            res["config"] = {**res["config"], **(config or {}), "seed": k, "budget": width}
            path = root / name / f"seed-{k}" / "results.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res))
    return root


def test_a_client_without_accuracy_is_left_out_of_the_calibration_with_a_note(tmp_path, monkeypatch):
    from hasa_flwr.study import report

    monkeypatch.setattr(report, "client_scores", lambda config: {s: np.arange(7.0) for s in ("jsd", "entropy", "loss")})
    low = [[0.1] * 7, [0.1] * 7]
    full = [[0.1 + 0.01 * i for i in range(7)], [0.1 + 0.01 * i for i in range(7)]]
    full[1][3] = None  # client 3's evaluation failed on seed 1 at width 1.0
    calib = report.write_calibration(calibration_folder(tmp_path, full, low))
    assert [c["partition_id"] for c in calib["clients"]] == [0, 1, 2, 4, 5, 6]
    assert calib["skipped"] == ["client 3, no accuracy in width 1.0 seed 1"]
    assert calib["spearman"]["jsd"]["rho"] == pytest.approx(1.0)  # scores of the kept clients, by partition id
    assert [c["need"] for c in calib["clients"]] == pytest.approx([0.0, 0.01, 0.02, 0.04, 0.05, 0.06])
    assert "Left out (a null accuracy: its evaluation failed): client 3" in (tmp_path / "calibration.md").read_text()
    assert not list(tmp_path.glob(".*"))  # written whole: no temp file left behind


def test_a_recorded_data_path_from_another_machine_is_looked_up_under_hasa_data_dir(tmp_path, monkeypatch):
    from hasa_flwr.data.files import resolve_path
    from hasa_flwr.study.report import recorded_data_path

    (tmp_path / "medium_data.csv").write_text("title,publication\n")
    monkeypatch.setenv("HASA_DATA_DIR", str(tmp_path))
    elsewhere = "/home/someone/data/medium_data.csv"
    assert recorded_data_path(elsewhere) == "medium_data.csv"
    assert resolve_path(recorded_data_path(elsewhere)) == tmp_path / "medium_data.csv"
    here = str(tmp_path / "medium_data.csv")
    assert recorded_data_path(here) == here and recorded_data_path("sub/x.csv") == "sub/x.csv"
    assert recorded_data_path("") == ""


def test_calibration_scores_count_the_runs_score_histogram():
    """`score-histogram = tokens` scores clients on their words, as client.py sends them."""
    from conftest import ROOT

    from hasa_flwr.federation.config import Settings, settings_from_run_config
    from hasa_flwr.method.scores import jsd_scores
    from hasa_flwr.study.launch import app_defaults
    from hasa_flwr.study.report import client_scores

    config = settings_from_run_config({**app_defaults(ROOT), "embed-dim": 8, "hidden-dim": 8}).to_dict()
    fed = Settings.from_dict(config).load_data()
    by = {h: jsd_scores(np.stack([c.label_counts(fed.num_classes, h) for c in fed.clients]))
          for h in ("targets", "tokens")}
    assert not np.allclose(by["targets"], by["tokens"])
    for h in ("targets", "tokens"):
        assert np.allclose(client_scores({**config, "score_histogram": h})["jsd"], by[h])


def test_compare_adds_the_strategies_a_folder_lacks(tmp_path):
    main_runs, ablation = tmp_path / "runs", tmp_path / "ablation"
    make_sweep(main_runs)
    for k in range(5):
        write_fake(ablation, "hasa-oracle", k, [0.3] * 7)
        write_fake(ablation, "hasa", k, [0.01] * 7)   # a same-named folder here wins over the compared one
    with pytest.raises(ReportError, match="no 'uniform' runs"):
        write_report(ablation)
    paths = write_report(ablation, compare=main_runs)
    summary = json.loads(paths["summary.json"].read_text())
    assert list(summary["strategies"]) == ["uniform", "hasa", "hasa-oracle"]
    assert summary["compared_with"]["strategies"] == ["uniform"]
    assert summary["strategies"]["hasa"]["mean"]["mean"] == pytest.approx(0.01)
    assert summary["hasa_vs"]["hasa-oracle"]["mean"]["wins"] == 0
    assert "Runs of uniform come from" in paths["summary.md"].read_text()


def test_a_strategy_with_its_own_aggregation_is_named_in_the_setup_not_warned_about(tmp_path):
    make_sweep(tmp_path)
    for k in range(5):
        path = write_fake(tmp_path, "hasa-focus", k, [0.1] * 7)
        res = json.loads(path.read_text())
        res["config"]["aggregation"] = "selective"
        path.write_text(json.dumps(res))
    runs = load_runs(tmp_path)
    summary = summarize_sweep(runs)
    assert summary["setup"]["aggregation"] == "full"
    assert summary["setup"]["aggregation_of"] == {"hasa-focus": "selective"}
    assert not [w for w in summary.get("warnings", []) if "aggregation" in w]
    paths = write_report(tmp_path, out=tmp_path / "out")
    assert "aggregation `full` (`selective`: hasa-focus)." in paths["summary.md"].read_text()


def test_runs_recorded_before_user_data_are_not_a_different_data_set(tmp_path):
    make_sweep(tmp_path)
    for k in range(5):  # the committed Medium sweep says dataset "medium"; runs since say "text"
        for name, dataset in (("uniform", "medium"), ("hasa", "text")):
            path = tmp_path / name / f"seed-{k}" / "results.json"
            res = json.loads(path.read_text())
            res["config"]["dataset"] = dataset
            path.write_text(json.dumps(res))
    assert not [w for w in summarize_sweep(load_runs(tmp_path))["warnings"] if "dataset" in w]


def test_a_figure_that_fails_to_save_leaves_no_file(tmp_path, monkeypatch):
    """Plots are written whole or not at all: a folder being watched never shows half a PNG."""
    from hasa_flwr.study.report import _pyplot, save

    fig = _pyplot().figure()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save(fig, tmp_path / "plot.png")
    assert not list(tmp_path.iterdir())
