"""Bad input through the `hasa` command: one line, exit code 2, nothing written, no Ray started."""

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from hasa_flwr.method.allocation import allocate
from hasa_flwr.cli import main
from hasa_flwr.federation.config import STRATEGIES, settings_from_run_config
from hasa_flwr.study.launch import app_defaults


def run_args(tmp_path, *run_config):
    args = ["run", str(ROOT)]
    for rc in (f"results-dir='{tmp_path / 'results'}'", *run_config):
        args += ["--run-config", rc]
    return args


def hasa(tmp_path, capsys, *run_config):
    """`hasa run` in this process (fast); returns (exit code, stderr)."""
    code = main(run_args(tmp_path, *run_config))
    return code, capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hasa_flwr.cli", *run_args(tmp_path, "score='kl'")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown score 'kl'" in proc.stderr


@pytest.mark.parametrize("override, words", [
    ("allocation='widest'", ["unknown allocation 'widest'", "hasa-inverse"]),
    ("score='kl'", ["unknown score 'kl'", "jsd"]),
    ("dataset='cifar'", ["unknown dataset 'cifar'", "text"]),
    ("extraction='middle'", ["unknown extraction 'middle'", "rolling"]),
    ("strategy='fedavgx'", ["unknown strategy 'fedavgx'", "fedrolex"]),
    ("budget=0.1", ["budget 0.1 is below width-min", "raise budget"]),
    ("budget=0.85", ["budget 0.85 exceeds", "width-cap"]),
    ("budget=nan", ["budget nan is outside (0, 1]"]),
    ("momentum=-0.5", ["momentum must be 0 or a positive number, got -0.5"]),
    ("width-cap='0.8,0.5'", ["width-cap lists 2 finite values for 7 clients"]),
    ("dataset='text' client-column='publication' data-path='/nonexistent/medium.csv'",
     ["/nonexistent/medium.csv not found", "HASA_DATA_DIR"]),
    ("dataset='text' vocab-path='/nonexistent/vocab.txt'", ["vocab-path /nonexistent/vocab.txt not found"]),
    ("max-title-words=1", ["max-title-words must be at least 2"]),
    ("num-clients=7 colour=1", ["unknown run-config key(s) colour"]),
    ("score='given'", ["score='given' needs score-values"]),
    ("score='given' score-values='0.1,0.2'", ["score-values lists 2 finite values for 7 clients"]),
    ("score='given' score-values='1,2,3,4,5,6,nan'", ["score-values lists 7 finite values", "comma-separated"]),
    ("score-values='1,2,3,4,5,6,7'", ["only read with score='given'"]),
    ("strategy=fedavgx", ["unknown strategy 'fedavgx'"]),  # unquoted: a string, as with --set
    ("budget=abc", ["run-config key budget must be a number, got 'abc'"]),
    ("num-clients=3.5", ["run-config key num-clients must be a whole number, got 3.5"]),
    ("scaler=False", ["run-config key scaler must be true or false, got 'False'"]),
    ("lr", ["--run-config 'lr' is not key=value pairs", "strategy='hasa'"]),
])
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, override, words):
    code, err = hasa(tmp_path, capsys, override)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hasa: error: "), err
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "results").exists()


def test_csv_without_publication_column(tmp_path, capsys):
    csv = tmp_path / "medium_data.csv"
    csv.write_text("id,title\n1,A title here\n2,Another title here\n")
    code, err = hasa(tmp_path, capsys, f"dataset='text' client-column='publication' data-path='{csv}'")
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "no column 'publication'" in line and "set client-column" in line


def test_every_strategy_meets_the_same_budget_and_caps():
    defaults = app_defaults(ROOT)
    rng = np.random.default_rng(0)
    sizes = rng.integers(20, 3000, 7)
    scores = rng.uniform(size=7)
    caps = np.array([0.8, 0.8, 0.6, 0.8, 0.5, 0.8, 0.8])
    for name in STRATEGIES:
        s = settings_from_run_config({**defaults, "strategy": name})
        a = allocate(s.allocation, scores, sizes, budget=s.budget, w_min=s.width_min, w_max=s.width_max,
                     caps=caps, seed=s.seed)
        assert abs(float(sizes @ a.widths) / sizes.sum() - s.budget) <= 1e-6, name
        assert (a.widths <= caps + 1e-12).all() and (a.widths >= s.width_min - 1e-12).all(), name


