"""Tests for hasa_flwr.data: encoding, vocabulary, splits, sources, partitions and error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from hasa_flwr import data as D
from hasa_flwr.data import IGNORE_INDEX, LOCAL, DataError, Source, text_split
from hasa_flwr.data.synthetic import synthetic_titles
from hasa_flwr.data.text import build_vocab, encode, pool_counts, split_titles

MEDIUM_DIR = os.environ.get("HASA_DATA_DIR")
needs_medium = pytest.mark.skipif(
    not (MEDIUM_DIR and (Path(MEDIUM_DIR) / "medium_data.csv").is_file()),
    reason="set HASA_DATA_DIR to the folder holding medium_data.csv",
)
MEDIUM = {"dataset": "text", "data_path": "medium_data.csv", "client_column": "publication"}


def load_federated(dataset: str, **kw) -> D.FederatedData:
    return D.load_federated(Source(dataset, **kw))


# ----------------------------------------------------------------------------- encoding


def test_targets_are_inputs_shifted_by_one():
    stoi = {"<pad>": 0, "<unk>": 1, "how": 2, "to": 3, "win": 4}
    x, y = encode((("how", "to", "win"), ("how", "to")), stoi, length=4)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (2, 4)
    assert x[0].tolist() == [2, 3, 0, 0]
    assert y[0].tolist() == [3, 4, IGNORE_INDEX, IGNORE_INDEX]
    assert x[1].tolist() == [2, 0, 0, 0]
    assert y[1].tolist() == [3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    inner = x[:, 1:] != 0  # wherever the next input is a word, it is this position's target
    assert torch.equal(x[:, 1:][inner], y[:, :-1][inner])


def test_unknown_words_are_unk_inputs_and_ignored_targets():
    stoi = {"<pad>": 0, "<unk>": 1, "a": 2}
    x, y = encode((("a", "zzz", "a", "qqq"),), stoi, length=3)
    assert x[0].tolist() == [2, 1, 2]
    assert y[0].tolist() == [IGNORE_INDEX, 2, IGNORE_INDEX]


def test_encode_truncates_to_length():
    stoi = {"<pad>": 0, "<unk>": 1, "w": 2}
    x, y = encode((("w",) * 40,), stoi, length=D.MAX_TITLE_WORDS - 1)
    assert x.shape == (1, 23) and (y != IGNORE_INDEX).sum() == 23


def test_clean_title_strips_html_case_and_non_letters():
    raw = '<strong class="x">How I Built a $1M Start-up in 2019&amp;Beyond</strong>'
    assert D.clean_title(raw) == ["how", "i", "built", "a", "m", "start", "up", "in", "beyond"]


# ----------------------------------------------------------------------------- vocabulary


def test_vocab_min_count_order_and_ties():
    counts = pool_counts([{"b": 1, "a": 2, "c": 1}, {"a": 1, "b": 1, "d": 1}])
    assert build_vocab(counts, min_count=2) == ["<pad>", "<unk>", "a", "b"]  # a:3, b:2; c and d seen once
    assert build_vocab({"y": 1, "x": 1}, min_count=1) == ["<pad>", "<unk>", "x", "y"]


def test_vocab_comes_from_training_splits_only():
    # "rare" appears in 2 titles; with min_count=2 it enters the vocabulary only when both titles
    # land in the training split; otherwise it is <unk> wherever it appears, test split included.
    titles = [[f"w{i}", "filler"] for i in range(8)] + [["rare", "filler"], ["rare", "filler"]]
    outcomes = set()
    for seed in range(20):
        split = split_titles("c", titles, 0.2, seed)
        vocab = build_vocab(split.word_counts(), min_count=2)
        in_vocab = "rare" in vocab
        assert in_vocab == (sum(t[0] == "rare" for t in split.train) == 2)
        assert "filler" in vocab and not any(w.startswith("w") for w in vocab[2:])
        c = D.encode_split(split, vocab, 4)
        x = torch.cat([c.x_train, c.x_test])
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
    D.load_federated.cache_clear()
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
        assert lengths.min() >= 4 and lengths.max() <= 10 and c.x_train.shape[1] == D.MAX_TITLE_WORDS - 1


def test_synthetic_corpus_independent_of_seed():
    synthetic_titles.cache_clear()
    first = synthetic_titles(7)
    synthetic_titles.cache_clear()
    assert first == synthetic_titles(7)
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
    ratios = []
    for _, raw in synthetic_titles(7):
        titles = [t.split() for t in raw]
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


# ----------------------------------------------------------------------------- medium (pooled file)


@needs_medium
def test_medium_partition():
    fd = load_federated(**MEDIUM, num_clients=7, seed=0)
    assert fd.kind == "text" and len(fd.clients) == 7
    assert fd.clients[0].name == "The Startup" and fd.clients[-1].name == "Better Humans"
    titles = [c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients]
    assert titles == sorted(titles, reverse=True)
    for c in fd.clients:
        n = c.x_train.shape[0] + c.x_test.shape[0]
        assert abs(c.x_test.shape[0] - 0.2 * n) <= 1
    assert fd.clients[0].x_train.shape[1] == D.MAX_TITLE_WORDS - 1
    assert 1000 < fd.num_classes < 10000


@needs_medium
def test_medium_wrong_num_clients():
    with pytest.raises(DataError, match="7 distinct values in client-column 'publication'; set num-clients=7"):
        load_federated(**MEDIUM, num_clients=5, seed=0)


@needs_medium
def test_medium_split_into_files_equals_the_pooled_file(tmp_path):
    """Each publication's own file gives the same clients, vocabulary and tensors as the pooled CSV."""
    import pandas as pd

    frame = pd.read_csv(Path(MEDIUM_DIR) / "medium_data.csv", dtype=str, keep_default_na=False)
    for pub, rows in frame.groupby("publication", sort=False):
        rows.to_csv(tmp_path / f"{pub}.csv", index=False)
    pooled = load_federated(**MEDIUM, num_clients=7, seed=3)
    local = load_federated("text", data_path=str(tmp_path), num_clients=7, seed=3)
    assert pooled.vocab == local.vocab
    for a, b in zip(pooled.clients, local.clients):
        assert a.name == b.name
        assert all(torch.equal(u, v) for u, v in zip((a.x_train, a.y_train, a.x_test, a.y_test),
                                                      (b.x_train, b.y_train, b.x_test, b.y_test)))


