"""Data sets and partitions (DESIGN.md sections 3 and 6).

Every data set becomes a list of clients, each with its own train/test split, so the rest of the
project never needs to know where the data came from. The corpus and the partition are fixed; only
the per-client train/test split depends on the run seed, so matched seeds compare like with like.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch

datasets.disable_progress_bars()

IGNORE_INDEX = -100
DATASETS = ("synthetic", "medium", "digits")
PAD, UNK = "<pad>", "<unk>"  # token ids 0 and 1
MAX_INPUT_LEN = 24  # a title keeps its first 25 tokens: 24 (prefix -> next word) positions
DIGITS_PARTITION_SEED = 42  # fixed like Medium's publications: only the split follows the run seed


class DataError(ValueError):
    """A data problem the user can fix; the message says what is wrong and how to fix it."""


@dataclass
class ClientData:
    """One client's tensors. Text rows are titles; each non-ignored target is one sample."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_train(self) -> int:
        """Samples as the budget and the weighted averages count them: labelled targets."""
        return int((self.y_train != IGNORE_INDEX).sum())

    @property
    def n_test(self) -> int:
        return int((self.y_test != IGNORE_INDEX).sum())

    def label_counts(self, num_classes: int) -> np.ndarray:
        """Training label histogram: the only statistic a client shares for the scores."""
        y = self.y_train[self.y_train != IGNORE_INDEX].numpy()
        return np.bincount(y, minlength=num_classes).astype(np.int64)


@dataclass
class FederatedData:
    kind: str  # "text" | "image"
    num_classes: int  # text: vocabulary size including <pad> and <unk>
    clients: list[ClientData]  # index = partition id
    vocab: list[str] | None


# ----------------------------------------------------------------------------- shared helpers


