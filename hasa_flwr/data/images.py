"""sklearn's bundled 8x8 digits with Dirichlet label skew (the offline image benchmark), and the
Dirichlet split that users' one-folder image data shares with it."""

from __future__ import annotations

import contextlib
import io
from functools import lru_cache

import numpy as np
import torch

from .core import ClientData, DataError, split_indices

DIGITS_PARTITION_SEED = 42  # fixed like Medium's publications: only the split follows the run seed
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def dirichlet_rows(labels: np.ndarray, num_clients: int, alpha: float, min_size: int) -> tuple[np.ndarray, ...]:
    """Row indices of each of ``num_clients`` label-skewed partitions (flwr-datasets' DirichletPartitioner,
    fixed seed); ValueError if no draw gives every partition ``min_size`` rows."""
    from flwr_datasets.partitioner import DirichletPartitioner
    import datasets

    datasets.disable_progress_bars()
    partitioner = DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=alpha,
                                       seed=DIGITS_PARTITION_SEED, min_partition_size=min_size)
    partitioner.dataset = datasets.Dataset.from_dict({"index": np.arange(len(labels)), "label": labels})
    with contextlib.redirect_stderr(io.StringIO()):
        return tuple(np.asarray(partitioner.load_partition(pid)["index"]) for pid in range(num_clients))


@lru_cache(maxsize=4)
def _digits_partitions(num_clients: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor, tuple[np.ndarray, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    try:
        parts = dirichlet_rows(bunch.target, num_clients, alpha, min_size=10)
    except ValueError as err:
        raise DataError(f"cannot split digits into {num_clients} Dirichlet partitions of >= 10 images ({err}): use "
                        "a smaller num-clients >= 1 or a larger dirichlet-alpha") from err
    return images, labels, parts


def digits_client(partition_id: int, num_clients: int, seed: int, test_fraction: float, alpha: float) -> ClientData:
    """Partition ``partition_id`` of the digits federation, split by the run seed."""
    images, labels, parts = _digits_partitions(num_clients, alpha)
    rows = parts[partition_id]
    name = f"digits-{partition_id}"
    train, test = split_indices(len(rows), test_fraction, seed, name)
    train_idx, test_idx = torch.from_numpy(rows[train]), torch.from_numpy(rows[test])
    return ClientData(name, images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], DIGIT_CLASSES)
