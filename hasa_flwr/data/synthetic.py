"""The embedded synthetic titles: Medium-shaped clients whose need for width is known.

Very unequal sizes (one "publication" each), one shared word pool, and first-order Markov
grammars that agree on each word's likely continuations but keep between 1 and 8 of them: the
entropy is set by a complexity level independent of size.
The corpus is fixed (never depends on the run seed), so only the split follows the seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .core import DataError

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


SHARED_WORDS = 200   # one word pool for every client: the vocabulary does not grow with the federation
MAX_SUCCESSORS = 8


def _successors(level: float) -> int:
    """Successors per word in a client's grammar: 1 (a template) up to 8, set by its complexity."""
    return 1 + round((MAX_SUCCESSORS - 1) * level)


def synthetic_complexity(num_clients: int = 7) -> np.ndarray:
    """Distinct word transitions in each synthetic client's grammar: its known need for width."""
    words = SHARED_WORDS + len(_FUNCTION_WORDS)
    return np.array([words * _successors(level) for level in _synthetic_levels(num_clients)])


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


def _shared_grammar(rng: np.random.Generator, states: int) -> tuple[np.ndarray, np.ndarray]:
    """Every word's candidate successors and their probabilities, most likely first. Clients keep
    a prefix of each list, so they agree on the likely continuations and differ in how many."""
    succ = np.stack([rng.choice(states, size=MAX_SUCCESSORS, replace=False) for _ in range(states)])
    probs = -np.sort(-rng.dirichlet(np.ones(MAX_SUCCESSORS), size=states), axis=1)
    return succ, probs


def _markov_titles(rng: np.random.Generator, words: list[str], grammar: tuple[np.ndarray, np.ndarray],
                   successors: int, n: int) -> list[str]:
    """n titles of 4-10 words from the shared chain cut to ``successors`` continuations per word."""
    succ, probs = grammar
    states = len(words)
    kept = probs[:, :successors] / probs[:, :successors].sum(1, keepdims=True)
    cum = np.cumsum(kept, axis=1)
    lengths = rng.integers(4, 11, size=n)
    walk = np.empty((n, 10), dtype=np.int64)
    starts = rng.choice(states, size=2 + 2 * successors, replace=False)  # few openings if simple
    walk[:, 0] = rng.choice(starts, size=n)
    draws = rng.random((n, 9))
    for t in range(9):
        pick = np.minimum((cum[walk[:, t]] < draws[:, t, None]).sum(1), successors - 1)
        walk[:, t + 1] = succ[walk[:, t], pick]
    return [" ".join(words[i] for i in row[:length]) for row, length in zip(walk, lengths)]


def synthetic_words() -> list[str]:
    """Every word of the synthetic language: public (a fixed seed makes it), so it is the synthetic
    federation's candidate list under secure-stats."""
    return _pseudo_words(np.random.default_rng(SYNTHETIC_SEED), SHARED_WORDS, set(_FUNCTION_WORDS)) + \
        list(_FUNCTION_WORDS)


@lru_cache(maxsize=4)
def synthetic_titles(num_clients: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(name, titles) per client, in generation order (largest first)."""
    if num_clients < 2:
        raise DataError(f"synthetic data needs num-clients >= 2, got {num_clients}: "
                        "set num-clients to 2 or more (7 mirrors Medium)")
    rng = np.random.default_rng(SYNTHETIC_SEED)
    words = _pseudo_words(rng, SHARED_WORDS, set(_FUNCTION_WORDS)) + list(_FUNCTION_WORDS)  # = synthetic_words()
    grammar = _shared_grammar(rng, len(words))
    parts = []
    for c, (size, level) in enumerate(zip(_synthetic_sizes(num_clients), _synthetic_levels(num_clients))):
        name = _SYNTH_NAMES[c] if c < len(_SYNTH_NAMES) else f"Synthetic Publication {c}"
        parts.append((name, tuple(_markov_titles(rng, words, grammar, _successors(level), size))))
    return tuple(parts)