def _split(table: datasets.Dataset, test_fraction: float, seed: int,
           name: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Per-client train/test split; the one place the run seed touches the data."""
    if table.num_rows < 2:
        raise DataError(f"client {name!r} has {table.num_rows} usable rows; it needs at least 2 "
                        "for a train/test split: use more data or fewer clients")
    parts = table.train_test_split(test_size=test_fraction, seed=seed, keep_in_memory=True)
    return parts["train"], parts["test"]


def _build_vocab(train_titles: list[list[str]], min_count: int) -> list[str]:
    """Words from the training splits only, so test words never leak into the model."""
    counts = Counter(word for title in train_titles for word in title)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, UNK, *kept]


def _encode(titles: list[list[str]], stoi: dict[str, int],
            length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Titles -> (inputs, next-word targets); padding and <unk> targets are not samples."""
    ids = torch.zeros((len(titles), length + 1), dtype=torch.int64)
    for row, title in enumerate(titles):
        tokens = [stoi.get(word, 1) for word in title[: length + 1]]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    y = ids[:, 1:].clone()
    x = ids[:, :-1] * (y != 0)  # a title's last word is never an input: x = title[:-1]
    y[y <= 1] = IGNORE_INDEX  # 0 = <pad>, 1 = <unk>
    return x, y


def _text_data(parts: list[tuple[str, datasets.Dataset]], *, seed: int, test_fraction: float,
               min_count: int) -> FederatedData:
    """Shared by Medium and synthetic: split, vocabulary from pooled train, encode."""
    splits = []
    for name, table in parts:
        train, test = _split(table, test_fraction, seed, name)
        words = [[t.split() for t in half["title"]] for half in (train, test)]
        splits.append((name, *words))
    vocab = _build_vocab([t for _, train, _ in splits for t in train], min_count)
    stoi = {word: i for i, word in enumerate(vocab)}
    longest = max(len(t) for _, train, test in splits for t in train + test)
    length = min(MAX_INPUT_LEN, longest - 1)
    clients = [ClientData(name, *_encode(train, stoi, length), *_encode(test, stoi, length))
               for name, train, test in splits]
    return FederatedData("text", len(vocab), clients, vocab)


# ----------------------------------------------------------------------------- Medium

_TAG = re.compile(r"<[^>]*>")
_NON_LETTER = re.compile(r"[^a-z]+")


def clean_title(title: str) -> list[str]:
    """HTML-free, lowercase, letters-only words: the cleaning DESIGN.md section 6 prescribes."""
    text = html.unescape(_TAG.sub(" ", title)).lower()
    return _NON_LETTER.sub(" ", text).split()[: MAX_INPUT_LEN + 1]


def resolve_medium_path(data_path: str) -> Path:
    """One rule for finding the CSV, so a SuperNode and a simulation look in the same places."""
    if data_path:
        path = Path(data_path).expanduser()
        source = "data-path"
    elif os.environ.get("HASA_DATA_DIR"):
        path = Path(os.environ["HASA_DATA_DIR"]).expanduser()
        source = "HASA_DATA_DIR"
    else:
        raise DataError("medium data not found (no data-path and HASA_DATA_DIR is unset): set run "
                        "config data-path or HASA_DATA_DIR to the folder holding medium_data.csv")
    if path.is_dir():
        path = path / "medium_data.csv"
    if not path.is_file():
        raise DataError(f"medium data not found at {path} (from {source}): set run config "
                        "data-path or HASA_DATA_DIR to the folder holding medium_data.csv")
    return path


def _read_medium(path: Path) -> datasets.Dataset:
    """The CSV as a table of cleaned titles and publications, in memory (no cache in $HOME)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse {path} ({type(err).__name__}): it must be the Kaggle "
                        "Medium CSV with columns title and publication") from err
    missing = [c for c in ("title", "publication") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: it must be the Kaggle "
                        "Medium CSV with columns title and publication")
    titles = frame["title"].map(lambda t: " ".join(clean_title(t)))
    keep = (titles.str.count(" ") >= 1) & (frame["publication"].str.strip() != "")  # >= 2 words
    if not keep.any():
        raise DataError(f"{path} has no titles of two or more words: check that it is the "
                        "Kaggle Medium CSV and not empty")
    table = pd.DataFrame({"title": titles[keep], "publication": frame["publication"][keep]})
    return datasets.Dataset.from_pandas(table, preserve_index=False)


def _medium_parts(path: Path, num_clients: int) -> list[tuple[str, datasets.Dataset]]:
    """One client per publication, largest first (ties by name).

    NaturalIdPartitioner numbers publications in sorted (alphabetical) order of their names, so
    we map its ids to a size order: partition 0 is then the biggest publication, as in the paper.
    """
    from flwr_datasets.partitioner import NaturalIdPartitioner  # slow import; not for synthetic

    partitioner = NaturalIdPartitioner(partition_by="publication")
    partitioner.dataset = _read_medium(path)
    if partitioner.num_partitions != num_clients:
        n = partitioner.num_partitions
        raise DataError(f"the Medium CSV has {n} publications; set num-clients={n}")
    with contextlib.redirect_stderr(io.StringIO()):  # the partitioner's own tqdm bar
        parts = [(partitioner.partition_id_to_natural_id[i], partitioner.load_partition(i))
                 for i in range(num_clients)]
    return sorted(parts, key=lambda p: (-p[1].num_rows, p[0]))


# ----------------------------------------------------------------------------- synthetic

SYNTHETIC_SEED = 20240607  # fixed: the corpus never depends on the run seed
_SYNTH_NAMES = ("Synthetic Startup", "Synthetic Data Science", "Synthetic Investor",
                "Synthetic UX", "Synthetic Writing", "Synthetic Marketing", "Synthetic Humans")
_SYNTH_SIZES_7 = (1200, 600, 320, 240, 160, 100, 40)
_SYNTH_LEVELS_7 = (2, 6, 0, 5, 1, 4, 3)  # complexity ranks: Spearman 0 against size
_FUNCTION_WORDS = ("the", "a", "of", "to", "and", "in", "for", "how", "why", "your", "with", "is")


def _synthetic_sizes(num_clients: int) -> list[int]:
    """Very unequal sizes like Medium's: 1200 titles down to 40 in a geometric decay."""
    if num_clients == 7:
        return list(_SYNTH_SIZES_7)
    ratio = (40 / 1200) ** (1 / (num_clients - 1))
    return [max(40, round(1200 * ratio**c)) for c in range(num_clients)]


def _synthetic_levels(num_clients: int) -> np.ndarray:
    """Complexity in [0, 1] per client, shuffled so that need for width is not just size."""
    if num_clients == 7:
        ranks = np.array(_SYNTH_LEVELS_7)
    else:
        ranks = np.random.default_rng(SYNTHETIC_SEED).permutation(num_clients)
    return ranks / (num_clients - 1)


def _grammar_shape(level: float) -> tuple[int, int]:
    """(own words, successors per word): both grow with complexity; level 0 is a template."""
    return 20 + round(180 * level), 1 + round(7 * level)


def synthetic_complexity(num_clients: int = 7) -> np.ndarray:
    """Distinct word transitions in each synthetic client's grammar: its known need for width."""
    shapes = [_grammar_shape(level) for level in _synthetic_levels(num_clients)]
    return np.array([(words + len(_FUNCTION_WORDS)) * succ for words, succ in shapes])


SYNTHETIC_COMPLEXITY: dict[str, int] = dict(zip(_SYNTH_NAMES, synthetic_complexity(7).tolist()))


def _pseudo_words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """Unique letters-only words, so they survive the same cleaning as Medium titles."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(syllables, size=rng.integers(2, 4)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _markov_titles(rng: np.random.Generator, words: list[str], successors: int,
                   n: int) -> list[str]:
    """n titles of 4-10 words from a random first-order Markov chain over `words`."""
    states = len(words)
    succ = np.stack([rng.choice(states, size=successors, replace=False) for _ in range(states)])
    cum = np.cumsum(rng.dirichlet(np.ones(successors), size=states), axis=1)
    lengths = rng.integers(4, 11, size=n)
    walk = np.empty((n, 10), dtype=np.int64)
    starts = rng.choice(states, size=2 + 2 * successors, replace=False)  # few openings if simple
    walk[:, 0] = rng.choice(starts, size=n)
    draws = rng.random((n, 9))
    for t in range(9):
        pick = np.minimum((cum[walk[:, t]] < draws[:, t, None]).sum(1), successors - 1)
        walk[:, t + 1] = succ[walk[:, t], pick]
    return [" ".join(words[i] for i in row[:length]) for row, length in zip(walk, lengths)]


def _synthetic_parts(num_clients: int) -> list[tuple[str, datasets.Dataset]]:
    """Medium-shaped clients: unequal sizes, own words plus shared function words, and
    grammars whose entropy is set by a complexity level independent of size."""
    if num_clients < 2:
        raise DataError(f"synthetic data needs num-clients >= 2, got {num_clients}: "
                        "set num-clients to 2 or more (7 mirrors Medium)")
    rng = np.random.default_rng(SYNTHETIC_SEED)
    taken = set(_FUNCTION_WORDS)
    parts = []
    for c, (size, level) in enumerate(zip(_synthetic_sizes(num_clients),
                                          _synthetic_levels(num_clients))):
        own, successors = _grammar_shape(level)
        words = _pseudo_words(rng, own, taken) + list(_FUNCTION_WORDS)
        name = _SYNTH_NAMES[c] if c < len(_SYNTH_NAMES) else f"Synthetic Publication {c}"
        titles = _markov_titles(rng, words, successors, size)
        parts.append((name, datasets.Dataset.from_dict({"title": titles})))
    return parts


# ----------------------------------------------------------------------------- digits


def _digits(num_clients: int, seed: int, test_fraction: float, alpha: float) -> FederatedData:
    """sklearn's bundled 8x8 digits with Dirichlet label skew: an offline image benchmark."""
    from flwr_datasets.partitioner import DirichletPartitioner
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    try:
        partitioner = DirichletPartitioner(num_partitions=num_clients, partition_by="label",
                                           alpha=alpha, seed=DIGITS_PARTITION_SEED,
                                           min_partition_size=10)
        partitioner.dataset = datasets.Dataset.from_dict(
            {"index": np.arange(len(labels)), "label": bunch.target})
        parts = [partitioner.load_partition(pid) for pid in range(num_clients)]
    except ValueError as err:
        raise DataError(f"cannot split digits into {num_clients} Dirichlet partitions of >= 10 "
                        f"images ({err}): use a smaller num-clients >= 1 or a larger "
                        "dirichlet-alpha") from err
    clients = []
    for pid, part in enumerate(parts):
        name = f"digits-{pid}"
        train, test = (torch.tensor(s["index"]) for s in _split(part, test_fraction, seed, name))
        clients.append(ClientData(name, images[train], labels[train], images[test], labels[test]))
    return FederatedData("image", 10, clients, None)


# ----------------------------------------------------------------------------- entry point


@lru_cache(maxsize=16)
def load_federated(dataset: str, *, num_clients: int, seed: int, data_path: str = "",
                   test_fraction: float = 0.2, dirichlet_alpha: float = 0.5,
                   min_count: int = 2) -> FederatedData:
    """Cached because every client (and the server) of a simulation asks for the same data.

    The result is shared between callers: treat its tensors as read-only.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test-fraction must be in (0, 1), got {test_fraction}: use e.g. 0.2")
    text = {"seed": seed, "test_fraction": test_fraction, "min_count": min_count}
    if dataset == "synthetic":
        return _text_data(_synthetic_parts(num_clients), **text)
    if dataset == "medium":
        return _text_data(_medium_parts(resolve_medium_path(data_path), num_clients), **text)
    if dataset == "digits":
        return _digits(num_clients, seed, test_fraction, dirichlet_alpha)
    raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
