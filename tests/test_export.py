"""Export (ONNX, torch.export), predict and the widths bench on real saved runs.

The runs are made here, in-process: a supernet trained for a moment on the app's default data
(synthetic titles, LSTM 32/64) or on conf/digits.toml's (CNN 8/16), saved with model_files like
a finished run leaves it, so these tests need neither Flower nor the server's saving.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hasa_flwr.federation.config import Settings, settings_from_run_config
from hasa_flwr.study.launch import app_defaults, merge_config, read_preset
from hasa_flwr.method.model_files import META, load_model, model_meta, save_model
from hasa_flwr.method.train import train

ROOT = Path(__file__).resolve().parents[1]
CLIENT_WIDTHS = (0.5, 0.8, 0.3)  # the first three clients' widths; the others get no saved subnet


def settings_for(kind: str) -> Settings:
    """The app defaults (synthetic text) or the digits preset, as a run would validate them."""
    overrides = read_preset(ROOT / "conf" / "digits.toml") if kind == "digits" else {}
    return settings_from_run_config(merge_config(app_defaults(ROOT), overrides))


def make_run(folder: Path, settings: Settings, *, rows: int = 320) -> Path:
    """``folder/model`` (supernet) and ``folder/clients/<name>`` for three clients, trained for one
    pass over ``rows`` pooled training rows (a few hundred ms: enough to be better than chance)."""
    fed = settings.load_data()
    model = settings.initial_model(fed.num_classes, fed.input_shape)
    x = torch.cat([c.x_train for c in fed.clients])
    y = torch.cat([c.y_train for c in fed.clients])
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:rows]
    train(model, x[pick], y[pick], epochs=1, batch_size=32, lr=0.01, seed=0, optimizer="adam")
    clients = [{"name": c.name, "partition_id": i, "width": w, "cap": 0.8}
               for i, (c, w) in enumerate(zip(fed.clients, CLIENT_WIDTHS))]
    common = dict(kind=settings.model, sizes=settings.sizes, num_classes=fed.num_classes, scaler=settings.scaler,
                  input_shape=fed.input_shape, vocab=fed.vocab,
                  class_names=list(fed.clients[0].classes) if fed.kind == "image" else None,
                  max_title_words=settings.max_title_words if fed.kind == "text" else None, clients=clients,
                  run_config=settings.to_dict(), run_id=123)
    save_model(folder / "model", model.state_dict(), model_meta(width=1.0, **common))
    for c in clients:
        sub = settings.prefix_of(model, fed.num_classes, c["width"])
        save_model(folder / "clients" / c["name"], sub.state_dict(), model_meta(width=c["width"], client=c["name"],
                                                                                **common))
    return folder



DIFF = re.compile(r"max \|logit difference\| vs PyTorch = ([0-9.e+-]+)")
TEXT_CLIENT = "Synthetic Startup"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two busy cores: torch's own threads would only fight the background jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("text-run"), settings_for("text"))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("digits-run"), settings_for("digits"))


def hasa(*args) -> tuple[int, str, str]:
    """`hasa ARGS` in-process: (exit code, stdout, stderr)."""
    from hasa_flwr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def export_ok(run: Path, out: Path, *args) -> str:
    """Export through the CLI; the file is there, no temporary is left, the check passed."""
    rc, stdout, err = hasa("export", run, "--out", out, *args)
    assert rc == 0, err
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    diff = float(DIFF.search(stdout).group(1))
    assert diff < 1e-4
    return stdout


@pytest.fixture(scope="module")
def text_onnx(text_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("text-onnx") / "startup.onnx"
    return out, export_ok(text_run, out, "--client", TEXT_CLIENT)


@pytest.fixture(scope="module")
def digits_onnx(digits_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("digits-onnx") / "supernet.onnx"
    return out, export_ok(digits_run, out)


def test_export_lstm_onnx_checked_on_real_titles(text_onnx, text_run):
    import onnxruntime as ort

    path, stdout = text_onnx
    assert "real test inputs" in stdout and "note:" not in stdout
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["hasa_flwr"])
    saved = load_model(text_run, TEXT_CLIENT)
    assert meta["vocab"] == saved.meta["vocab"] and meta["width"] == 0.5 and meta["client"] == TEXT_CLIENT
    x = torch.randint(2, len(meta["vocab"]), (3, 5))  # batch and sequence are dynamic
    got = session.run(None, {"tokens": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - saved.build()(x).numpy()).max() < 1e-4


def test_export_cnn_onnx_checked_on_real_digits(digits_onnx):
    _, stdout = digits_onnx
    assert "real test inputs" in stdout and "supernet (width 1)" in stdout


@pytest.mark.parametrize("kind, client", [("digits", "digits-1"), ("text", TEXT_CLIENT)])
def test_export_pt2_loads_back_and_matches(kind, client, request, tmp_path):
    run = request.getfixturevalue(f"{kind}_run")
    out = tmp_path / "subnet.pt2"
    export_ok(run, out, "--client", client, "--format", "pt2")
    extra = {"hasa_flwr.json": ""}
    program = torch.export.load(str(out), extra_files=extra).module()
    saved = load_model(run, client)
    assert json.loads(extra["hasa_flwr.json"])["width"] == saved.width
    x = next(c for c in settings_for(kind).load_data().clients if c.name == client).x_test
    with torch.no_grad():
        assert (program(x) - saved.build()(x)).abs().max() < 1e-4


def test_export_of_a_supernet_prefix(text_run, tmp_path):
    stdout = export_ok(text_run, tmp_path / "w04.onnx", "--width", "0.4")
    assert "width-0.4 prefix of the supernet" in stdout


def test_export_mismatch_exits_1_and_writes_nothing(digits_run, tmp_path, monkeypatch):
    monkeypatch.setattr("hasa_flwr.export.TOLERANCE", 0.0)
    out = tmp_path / "m.onnx"
    rc, stdout, err = hasa("export", digits_run, "--out", out)
    assert rc == 1 and "differs from PyTorch" in err and not list(tmp_path.iterdir())


def test_export_without_the_data_says_so(digits_run, tmp_path, monkeypatch):
    monkeypatch.setattr("hasa_flwr.export.run_data", lambda meta: (None, "DataError: not here"))
    stdout = export_ok(digits_run, tmp_path / "r.onnx", "--client", "digits-2")
    assert "note: the run's data is not available" in stdout and "random valid inputs" in stdout


def ranked(stdout: str) -> list[tuple[str, float]]:
    rows = [line.split() for line in stdout.splitlines()[1:]]
    return [(r[1], float(r[2])) for r in rows]


def test_predict_next_words_run_dir_and_onnx_agree(text_run, text_onnx):
    vocab = load_model(text_run).meta["vocab"]
    text = f"How to {vocab[2].upper()}, <b>{vocab[3]}</b> qqqzz"
    results = []
    for args in ((text_run, "--client", TEXT_CLIENT), (text_onnx[0],)):
        rc, stdout, err = hasa("predict", *args, text)
        assert rc == 0, err
        assert f"'how to {vocab[2]} {vocab[3]} <unk>'" in stdout.splitlines()[0]
        top = ranked(stdout)
        words, probs = [w for w, _ in top], [p for _, p in top]
        assert len(top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0
        assert not {"<pad>", "<unk>"} & set(words) and set(words) <= set(vocab)
        results.append(top)
    assert [w for w, _ in results[0]] == [w for w, _ in results[1]]
    assert np.allclose([p for _, p in results[0]], [p for _, p in results[1]], atol=1e-4)


def digit_png(path: Path, index: int = 5, size: int = 8) -> tuple[Path, str]:
    """sklearn's digit ``index`` as an 8-bit grayscale PNG (values 0-16 scaled to 0-255)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images[index] * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels).resize((size, size)).save(path)
    return path, str(bunch.target[index])