# ----------------------------------------------------------------------------- users' files


def test_split_matches_hf_train_test_split():
    for n in (2, 3, 7, 28, 403):
        for seed in (0, 5):
            parts = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=0.2, seed=seed)
            train, test = D.split_indices(n, 0.2, seed, "c")
            assert train.tolist() == parts["train"]["i"] and test.tolist() == parts["test"]["i"]


TITLES = ["How to build a startup", "Why data matters now", "The art of writing", "<b>Design</b> for humans",
          "One", "A guide to machine learning"]


def write_formats(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / "a.csv", "jsonl": folder / "b.jsonl", "parquet": folder / "c.parquet",
             "txt": folder / "d.txt"}
    import pandas as pd

    frame = pd.DataFrame({"title": TITLES, "other": range(len(TITLES))})
    frame.to_csv(paths["csv"], index=False)
    paths["jsonl"].write_text("".join(json.dumps({"title": t}) + "\n" for t in TITLES))
    frame.to_parquet(paths["parquet"])
    paths["txt"].write_text("\n".join(TITLES) + "\n")
    return paths


def test_every_format_gives_the_same_titles(tmp_path):
    src = Source("text", max_title_words=24, seed=1)
    splits = {kind: text_split(src, LOCAL, str(path), "dev") for kind, path in write_formats(tmp_path).items()}
    first = splits["csv"]
    assert len(first.train) + len(first.test) == 5  # "One" has no next word
    assert all(s == first for s in splits.values())
    assert ("design", "for", "humans") in first.train + first.test


def test_a_spreadsheet_export_with_a_byte_order_mark_reads_the_same(tmp_path):
    """Excel's "CSV UTF-8" (and Notepad's UTF-8 .txt) start with a byte-order mark."""
    src = Source("text", max_title_words=24, seed=1)
    plain = write_formats(tmp_path / "plain")
    for kind in ("csv", "txt"):
        marked = tmp_path / f"marked.{kind}"
        marked.write_bytes(b"\xef\xbb\xbf" + plain[kind].read_bytes())
        assert text_split(src, LOCAL, str(marked), "dev") == text_split(src, LOCAL, str(plain[kind]), "dev")


def test_local_device_name_defaults_to_file_stem(tmp_path):
    path = write_formats(tmp_path)["csv"]
    assert text_split(Source("text"), LOCAL, str(path), "").name == "a"
    assert text_split(Source("text"), LOCAL, str(path), "ux").name == "ux"


