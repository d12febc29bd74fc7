"""Warm devices: a device prepares its own data once per (file, settings) and keeps it on disk.

In deployment every message runs in a fresh process; without this cache each one re-reads and
re-encodes the device's file (importing HF `datasets` and pandas on the way). Two stages, keyed by
what shapes them: (file sha256, text column, seed, test fraction, words per title, name) -> the
split titles; + the agreed vocabulary's hash -> the tensors. The file's name is in the key too (its
suffix picks the reader, its stem is the default client name), and so is ``FORMAT``: a change to how
titles are cleaned, split or stored must bump it. A changed file or vocabulary simply gets new keys. Entries are written to a temp file and renamed, so a crash never leaves half a file.

Simulated clients that share one file (a client column) keep their splits here too: partitioning
the file takes HF `datasets` and flwr-datasets (~2 s of imports), which every run's Ray actors would
otherwise pay again in their first message.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from .atomic import atomic_path
from .clients import LOCAL, Source, device_path, for_device, text_split
from .core import ClientData, DataError
from .files import resolve_path
from .text import TextSplit, encode_split, vocab_hash


FORMAT = 2  # 2: keys name the file (two identical files under different names once shared an entry)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hasa-flwr"


def device_file(node_path: str, node_name: str) -> Path:
    """The device's own file; an error names the device, as text_split's do."""
    try:
        return device_path(node_path)
    except DataError as err:
        raise for_device(err, node_path, node_name) from None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(path: Path, shape: list) -> str:
    """A cache entry's name from everything that shapes it."""
    return hashlib.sha256(json.dumps([FORMAT, file_digest(path), path.name, *shape]).encode()).hexdigest()[:24]


def _split_key(src: Source, path: Path, name: str) -> str:
    return _key(path, [src.text_column, src.seed, src.test_fraction, src.max_title_words, name])


def _write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def _stored_split(entry: Path, make: Callable[[], TextSplit]) -> TextSplit:
    if entry.is_file():
        raw = json.loads(entry.read_text())
        return TextSplit(raw["name"], tuple(map(tuple, raw["train"])), tuple(map(tuple, raw["test"])))
    split = make()
    _write(entry, lambda tmp: Path(tmp).write_text(json.dumps(
        {"name": split.name, "train": split.train, "test": split.test})))
    return split


def cached_split(src: Source, node_path: str, node_name: str, cache_dir: Path) -> TextSplit:
    """This device's split titles, from the cache when its file has not changed."""
    path = device_file(node_path, node_name)
    return _stored_split(cache_dir / f"split-{_split_key(src, path, node_name)}.json",
                         lambda: text_split.__wrapped__(src, LOCAL, node_path, node_name))  # never the memo


@lru_cache(maxsize=64)
def cached_partition(src: Source, partition_id: int, cache_dir: Path) -> TextSplit:
    """A simulated client's split titles; from the cache when they come from one shared file. Memoised
    per process like ``text_split``: a warm actor answers several messages per client and run, and
    would otherwise hash the file and parse the entry for each."""
    if src.dataset == "synthetic" or not src.client_column:  # nothing heavy to spare (or an error to raise)
        return text_split(src, partition_id)
    path = resolve_path(src.data_path)
    if not path.is_file():  # one file per client: read directly
        return text_split(src, partition_id)
    key = _key(path, [src.client_column, src.text_column, src.num_clients, src.seed, src.test_fraction,
                      src.max_title_words, partition_id])
    return _stored_split(cache_dir / f"partition-{key}.json", lambda: text_split.__wrapped__(src, partition_id))


def cached_tensors(src: Source, node_path: str, node_name: str, vocab: list[str], cache_dir: Path) -> ClientData:
    """This device's tensors under the agreed vocabulary: read, not rebuilt, by every later message."""
    path = device_file(node_path, node_name)
    entry = cache_dir / f"tensors-{_split_key(src, path, node_name)}-{vocab_hash(vocab)}.pt"
    if entry.is_file():
        t = torch.load(entry, weights_only=True)
        return ClientData(t["name"], t["x_train"], t["y_train"], t["x_test"], t["y_test"])
    data = encode_split(cached_split(src, node_path, node_name, cache_dir), vocab, src.max_title_words)
    _write(entry, lambda tmp: torch.save({"name": data.name, "x_train": data.x_train, "y_train": data.y_train,
                                          "x_test": data.x_test, "y_test": data.y_test}, tmp))
    return data
