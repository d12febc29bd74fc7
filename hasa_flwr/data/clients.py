"""Which data a node holds, and the whole federation as every node would derive it.

A device reads only its own data: in deployment its node config's ``data-path`` (one file, or
one image folder); in simulation the partition ``partition-id`` of the run config's source (a
folder with one file or image folder per client, one file with a ``client-column``, one image
folder split by Dirichlet label skew, the synthetic titles or digits). Nothing here needs
another client's data; the vocabulary and the class names are the federation's (agreed in the
vocabulary round, or given by ``class-names``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .core import ClientData, DataError
from .files import client_files, read_column, read_table, resolve_path
from .imagefolder import client_folders, dirichlet_partitions, folder_layout, read_imagefolder, split_images
from .images import digits_client
from .synthetic import synthetic_titles
from .text import TextSplit, build_vocab, encode_split, pool_counts, read_vocab, split_titles, usable_titles

DATASETS = ("synthetic", "text", "digits", "images")
TEXT_DATASETS = ("synthetic", "text")
LOCAL = -1  # partition id of a device that holds its own file or image folder (deployment)


@dataclass(frozen=True)
class Source:
    """The run-config keys that say where a client's data is and how it is shaped."""

    dataset: str
    data_path: str = ""
    text_column: str = "title"
    client_column: str = ""
    num_clients: int = 7
    seed: int = 0
    test_fraction: float = 0.2
    max_title_words: int = 24
    min_count: int = 2
    vocab_path: str = ""
    dirichlet_alpha: float = 0.5
    class_names: tuple[str, ...] = ()  # images: the federation's classes; () = the class folders a client sees

    @property
    def kind(self) -> str:
        return "text" if self.dataset in TEXT_DATASETS else "image"