def test_folder_one_file_per_client_in_name_order(tmp_path):
    write_formats(tmp_path / "fed")
    fd = load_federated("text", data_path=str(tmp_path / "fed"), num_clients=4, seed=0, min_count=1)
    assert sorted(c.name for c in fd.clients) == ["a", "b", "c", "d"]
    with pytest.raises(DataError, match="holds 4 client files; set num-clients=4"):
        load_federated("text", data_path=str(tmp_path / "fed"), num_clients=3, seed=0)


def test_numbering_is_largest_first_then_name():
    assert D.client_order("text", [(LOCAL, 5, "b"), (LOCAL, 9, "z"), (LOCAL, 5, "a")]) == [1, 2, 0]
    assert D.client_order("digits", [(2, 5, "x"), (0, 1, "y"), (1, 9, "z")]) == [1, 2, 0]


def test_small_csv_client_column(tmp_path):
    # Clients are numbered by size (largest first, ties by name), not NaturalIdPartitioner's
    # alphabetical order; one-word titles and rows without a client are dropped.
    rows = ["title,publication"]
    rows += [f"Zeta story number {i},Zeta" for i in range(10)]
    rows += [f"Alpha post {i} here,Alpha" for i in range(5)]
    rows += [f"Beta post {i} here,Beta" for i in range(5)]
    rows += ["<b>One</b>,Alpha", "Orphan title here,"]
    (tmp_path / "pubs.csv").write_text("\n".join(rows) + "\n")
    fd = load_federated("text", data_path=str(tmp_path / "pubs.csv"), client_column="publication", num_clients=3,
                        seed=0, min_count=1)
    assert [c.name for c in fd.clients] == ["Zeta", "Alpha", "Beta"]
    assert [c.x_train.shape[0] + c.x_test.shape[0] for c in fd.clients] == [10, 5, 5]


def test_vocab_file_replaces_the_round(tmp_path):
    (tmp_path / "v.txt").write_text("how\nto\n\nbuild\n")
    write_formats(tmp_path / "fed")
    fd = load_federated("text", data_path=str(tmp_path / "fed"), num_clients=4, seed=0,
                        vocab_path=str(tmp_path / "v.txt"))
    assert fd.vocab == ["<pad>", "<unk>", "how", "to", "build"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    ("", "is empty"),
    ("id,text\n1,hello there\n", "no column 'title'.*set text-column"),
    ("title\nhello there\n", "has 1 usable titles.*at least 2"),
    (b"\xff\xfe\x00garbage\x00", "cannot read"),
])
def test_bad_device_file_names_the_device_and_the_fix(tmp_path, content, match):
    path = tmp_path / "mine.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match):
        text_split(Source("text"), LOCAL, str(path), "ux")


def test_unknown_file_type(tmp_path):
    (tmp_path / "x.docx").write_text("hi")
    with pytest.raises(DataError, match="unknown file type .docx"):
        text_split(Source("text"), LOCAL, str(tmp_path / "x.docx"), "")


def test_folder_without_client_files(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match="holds no client files"):
        load_federated("text", data_path=str(tmp_path), num_clients=2, seed=0)


def test_one_file_without_client_column(tmp_path):
    write_formats(tmp_path)
    with pytest.raises(DataError, match="set client-column"):
        load_federated("text", data_path=str(tmp_path / "a.csv"), num_clients=2, seed=0)


@pytest.mark.parametrize("content, match", [(None, "not found.*hasa vocab"), ("\n\n", "is empty"),
                                            ("how\nto\nhow\n", "lists a word twice"),
                                            ("how\nThe\ndon't\n", "lists 2 word.s. titles never contain, e.g. 'The'")])
def test_bad_vocab_file(tmp_path, content, match):
    if content is not None:
        (tmp_path / "v.txt").write_text(content)
    with pytest.raises(DataError, match=match):
        D.read_vocab(tmp_path / "v.txt")


