"""Titles -> words -> token ids: cleaning, the vocabulary rule and next-word encoding.

A client needs nothing from anyone else to clean and split its titles and count its words; the
vocabulary is the one thing the federation agrees on (pooled counts, or a shared vocabulary file).
"""

from __future__ import annotations

import hashlib
import html
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core import IGNORE_INDEX, ClientData, DataError, split_indices

PAD, UNK = "<pad>", "<unk>"  # token ids 0 and 1
MAX_TITLE_WORDS = 24  # Medium's longest cleaned title: the default `max-title-words`

_TAG = re.compile(r"<[^>]*>")
_NON_LETTER = re.compile(r"[^a-z]+")


def clean_title(title: str, max_words: int = MAX_TITLE_WORDS) -> list[str]:
    """HTML-free, lowercase, letters-only words, at most ``max_words`` of them."""
    text = html.unescape(_TAG.sub(" ", str(title))).lower()
    return _NON_LETTER.sub(" ", text).split()[:max_words]


def usable_titles(raw: Iterable[str], max_words: int) -> list[list[str]]:
    """Cleaned titles of two or more words (a one-word title has no next word to predict)."""
    return [words for words in (clean_title(t, max_words) for t in raw) if len(words) >= 2]


@dataclass(frozen=True)
class TextSplit:
    """One client's cleaned titles, split: everything a device derives from its own file alone."""

    name: str
    train: tuple[tuple[str, ...], ...]
    test: tuple[tuple[str, ...], ...]

    def word_counts(self) -> Counter:
        """What the vocabulary round shares: counts of the words in the training split."""
        return Counter(word for title in self.train for word in title)


def split_titles(name: str, titles: list[list[str]], test_fraction: float, seed: int) -> TextSplit:
    train, test = split_indices(len(titles), test_fraction, seed, name)
    return TextSplit(name, tuple(tuple(titles[i]) for i in train), tuple(tuple(titles[i]) for i in test))


def build_vocab(counts: Mapping[str, int], min_count: int) -> list[str]:
    """Words with a pooled training count >= ``min_count``, most frequent first (ties by word)."""
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, UNK, *kept]


def pool_counts(per_client: Iterable[Mapping[str, int]]) -> Counter:
    total: Counter = Counter()
    for counts in per_client:
        total.update(counts)
    return total


def vocab_hash(vocab: list[str]) -> str:
    """Names a vocabulary in every message, so a device with another one is caught, not misread."""
    return hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:16]


def read_vocab(path: str | Path) -> list[str]:
    """A vocabulary file: one word per line, most frequent first; <pad> and <unk> are added if absent."""
    return [PAD, UNK, *read_words(path, "vocab-path", "hasa vocab FILE... --out")]


def read_candidates(path: str | Path) -> list[str]:
    """Public candidate words (one per line) whose pooled counts secure-stats sums for the vocabulary."""
    return read_words(path, "vocab-candidates", "hasa candidates --out")


def read_words(path: str | Path, key: str, build: str) -> list[str]:
    """A word-list file shared by every party: UTF-8, one word per line, each once."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{key} {path} not found: build one with `{build} {path}` and give every device and the "
                        "server the same file")
    try:
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{key} {path} is unreadable ({type(err).__name__}): it must be UTF-8 text, one word "
                        "per line") from err
    words = [w for w in words if w not in (PAD, UNK)]
    if not words:
        raise DataError(f"{key} {path} is empty: build it with `{build} {path}`")
    if len(set(words)) != len(words):
        raise DataError(f"{key} {path} lists a word twice: one word per line, each once")
    unusable = [w for w in words if clean_title(w) != [w]]  # titles are cleaned: such a word would never match
    if unusable:
        raise DataError(f"{key} {path} lists {len(unusable)} word(s) titles never contain, e.g. {unusable[0]!r}: "
                        f"words are lowercase letters a-z only; rebuild it with `{build} {path}`")
    return words


def encode(titles: tuple[tuple[str, ...], ...], stoi: Mapping[str, int],
           length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Titles -> (inputs, next-word targets); padding and <unk> targets are not samples."""
    ids = np.zeros((len(titles), length + 1), dtype=np.int64)
    for row, title in enumerate(titles):
        tokens = [stoi.get(word, 1) for word in title[: length + 1]]
        ids[row, : len(tokens)] = tokens
    ids_t = torch.from_numpy(ids)
    y = ids_t[:, 1:].clone()
    x = ids_t[:, :-1] * (y != 0)  # a title's last word is never an input: x = title[:-1]
    y[y <= 1] = IGNORE_INDEX  # 0 = <pad>, 1 = <unk>
    return x, y


def encode_split(split: TextSplit, vocab: list[str], max_title_words: int) -> ClientData:
    """A client's tensors under the agreed vocabulary; inputs hold ``max_title_words - 1`` positions."""
    stoi = {word: i for i, word in enumerate(vocab)}
    length = max_title_words - 1
    return ClientData(split.name, *encode(split.train, stoi, length), *encode(split.test, stoi, length))
