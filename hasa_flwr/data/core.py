"""What every data source produces: one client's tensors, the split rule and the error type."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


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
    classes: tuple[str, ...] = ()  # images: the federation's class names; a label indexes them

    @property
    def n_train(self) -> int:
        """Samples as the budget and the weighted averages count them: labelled targets."""
        return int((self.y_train != IGNORE_INDEX).sum())

    @property
    def n_test(self) -> int:
        return int((self.y_test != IGNORE_INDEX).sum())

    @property
    def n_train_rows(self) -> int:
        """Titles (text) or images (images) in the training split: what clients are numbered by."""
        return int(self.x_train.shape[0])

    def label_counts(self, num_classes: int, over: str = "targets") -> np.ndarray:
        """Training label histogram: the statistic the jsd and entropy scores need. Text titles
        ``over="tokens"``: every in-vocabulary word of the training titles, which is the next-word
        targets plus each title's first word (never a target); <pad> and <unk> count in neither."""
        y = self.y_train[self.y_train != IGNORE_INDEX]
        if over == "tokens":
            first = self.x_train[:, 0]
            y = torch.cat([y, first[first > 1]])  # 0 = <pad>, 1 = <unk>
        return np.bincount(y.numpy(), minlength=num_classes).astype(np.int64)

    def majority_accuracy(self) -> float:
        """Test accuracy of always predicting the most frequent training label: the floor a model must beat."""
        y = self.y_train[self.y_train != IGNORE_INDEX]
        t = self.y_test[self.y_test != IGNORE_INDEX]
        if y.numel() == 0 or t.numel() == 0:
            return 0.0
        return float((t == torch.bincount(y).argmax()).float().mean())


def split_indices(n: int, test_fraction: float, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-client train/test split; the one place the run seed touches the data.

    The same permutation as HF ``Dataset.train_test_split(test_size, seed)`` (tested), without
    importing ``datasets`` on a device's training path.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test-fraction must be in (0, 1), got {test_fraction}: use e.g. 0.2")
    if n < 2:
        raise DataError(f"client {name!r} has {n} usable rows; it needs at least 2 for a train/test split: "
                        "give it more data")
    n_test = max(1, min(n - 1, math.ceil(test_fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], perm[:n_test]