def test_missing_data_path(tmp_path, monkeypatch):
    monkeypatch.delenv("HASA_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"nowhere not found \(HASA_DATA_DIR is unset\)"):
        load_federated("text", data_path=str(tmp_path / "nowhere"), num_clients=2, seed=0)
    with pytest.raises(DataError, match="data-path is empty"):
        load_federated("text", data_path="", num_clients=2, seed=0)


def test_relative_data_path_under_hasa_data_dir(tmp_path, monkeypatch):
    write_formats(tmp_path / "fed")
    monkeypatch.setenv("HASA_DATA_DIR", str(tmp_path))
    fd = load_federated("text", data_path="fed", num_clients=4, seed=0, min_count=1)
    assert len(fd.clients) == 4


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*synthetic, text, digits"):
        load_federated("mnist", num_clients=7, seed=0)


def test_bad_test_fraction():
    with pytest.raises(DataError, match="test-fraction"):
        load_federated("synthetic", num_clients=7, seed=0, test_fraction=1.0)


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


def test_a_device_prepares_its_data_once(tmp_path):
    """Warm devices: the second message's process loads the cached tensors without importing HF
    datasets or pandas; a changed file gets a new cache entry."""
    import subprocess
    import sys

    from hasa_flwr.data.cache import cached_tensors

    path = write_formats(tmp_path / "dev")["csv"]
    src = Source("text", seed=2)
    vocab = ["<pad>", "<unk>", "how", "to", "the", "of"]
    first = cached_tensors(src, str(path), "ux", vocab, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tensors-*.pt"))) == 1
    code = ("import sys, torch; from hasa_flwr.data import Source; from hasa_flwr.data.cache import cached_tensors; "
            f"d = cached_tensors(Source('text', seed=2), {str(path)!r}, 'ux', {vocab!r}, __import__('pathlib').Path("
            f"{str(tmp_path / 'cache')!r})); "
            "print(int(d.y_train.sum()), [m for m in ('datasets', 'pandas', 'flwr_datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("[", 1)[1].strip() == "]", out.stdout
    assert int(out.stdout.split()[0]) == int(first.y_train.sum())
    path.write_text(path.read_text() + "How to the of\n")
    second = cached_tensors(src, str(path), "ux", vocab, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tensors-*.pt"))) == 2
    assert second.x_train.shape[0] + second.x_test.shape[0] == first.x_train.shape[0] + first.x_test.shape[0] + 1


def test_two_devices_with_identical_files_keep_their_own_names(tmp_path):
    """Without a client-name, a device is named after its file: two files with the same bytes under
    different names (one cache folder, e.g. devices simulated on one machine) must not share an entry."""
    from hasa_flwr.data.cache import cached_tensors

    path = write_formats(tmp_path / "dev")["csv"]
    twin = tmp_path / "dev" / "twin.csv"
    twin.write_bytes(path.read_bytes())
    src, vocab = Source("text", seed=2), ["<pad>", "<unk>", "how", "to", "the", "of"]
    names = [cached_tensors(src, str(p), "", vocab, tmp_path / "cache").name for p in (path, twin)]
    assert names == [path.stem, "twin"]


def test_simulated_clients_partition_one_file_once(tmp_path):
    """A simulated client of one shared file gets its split from the node's cache: the same split,
    and a later run's fresh actor never imports HF datasets, pandas or flwr-datasets; a changed file
    or seed gets a new entry."""
    import subprocess
    import sys

    from hasa_flwr.data.cache import cached_partition

    rows = ["title,publication"] + [f"Zeta story number {i},Zeta" for i in range(10)]
    rows += [f"Alpha post {i} here,Alpha" for i in range(6)]
    path = tmp_path / "pubs.csv"
    path.write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    src = Source("text", data_path=str(path), client_column="publication", num_clients=2, seed=3)
    for pid in (0, 1):
        assert cached_partition(src, pid, cache) == text_split.__wrapped__(src, pid)
    assert len(list(cache.glob("partition-*.json"))) == 2
    code = ("import sys; from pathlib import Path; from hasa_flwr.data import Source; "
            "from hasa_flwr.data.cache import cached_partition; "
            f"s = cached_partition(Source('text', data_path={str(path)!r}, client_column='publication', num_clients=2, "
            f"seed=3), 1, Path({str(cache)!r})); "
            "print(s.name, len(s.train), [m for m in ('datasets', 'pandas', 'flwr_datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    expected = text_split.__wrapped__(src, 1)
    assert out.stdout.split() == [expected.name, str(len(expected.train)), "[]"], out.stdout
    cached_partition(Source("text", data_path=str(path), client_column="publication", num_clients=2, seed=4), 0, cache)
    path.write_text(path.read_text() + "Alpha post extra here,Alpha\n")
    cached_partition.cache_clear()  # the next run's actors are new processes
    cached_partition(src, 0, cache)
    assert len(list(cache.glob("partition-*.json"))) == 4