@lru_cache(maxsize=4)
def _column_partitions(path: Path, client_column: str, text_column: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(client value, its texts) per distinct value of ``client_column``, in flwr-datasets' order."""
    from flwr_datasets.partitioner import NaturalIdPartitioner

    table = read_table(path)
    for column in (client_column, text_column):
        if column not in table.column_names:
            key = "client-column" if column == client_column else "text-column"
            raise DataError(f"{path} has no column {column!r} (columns: {', '.join(table.column_names)}): set {key}")
    table = table.filter(lambda row: str(row[client_column] or "").strip() != "", keep_in_memory=True)
    if table.num_rows == 0:
        raise DataError(f"{path} has no row with a value in client-column {client_column!r}")
    partitioner = NaturalIdPartitioner(partition_by=client_column)
    partitioner.dataset = table
    with contextlib.redirect_stderr(io.StringIO()):  # the partitioner's own progress bar
        return tuple((str(partitioner.partition_id_to_natural_id[i]),
                      tuple("" if t is None else str(t) for t in partitioner.load_partition(i)[text_column]))
                     for i in range(partitioner.num_partitions))


def _raw_titles(src: Source, partition_id: int, node_path: str, node_name: str) -> tuple[str, list[str], str]:
    """(client name, raw titles, where they came from) for one node."""
    if partition_id == LOCAL:
        path = device_path(node_path)
        return node_name or path.stem, read_column(path, src.text_column), str(path)
    if src.dataset == "synthetic":
        name, titles = synthetic_titles(src.num_clients)[partition_id]
        return name, list(titles), "synthetic"
    path = resolve_path(src.data_path)
    if path.is_dir():
        files = client_files(path)
        if len(files) != src.num_clients:
            raise DataError(f"folder {path} holds {len(files)} client files; set num-clients={len(files)}")
        file = files[partition_id]
        return file.stem, read_column(file, src.text_column), str(file)
    if not src.client_column:
        raise DataError(f"data-path {path} is one file for {src.num_clients} simulated clients: set client-column "
                        "to the column that names each row's client, or give a folder with one file per client")
    parts = _column_partitions(path, src.client_column, src.text_column)
    if len(parts) != src.num_clients:
        raise DataError(f"{path} has {len(parts)} distinct values in client-column {src.client_column!r}; set "
                        f"num-clients={len(parts)}")
    name, titles = parts[partition_id]
    return name, list(titles), f"{path} ({src.client_column}={name!r})"


def device_path(node_path: str) -> Path:
    """A device's own file (its node config data-path): a file, never a folder."""
    path = resolve_path(node_path, "this device's data-path")
    if path.is_dir():
        raise DataError(f"this device's data-path {path} is a folder: point it at the device's own file")
    return path


def for_device(err: DataError, node_path: str, node_name: str) -> DataError:
    """A device's data error, prefixed with the device's name so the server's one line says whose it is."""
    return DataError(f"device {node_name or Path(node_path).stem or '(unnamed)'!r}: {err}")


@lru_cache(maxsize=64)
def text_split(src: Source, partition_id: int, node_path: str = "", node_name: str = "") -> TextSplit:
    """This node's cleaned titles, split by the run seed: derived from its own data alone."""
    try:
        name, raw, origin = _raw_titles(src, partition_id, node_path, node_name)
    except DataError as err:
        if partition_id != LOCAL:
            raise
        raise for_device(err, node_path, node_name) from None
    titles = usable_titles(raw, src.max_title_words)
    if len(titles) < 2:
        raise DataError(f"client {name!r} ({origin}) has {len(titles)} usable titles (two or more words after "
                        f"cleaning, in column {src.text_column!r}); it needs at least 2: give it more data or set "
                        "text-column")
    return split_titles(name, titles, src.test_fraction, src.seed)


def node_image_data(src: Source, partition_id: int, node_path: str = "", node_name: str = "") -> ClientData:
    """This node's images: a digits partition, or its own image folder (see ``images_client``)."""
    if src.dataset == "digits":
        if partition_id == LOCAL:
            raise DataError("digits is a built-in simulation data set: give each SuperNode partition-id and "
                            "num-partitions, not data-path")
        return digits_client(partition_id, src.num_clients, src.seed, src.test_fraction, src.dirichlet_alpha)
    if src.dataset == "images":
        return images_client(src, partition_id, node_path, node_name)
    raise DataError(f"unknown dataset {src.dataset!r}: choose one of {', '.join(DATASETS)}")


@lru_cache(maxsize=8)
def images_client(src: Source, partition_id: int, node_path: str = "", node_name: str = "") -> ClientData:
    """This node's images, split by the run seed: its own imagefolder (a device's data-path, or a
    client folder in simulation) or its Dirichlet share of one imagefolder (simulation)."""
    if partition_id == LOCAL:
        device = node_name or Path(node_path).name or "(unnamed)"
        try:
            folder = resolve_path(node_path, "this device's data-path")
            if not folder.is_dir():
                raise DataError(f"data-path {folder} is a file: point it at this device's image folder (one "
                                "sub-folder per class)")
            if folder_layout(folder) == "clients":
                raise DataError(f"data-path {folder} holds one folder per client: point it at this device's own "
                                "image folder (one sub-folder per class)")
            return split_images(node_name or folder.name, str(folder), *read_imagefolder(folder, src.class_names),
                                src.seed, src.test_fraction)
        except DataError as err:
            raise DataError(f"device {device!r}: {err}") from None
    folder = resolve_path(src.data_path)
    if not folder.is_dir():
        raise DataError(f"data-path {folder} is a file: dataset 'images' reads a folder with one sub-folder per class, "
                        "or one such folder per client")
    if folder_layout(folder) == "clients":
        own = client_folders(folder, src.num_clients)[partition_id]
        return split_images(own.name, str(own), *read_imagefolder(own, src.class_names), src.seed, src.test_fraction)
    x, y, classes = read_imagefolder(folder, src.class_names)
    rows = torch.from_numpy(dirichlet_partitions(folder, src.class_names, src.num_clients,
                                                 src.dirichlet_alpha)[partition_id])
    return split_images(f"images-{partition_id}", f"{folder}, Dirichlet partition {partition_id}", x[rows], y[rows],
                        classes, src.seed, src.test_fraction)


def image_federation(clients: list[ClientData]) -> tuple[int, tuple[int, ...]]:
    """(number of classes, (channels, height, width)) the image clients agree on; DataError if not."""
    if len({c.classes for c in clients}) > 1:
        seen = "; ".join(f"{c.name}: {', '.join(c.classes)}" for c in clients)
        raise DataError(f"clients see different class folders ({seen}): set class-names to the federation's classes, "
                        "comma-separated")
    shapes = {tuple(c.x_train.shape[1:]) for c in clients}
    if len(shapes) > 1:
        seen = "; ".join(f"{c.name}: {'x'.join(map(str, c.x_train.shape[1:]))}" for c in clients)
        raise DataError(f"clients' images differ in shape (channels x height x width: {seen}): give every client "
                        "images of one size and one mode (all RGB or all grayscale)")
    return len(clients[0].classes), shapes.pop()


def client_order(dataset: str, keys: list[tuple[int, int, str]]) -> list[int]:
    """The server's numbering of clients, from (partition id or LOCAL, training rows, name) each.

    Digits keeps its Dirichlet partition ids; every other source is numbered largest first, ties by
    name (as the paper numbers Medium's publications), so it does not matter where a client's data
    came from. Returns positions of ``keys`` in client-number order.
    """
    if dataset == "digits":
        return sorted(range(len(keys)), key=lambda i: keys[i][0])
    return sorted(range(len(keys)), key=lambda i: (-keys[i][1], keys[i][2]))


@dataclass
class FederatedData:
    kind: str  # "text" | "image"
    num_classes: int  # text: vocabulary size including <pad> and <unk>
    clients: list[ClientData]  # index = client number
    vocab: list[str] | None
    input_shape: tuple[int, ...] | None = None  # images: (channels, height, width), what the CNN is built for


def federation_vocab(src: Source, splits: list[TextSplit]) -> list[str]:
    """What the vocabulary round agrees on: the shared file, or the words of the pooled counts."""
    if src.vocab_path:
        return read_vocab(resolve_path(src.vocab_path, "vocab-path"))
    return build_vocab(pool_counts(s.word_counts() for s in splits), src.min_count)


@lru_cache(maxsize=8)
def load_federated(src: Source) -> FederatedData:
    """Every client's data as each would derive it, with the agreed vocabulary (simulation tools:
    pre-flight checks, calibration, benchmarks). Cached; treat the tensors as read-only."""
    if src.kind == "text":
        splits = [text_split(src, pid) for pid in range(src.num_clients)]
        vocab = federation_vocab(src, splits)
        clients = [encode_split(s, vocab, src.max_title_words) for s in splits]
        num_classes, input_shape = len(vocab), None
    else:
        clients, vocab = [node_image_data(src, pid) for pid in range(src.num_clients)], None
        num_classes, input_shape = image_federation(clients)
    names = [c.name for c in clients]
    if len(set(names)) != len(names):
        raise DataError(f"two clients share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}): "
                        "client names must be unique")
    order = client_order(src.dataset, [(pid, c.n_train_rows, c.name) for pid, c in enumerate(clients)])
    return FederatedData(src.kind, num_classes, [clients[i] for i in order], vocab, input_shape)
