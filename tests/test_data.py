"""Tests for hasa_flwr.data: encoding, vocabulary, splits, partitions and error messages."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hasa_flwr import data as D
from hasa_flwr.data import IGNORE_INDEX, DataError, load_federated

MEDIUM_DIR = os.environ.get("HASA_DATA_DIR")
needs_medium = pytest.mark.skipif(
    not (MEDIUM_DIR and (Path(MEDIUM_DIR) / "medium_data.csv").is_file()),
    reason="set HASA_DATA_DIR to the folder holding medium_data.csv",
)


# ----------------------------------------------------------------------------- encoding


def test_targets_are_inputs_shifted_by_one():
    stoi = {"<pad>": 0, "<unk>": 1, "how": 2, "to": 3, "win": 4}
    x, y = D._encode([["how", "to", "win"], ["how", "to"]], stoi, length=4)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 4)
    assert x[0].tolist() == [2, 3, 0, 0]
    assert y[0].tolist() == [3, 4, IGNORE_INDEX, IGNORE_INDEX]
    assert x[1].tolist() == [2, 0, 0, 0]
    assert y[1].tolist() == [3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    inner = x[:, 1:] != 0  # wherever the next input is a word, it is this position's target
    assert torch.equal(x[:, 1:][inner], y[:, :-1][inner])


def test_unknown_words_are_unk_inputs_and_ignored_targets():
    stoi = {"<pad>": 0, "<unk>": 1, "a": 2}
    x, y = D._encode([["a", "zzz", "a", "qqq"]], stoi, length=3)
    assert x[0].tolist() == [2, 1, 2]
    assert y[0].tolist() == [IGNORE_INDEX, 2, IGNORE_INDEX]


def test_encode_truncates_to_length():
    stoi = {"<pad>": 0, "<unk>": 1, "w": 2}
    x, y = D._encode([["w"] * 40], stoi, length=D.MAX_INPUT_LEN)
    assert x.shape == (1, 24) and (y != IGNORE_INDEX).sum() == 24


def test_clean_title_strips_html_case_and_non_letters():
    raw = '<strong class="x">How I Built a $1M Start-up in 2019&amp;Beyond</strong>'
    assert D.clean_title(raw) == ["how", "i", "built", "a", "m", "start", "up", "in", "beyond"]


# ----------------------------------------------------------------------------- vocabulary


def test_vocab_min_count_order_and_ties():
    vocab = D._build_vocab([["b", "a", "c"], ["a", "b", "d"], ["a"]], min_count=2)
    assert vocab == ["<pad>", "<unk>", "a", "b"]  # a:3, b:2; c and d seen once
    assert D._build_vocab([["y", "x"]], min_count=1) == ["<pad>", "<unk>", "x", "y"]


def test_vocab_comes_from_training_splits_only():
    # "rare" appears in 2 titles; with min_count=2 it enters the vocabulary only when both titles
    # land in the training split; otherwise it is <unk> wherever it appears, test split included.
    titles = [f"w{i} filler" for i in range(8)] + ["rare filler", "rare filler"]
    table = datasets.Dataset.from_dict({"title": titles})
    outcomes = set()
    for seed in range(20):
        train, _ = D._split(table, 0.2, seed, "c")
        fd = D._text_data([("c", table)], seed=seed, test_fraction=0.2, min_count=2)
        in_vocab = "rare" in fd.vocab
        assert in_vocab == (sum(t.startswith("rare") for t in train["title"]) == 2)
        assert "filler" in fd.vocab and not any(w.startswith("w") for w in fd.vocab[2:])
        x = torch.cat([fd.clients[0].x_train, fd.clients[0].x_test])
        assert (x[:, 0] == 1).sum() == 10 - 2 * in_vocab  # w<i> always <unk>; rare when not kept
        outcomes.add(in_vocab)
    assert outcomes == {True, False}


# ----------------------------------------------------------------------------- client data


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_n_train_equals_label_counts_sum(name):
    fd = load_federated(name, num_clients=7, seed=0)
    for c in fd.clients:
        counts = c.label_counts(fd.num_classes)
        assert counts.dtype == np.int64 and counts.shape == (fd.num_classes,)
        assert counts.sum() == c.n_train > 0 and c.n_test > 0
        if fd.kind == "text":
            assert counts[0] == counts[1] == 0  # <pad> and <unk> are never targets


def test_split_is_deterministic_in_seed_and_differs_across_seeds():
    a = load_federated("synthetic", num_clients=7, seed=0)
    load_federated.cache_clear()
    b = load_federated("synthetic", num_clients=7, seed=0)
    c = load_federated("synthetic", num_clients=7, seed=1)
    assert a is not b
    for ca, cb in zip(a.clients, b.clients):
        assert torch.equal(ca.x_train, cb.x_train) and torch.equal(ca.y_test, cb.y_test)
    assert any(not torch.equal(ca.x_train, cc.x_train) for ca, cc in zip(a.clients, c.clients))
    assert load_federated("synthetic", num_clients=7, seed=1) is c  # cached


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shape():
    fd = load_federated("synthetic", num_clients=7, seed=0)
    assert fd.kind == "text" and len(fd.clients) == 7 and fd.num_classes == len(fd.vocab)
    titles = [c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients]
    assert titles == [1200, 600, 320, 240, 160, 100, 40]
    assert [c.name for c in fd.clients] == list(D.SYNTHETIC_COMPLEXITY)
    assert len({c.name for c in fd.clients}) == 7
    for c in fd.clients:
        assert abs(c.x_test.shape[0] / (c.x_train.shape[0] + c.x_test.shape[0]) - 0.2) < 0.03
        lengths = (c.x_train != 0).sum(1) + 1
        assert lengths.min() >= 4 and lengths.max() <= 10


def test_synthetic_corpus_independent_of_seed():
    assert [t["title"] for _, t in D._synthetic_parts(7)] == [
        t["title"] for _, t in D._synthetic_parts(7)
    ]
    a = load_federated("synthetic", num_clients=7, seed=0)
    b = load_federated("synthetic", num_clients=7, seed=3)
    common = set(a.vocab) & set(b.vocab) - {D.UNK}

    def titles(fd, c):  # inputs (title[:-1]) as words; words outside either vocabulary read "?"
        rows = torch.cat([fd.clients[c].x_train, fd.clients[c].x_test]).tolist()
        return sorted(" ".join(fd.vocab[i] if fd.vocab[i] in common else "?" for i in r if i > 0)
                      for r in rows)

    for c in range(7):
        assert titles(a, c) == titles(b, c)


def test_synthetic_complexity_varies_independently_of_size():
    complexity = np.array(list(D.SYNTHETIC_COMPLEXITY.values()))
    assert np.array_equal(complexity, D.synthetic_complexity(7))
    assert len(set(complexity.tolist())) == 7
    diffs = np.diff(complexity)
    assert (diffs > 0).any() and (diffs < 0).any()  # not monotone in size
    from scipy.stats import spearmanr

    assert abs(spearmanr(complexity, np.arange(7)).statistic) < 0.3


def test_synthetic_complexity_shows_in_the_data():
    # Distinct bigrams per word of a client's corpus grows with its grammar's complexity.
    parts = D._synthetic_parts(7)
    ratios = []
    for _, table in parts:
        titles = [t.split() for t in table["title"]]
        bigrams = {(a, b) for t in titles for a, b in zip(t, t[1:])}
        ratios.append(len(bigrams) / len({w for t in titles for w in t}))
    from scipy.stats import spearmanr

    assert spearmanr(ratios, D.synthetic_complexity(7)).statistic > 0.8


def test_synthetic_other_client_counts():
    fd = load_federated("synthetic", num_clients=4, seed=0)
    sizes = [c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients]
    assert len(sizes) == 4 and sizes[0] == 1200 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(DataError, match="num-clients >= 2"):
        load_federated("synthetic", num_clients=1, seed=0)


# ----------------------------------------------------------------------------- medium


@needs_medium
def test_medium_partition():
    fd = load_federated("medium", num_clients=7, seed=0)
    assert fd.kind == "text" and len(fd.clients) == 7
    assert fd.clients[0].name == "The Startup" and fd.clients[-1].name == "Better Humans"
    titles = [c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients]
    assert titles == sorted(titles, reverse=True)
    for c in fd.clients:
        n = c.x_train.shape[0] + c.x_test.shape[0]
        assert abs(c.x_test.shape[0] - 0.2 * n) <= 1
    assert fd.clients[0].x_train.shape[1] <= D.MAX_INPUT_LEN
    assert 1000 < fd.num_classes < 10000


@needs_medium
def test_medium_data_path_forms():
    assert D.resolve_medium_path(MEDIUM_DIR) == Path(MEDIUM_DIR) / "medium_data.csv"
    csv = str(Path(MEDIUM_DIR) / "medium_data.csv")
    assert D.resolve_medium_path(csv) == Path(csv)


@needs_medium
def test_medium_wrong_num_clients():
    with pytest.raises(DataError, match="has 7 publications; set num-clients=7"):
        load_federated("medium", num_clients=5, seed=0)


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*synthetic, medium, digits"):
        load_federated("mnist", num_clients=7, seed=0)


def test_missing_csv(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"medium data not found at .*nowhere.*HASA_DATA_DIR"):
        load_federated("medium", num_clients=7, seed=0, data_path=str(tmp_path / "nowhere"))
    monkeypatch.delenv("HASA_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="HASA_DATA_DIR is unset"):
        D.resolve_medium_path("")
    monkeypatch.setenv("HASA_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="medium_data.csv"):
        D.resolve_medium_path("")


def test_csv_missing_publication_column(tmp_path):
    path = tmp_path / "medium_data.csv"
    path.write_text("id,title\n1,Hello World\n2,Another Title Here\n")
    with pytest.raises(DataError, match="lacks column.*publication.*Kaggle Medium CSV"):
        load_federated("medium", num_clients=7, seed=0, data_path=str(tmp_path))


def test_empty_csv(tmp_path):
    path = tmp_path / "medium_data.csv"
    path.write_text("")
    with pytest.raises(DataError, match="cannot parse"):
        load_federated("medium", num_clients=7, seed=0, data_path=str(path))


def test_bad_test_fraction():
    with pytest.raises(DataError, match="test-fraction"):
        load_federated("synthetic", num_clients=7, seed=0, test_fraction=1.0)


def test_small_csv_natural_partition(tmp_path):
    # Partition ids follow size (largest first, ties by name), not NaturalIdPartitioner's
    # alphabetical order.
    rows = ["title,publication"]
    rows += [f"Zeta story number {i},Zeta" for i in range(10)]
    rows += [f"Alpha post {i} here,Alpha" for i in range(5)]
    rows += [f"Beta post {i} here,Beta" for i in range(5)]
    rows += ["<b>One</b>,Alpha", ",Beta"]  # one-word and empty titles are dropped
    (tmp_path / "medium_data.csv").write_text("\n".join(rows) + "\n")
    fd = load_federated("medium", num_clients=3, seed=0, data_path=str(tmp_path), min_count=1)
    assert [c.name for c in fd.clients] == ["Zeta", "Alpha", "Beta"]
    assert [c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients] == [10, 5, 5]


# ----------------------------------------------------------------------------- digits


def test_digits():
    fd = load_federated("digits", num_clients=7, seed=0)
    assert fd.kind == "image" and fd.num_classes == 10 and fd.vocab is None
    assert [c.name for c in fd.clients] == [f"digits-{i}" for i in range(7)]
    assert sum(c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients) == 1797
    shares = []
    for c in fd.clients:
        assert c.x_train.dtype == torch.float32 and c.x_train.shape[1:] == (1, 8, 8)
        assert 0.0 <= c.x_train.min() and c.x_train.max() <= 1.0
        assert c.y_train.dtype == torch.int64 and 0 <= c.y_train.min() and c.y_train.max() <= 9
        counts = c.label_counts(10)
        shares.append(counts.max() / counts.sum())
    assert np.median(shares) > 0.2  # uniform labels would give ~0.1: Dirichlet skew


def test_digits_partition_fixed_split_follows_seed():
    a = load_federated("digits", num_clients=7, seed=0)
    b = load_federated("digits", num_clients=7, seed=1)
    for ca, cb in zip(a.clients, b.clients):
        assert ca.n_train + ca.n_test == cb.n_train + cb.n_test  # same partition
    assert any(not torch.equal(ca.y_train, cb.y_train) for ca, cb in zip(a.clients, b.clients))