def test_predict_image_top3_run_dir_and_onnx(digits_run, digits_onnx, tmp_path):
    png, _ = digit_png(tmp_path / "five.png")
    results = []
    for source in (digits_run, digits_onnx[0]):
        rc, stdout, err = hasa("predict", source, png)
        assert rc == 0, err
        top = ranked(stdout)
        probs = [p for _, p in top]
        assert len(top) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert {c for c, _ in top} <= {str(d) for d in range(10)}
        results.append(top)
    assert [c for c, _ in results[0]] == [c for c, _ in results[1]]


def test_bench_widths_writes_three_sane_files(digits_run, tmp_path):
    out = tmp_path / "bench"
    rc, stdout, err = hasa("bench", "widths", digits_run, "--widths", "1,0.25,0.5", "--out", out, "--repeats", "5",
                           "--warmup", "1")
    assert rc == 0, err
    result = json.loads((out / "widths.json").read_text())
    rows = result["rows"]
    assert [r["width"] for r in rows] == [0.25, 0.5, 1.0]
    for key in ("params", "macs", "onnx_bytes"):
        assert all(a[key] < b[key] for a, b in zip(rows, rows[1:])), key
    assert rows[-1]["mac_fraction"] == pytest.approx(1.0)
    assert all(r["latency_ms"] > 0 and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert "| width | params |" in (out / "widths.md").read_text()
    assert (out / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["widths.json", "widths.md", "widths.png"]


def test_bench_widths_without_the_data_says_n_a(digits_run, tmp_path, monkeypatch):
    monkeypatch.setattr("hasa_flwr.study.widths_bench.run_data", lambda meta: (None, "DataError: not here"))
    rc, stdout, err = hasa("bench", "widths", digits_run, "--widths", "0.5,1", "--out", tmp_path, "--repeats", "2")
    assert rc == 0, err
    assert all(r["accuracy"] is None for r in json.loads((tmp_path / "widths.json").read_text())["rows"])
    assert "| n/a |" in stdout and "not on this machine (DataError: not here)" in stdout


def mismatched_model(run: Path, tmp: Path) -> Path:
    """A model folder whose weights come from another model (a client's subnet) than its model.json."""
    folder = tmp / "mixed"
    folder.mkdir()
    (folder / META).write_text((run / "model" / META).read_text())
    client = next((run / "clients").iterdir())
    (folder / "model.safetensors").write_bytes((client / "model.safetensors").read_bytes())
    return folder


BAD = {
    "no model in the folder": lambda r, t: ("export", t / "empty", "--out", t / "o.onnx"),
    "width above 1": lambda r, t: ("export", r, "--width", "1.5", "--out", t / "o.onnx"),
    "width 0": lambda r, t: ("export", r, "--width", "0", "--out", t / "o.onnx"),
    "width above the subnet's": lambda r, t: ("export", r, "--client", "digits-0", "--width", "0.9", "--out",
                                              t / "o.onnx"),
    "unknown client": lambda r, t: ("export", r, "--client", "nobody", "--out", t / "o.onnx"),
    "metadata does not match weights": lambda r, t: ("export", mismatched_model(r, t), "--out", t / "o.onnx"),
    "pt2 of a missing run": lambda r, t: ("export", t / "nowhere", "--format", "pt2", "--out", t / "o.pt2"),
    "image of the wrong size": lambda r, t: ("predict", r, digit_png(t / "big.png", size=16)[0]),
    "not an image": lambda r, t: ("predict", r, mismatched_model(r, t) / META),
    "bench widths outside (0, 1]": lambda r, t: ("bench", "widths", r, "--widths", "0.5,1.2", "--out", t / "b"),
    "bench a run without a model": lambda r, t: ("bench", "widths", t / "empty", "--out", t / "b"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_no_file(case, digits_run, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, stdout, err = hasa(*BAD[case](digits_run, tmp_path))
    assert rc == 2, (case, stdout, err)
    assert err.startswith("hasa: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.pt2").exists() and not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_text_and_width_for_an_export_file(text_run, text_onnx):
    rc, _, err = hasa("predict", text_run, "qqqzz xxyyw")
    assert rc == 2 and "vocabulary" in err and err.count("\n") == 1
    rc, _, err = hasa("predict", text_onnx[0], "--width", "0.5", "how to")
    assert rc == 2 and "drop --client/--width" in err and err.count("\n") == 1


def test_missing_onnx_says_how_to_install(digits_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rc, _, err = hasa("export", digits_run, "--out", tmp_path / "o.onnx")
    assert rc == 2 and 'pip install "hasa-flwr[export]"' in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