def test_strategy_axes_can_be_combined():
    defaults = app_defaults(ROOT)
    s = settings_from_run_config({**defaults, "strategy": "hasa", "extraction": "rolling"})
    assert (s.allocation, s.extraction) == ("hasa", "rolling")
    s = settings_from_run_config({**defaults, "strategy": "fedrolex"})
    assert (s.allocation, s.extraction) == ("uniform", "rolling")


def test_split_then_vocab_equals_the_vocabulary_round(tmp_path, capsys):
    """`hasa split` + `hasa vocab` reproduce, offline, what the vocabulary round agrees on."""
    from hasa_flwr.data import Source, load_federated, read_vocab

    rows = ["title,publication"] + [f"How to build thing {i % 4} fast,Alpha" for i in range(12)]
    rows += [f"Why data {i % 3} matters,Beta" for i in range(8)]
    (tmp_path / "pooled.csv").write_text("\n".join(rows) + "\n")
    assert main(["split", str(tmp_path / "pooled.csv"), "--client-column", "publication", "--out",
                 str(tmp_path / "fed")]) == 0
    assert sorted(p.name for p in (tmp_path / "fed").iterdir()) == ["Alpha.csv", "Beta.csv"]
    assert main(["split", str(tmp_path / "pooled.csv"), "--client-column", "publication", "--out",
                 str(tmp_path / "new" / "deeper" / "fed")]) == 0  # missing parents are made, as for other outputs
    assert sorted(p.name for p in (tmp_path / "new" / "deeper" / "fed").iterdir()) == ["Alpha.csv", "Beta.csv"]
    assert main(["vocab", str(tmp_path / "fed"), "--out", str(tmp_path / "v.txt"), "--seed", "3"]) == 0
    fed = load_federated(Source("text", data_path=str(tmp_path / "fed"), num_clients=2, seed=3))
    assert read_vocab(tmp_path / "v.txt") == fed.vocab
    # a non-empty output folder, and a missing client column, are one-line errors (exit 2)
    capsys.readouterr()
    assert main(["split", str(tmp_path / "pooled.csv"), "--client-column", "publication", "--out",
                 str(tmp_path / "fed")]) == 2
    assert main(["split", str(tmp_path / "pooled.csv"), "--client-column", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["vocab", str(tmp_path / "fed"), "--out", str(tmp_path / "w.txt"), "--min-count", "99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("hasa: error: ") for line in err)
    assert "not empty" in err[0] and "no column 'nope'" in err[1] and "min-count 99" in err[2]
    assert not (tmp_path / "w.txt").exists() and not (tmp_path / "x").exists()


def test_hasa_focus_defaults_to_selective_aggregation_and_the_key_overrides_it():
    defaults = app_defaults(ROOT)
    s = settings_from_run_config({**defaults, "strategy": "hasa-focus"})
    assert (s.allocation, s.extraction, s.aggregation) == ("focus", "prefix", "selective")
    assert settings_from_run_config({**defaults, "strategy": "hasa"}).aggregation == "full"
    s = settings_from_run_config({**defaults, "strategy": "hasa-focus", "aggregation": "full"})
    assert s.aggregation == "full"
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        settings_from_run_config({**defaults, "aggregation": "mean"})


def test_a_local_superlink_from_another_environment_is_refused(tmp_path, capsys, monkeypatch):
    """`flwr run` hands a local simulation to whatever SuperLink holds the fixed control port, and that
    SuperLink runs the app with its own packages: `hasa run` says so instead of failing inside it."""
    from hasa_flwr.study.processes import BIN, foreign_local_superlink, free_port

    port = free_port()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    flags = ["--insecure", "--control-api-address", f"127.0.0.1:{port}"]

    def started(*args):  # returns once the child has exec'd (a forked child shows pytest's command line)
        proc = subprocess.Popen([*sleep, *args, *flags])
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 30
        while args[0].encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        return proc

    ours = started(str(BIN / "flower-superlink"))
    other = None
    try:
        assert foreign_local_superlink(port) is None  # one of this environment's: fine, it runs our packages
        other = started("/elsewhere/.venv/bin/flower-superlink")
        assert foreign_local_superlink(port) == (other.pid, Path("/elsewhere/.venv/bin"))
        assert foreign_local_superlink(free_port()) is None  # another port: not in the way
        monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(port))
        code, err = hasa(tmp_path, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"127.0.0.1:{port} (pid {other.pid}) runs from another environment (/elsewhere/.venv/bin)" in err
        assert not (tmp_path / "results").exists()
    finally:
        for proc in (ours, other):
            if proc is not None:
                proc.kill()
                proc.wait()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hasa: error: "), err
    return err[0]


def test_run_config_pairs_read_like_set():
    from hasa_flwr.cli import parse_overrides

    assert parse_overrides(["strategy=hasa seed=3 width-cap='0.8,0.5' client-column='' data-path=\"a b\"", ""]) == {
        "strategy": "hasa", "seed": 3, "width-cap": "0.8,0.5", "client-column": "", "data-path": "a b"}


@pytest.mark.parametrize("argv", [
    ["run", str(ROOT), "--run-config", "{preset}"],
    ["sweep", "--app", str(ROOT), "--out", "{out}", "--preset", "{preset}"],
    ["calibrate", "--app", str(ROOT), "--out", "{out}", "--preset", "{preset}"],
    ["allocate", "--app", str(ROOT), "--preset", "{preset}"],
])
def test_malformed_preset_names_the_file(tmp_path, capsys, argv):
    preset = tmp_path / "bad.toml"
    preset.write_text('strategy = "hasa"\nbudget = abc\n')
    out = tmp_path / "out"
    assert main([a.format(preset=preset, out=out) for a in argv]) == 2
    line = one_error_line(capsys)
    assert f"run-config file {preset} is not valid TOML: Invalid value (at line 2" in line and "quotes" in line
    assert not out.exists()


def test_a_wrong_value_type_in_a_preset_or_set_names_the_key(tmp_path, capsys):
    preset = tmp_path / "typed.toml"
    preset.write_text('budget = "abc"\n')
    assert main(["sweep", "--app", str(ROOT), "--out", str(tmp_path / "a"), "--preset", str(preset)]) == 2
    assert "run-config key budget must be a number, got 'abc'" in one_error_line(capsys)
    assert main(["sweep", "--app", str(ROOT), "--out", str(tmp_path / "a"), "--set", "lr=fast"]) == 2
    assert "run-config key lr must be a number, got 'fast'" in one_error_line(capsys)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("key, value, message", [
    ("budget", "abc", "run-config key budget must be a number, got 'abc'"),
    ("seed", 1.5, "run-config key seed must be a whole number, got 1.5"),
    ("scaler", "false", "run-config key scaler must be true or false, got 'false'"),  # not bool("false") = True
    ("min-train-clients", "x", "run-config key min-train-clients must be a whole number, got 'x'"),
])
def test_the_server_names_the_key_of_a_wrong_value_type(key, value, message):
    """`flwr run` (or a deployment) hands the ServerApp its run config without `hasa`'s checks."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        settings_from_run_config({**app_defaults(ROOT), key: value})


def test_missing_input_file_names_the_argument_and_the_paths_tried(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HASA_DATA_DIR", str(tmp_path / "data"))
    assert main(["split", "pooled.csv", "--client-column", "c", "--out", str(tmp_path / "fed")]) == 2
    line = one_error_line(capsys)
    assert "`hasa split` FILE pooled.csv not found" in line
    assert f"tried {tmp_path / 'pooled.csv'} and {tmp_path / 'data' / 'pooled.csv'}" in line
    monkeypatch.delenv("HASA_DATA_DIR")
    assert main(["vocab", "fed", "--out", str(tmp_path / "v.txt")]) == 2
    assert f"`hasa vocab` FILE|FOLDER fed not found (tried {tmp_path / 'fed'}; HASA_DATA_DIR is unset)" in \
        one_error_line(capsys)
    assert not (tmp_path / "fed").exists() and not (tmp_path / "v.txt").exists()


def test_report_names_calibrate_for_a_missing_calibration_folder(tmp_path, capsys):
    from test_sweep import FakeRunner, run_fake

    run_fake(tmp_path / "sweep", FakeRunner(), seeds=(0,))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "sweep"), "--calibration", str(tmp_path / "none")]) == 2
    assert "pass the --out folder of `hasa calibrate`" in one_error_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["candidates", "--from", "synthetic", "--top", "0"], "argument --top: must be at least 1, got 0"),
    (["bench", "scale", "--clients", "abc"], "argument --clients: expected comma-separated federation sizes"),
])
def test_bad_counts_are_usage_errors(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(out)])
    assert exit_.value.code == 2 and words in one_error_line(capsys)
    assert not out.exists()
