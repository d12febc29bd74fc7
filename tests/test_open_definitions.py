"""The two definitions the paper leaves open (text): what the score's histogram counts
(`score-histogram`: next-word targets or every word of the training titles) and what n_i counts in
the budget (`size-unit`: prefix samples or titles). Defaults are unchanged; the phases run on a
loopback federation with the real ClientApp (as test_secure_stats does)."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from hasa_flwr.data.prepare import write_vocab
from hasa_flwr.data.text import encode_split, split_titles
from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.method.scores import jsd_scores
from hasa_flwr.study.launch import app_defaults, preflight
from hasa_flwr.study.dry_run import statistics_phases, widths

K = 4


def rc(**overrides):
    return {**app_defaults(ROOT), "num-clients": K, **overrides}


def test_tokens_are_every_known_word_of_the_training_titles():
    titles = [["a", "b", "c"], ["b", "zz", "a"], ["zz", "c"], ["c", "a", "b", "a"], ["a", "c"], ["b", "b"]]
    vocab = ["<pad>", "<unk>", "a", "b", "c"]  # "zz" is out of the vocabulary: <unk>
    split = split_titles("x", titles, 0.3, 0)
    data = encode_split(split, vocab, 8)
    targets, tokens = data.label_counts(len(vocab)), data.label_counts(len(vocab), "tokens")
    words = [w for title in split.train for w in title]
    assert tokens.tolist() == [0, 0] + [words.count(w) for w in vocab[2:]]
    nexts = [w for title in split.train for w in title[1:]]
    assert targets.tolist() == [0, 0] + [nexts.count(w) for w in vocab[2:]]
    assert targets.sum() == data.n_train


def test_tokens_histogram_reaches_the_scores_in_the_clear_and_under_secure_stats():
    targets = statistics_phases(rc())
    tokens = statistics_phases(rc(**{"score-histogram": "tokens"}))
    a = np.stack([c.label_counts for c in targets["clients"]])
    b = np.stack([c.label_counts for c in tokens["clients"]])
    # every title adds its first word (unless it is <unk>): at most n_train_rows more counts each
    extra = b.sum(1) - a.sum(1)
    rows = np.array([c.n_train_rows for c in tokens["clients"]])
    assert (b >= a).all() and (extra > 0).all() and (extra <= rows).all()
    clear = [tokens["scores"][c.node_id] for c in tokens["clients"]]
    assert np.allclose(clear, jsd_scores(b), atol=1e-12)
    assert not np.allclose(clear, [targets["scores"][c.node_id] for c in targets["clients"]])
    secure = statistics_phases(rc(**{"score-histogram": "tokens", "secure-stats": True,
                                     "vocab-path": str(write_words(tokens["vocab"]))}))
    assert secure["secure"][-1].total.tolist() == b.sum(0).tolist()  # the bound covers the first words too
    got = [secure["scores"][c.node_id] for c in secure["clients"]]
    assert np.abs(np.array(got) - np.array(clear)).max() <= 1e-12


def write_words(words):
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    write_vocab(words, path)
    return path


def test_size_unit_titles_weights_the_budget_by_titles():
    for unit, size in (("samples", lambda c: c.n_train), ("titles", lambda c: c.n_train_rows)):
        config = rc(**{"size-unit": unit})
        p = statistics_phases(config)
        settings = settings_from_run_config(config)
        w = widths(settings, p["clients"], p["scores"])
        n = np.array([size(c) for c in p["clients"]], dtype=float)
        assert abs((n / n.sum()) @ w - settings.budget) < 1e-9, unit
        other = np.array([c.n_train_rows if unit == "samples" else c.n_train for c in p["clients"]], dtype=float)
        assert abs((other / other.sum()) @ w - settings.budget) > 1e-4, unit  # the unit changes the widths
    preflight(rc(**{"size-unit": "titles"}))


@pytest.mark.parametrize("key,value,message", [
    ("score-histogram", "words", "unknown score-histogram 'words'"),
    ("size-unit", "bytes", "unknown size-unit 'bytes'"),
])
def test_unknown_values_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        settings_from_run_config(rc(**{key: value}))


@pytest.mark.parametrize("key,value", [("score-histogram", "tokens"), ("size-unit", "titles")])
def test_image_data_refuses_the_text_options(key, value):
    with pytest.raises(ValueError, match=f"one label per image: use {key}="):
        settings_from_run_config(rc(dataset="digits", **{key: value}))
    assert settings_from_run_config(rc(dataset="digits")).score_histogram == "targets"


def test_hasa_allocate_compares_variants_without_training(tmp_path, capsys):
    from hasa_flwr.cli import main

    out = tmp_path / "alloc"
    args = ["allocate", "--app", str(ROOT), "--seeds", "0-1", "--set", f"num-clients={K}",
            "--vary", "tokens:score-histogram=tokens", "--vary", "titles:size-unit=titles",
            "--vary", "inverse:allocation=hasa-inverse", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "allocate.json").read_text())
    for seed in ("0", "1"):
        row = result["seeds"][seed]
        config = {**rc(), "seed": int(seed)}
        p = statistics_phases(config)
        expected = widths(settings_from_run_config(config), p["clients"], p["scores"])
        assert np.allclose([c["width"] for c in row["base"]], expected, atol=1e-12)
        assert row["inverse"]["same_order"] is False and row["inverse"]["max_width_change"] > 0.1
        n = np.array([c["n_train_rows"] for c in row["titles"]["clients"]], float)
        assert abs((n / n.sum()) @ np.array([c["width"] for c in row["titles"]["clients"]]) - 0.5) < 1e-9
    assert "| tokens | score-histogram=tokens |" in (out / "allocate.md").read_text()
    capsys.readouterr()
    assert main(["allocate", "--app", str(ROOT), "--vary", "size-unit=titles", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NAME:KEY=VALUE" in err and not (tmp_path / "x").exists()
    assert main(["allocate", "--app", str(ROOT), "--vary", "a:size-unit=bytes", "--out", str(tmp_path / "x")]) == 2
    assert "unknown size-unit 'bytes'" in capsys.readouterr().err and not (tmp_path / "x").exists()
