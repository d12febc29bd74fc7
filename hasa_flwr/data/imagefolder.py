"""Users' own images through HF ``imagefolder``: one sub-folder per class, labels by agreed names.

A label is the index of its class folder's name in the federation's class list (run config
``class-names``), not in the classes one client happens to hold, so a client that lacks some
classes labels the rest as everyone else does. Everything here runs on the device that holds
the folder; errors name the folder and the fix.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .core import ClientData, DataError, split_indices
from .images import dirichlet_rows

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # -> "L"; the rest -> "RGB"
MAX_MIN_PARTITION = 10  # a Dirichlet partition's floor (digits'), lowered for small folders


@lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """The file endings HF ``imagefolder`` reads (what PIL can open)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(s.lower() for s in ImageFolder.EXTENSIONS)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, in name order; hidden files are ignored."""
    suffixes = image_suffixes()
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in suffixes)


def folder_layout(folder: Path) -> str:
    """"classes" if ``folder`` is one imagefolder (its sub-folders hold images), "clients" if it
    holds one imagefolder per client (their sub-folders do)."""
    subs = _subfolders(folder)
    if any(_images_in(s) for s in subs):
        return "classes"
    if any(_images_in(c) for s in subs for c in _subfolders(s)):
        return "clients"
    raise DataError(f"folder {folder} holds no images (.png, .jpg, ...) in class sub-folders: give it one sub-folder "
                    "per class holding that class's images, or (simulation) one such folder per client")


def client_folders(folder: Path, num_clients: int) -> list[Path]:
    """One imagefolder per client, in name order."""
    subs = _subfolders(folder)
    if len(subs) != num_clients:
        raise DataError(f"folder {folder} holds {len(subs)} client folders; set num-clients={len(subs)}")
    return subs


def _decode(folder: Path, files: list[Path]) -> tuple[list, list[str]]:
    """(PIL images, their class folder names) through HF ``imagefolder`` (no cache left in $HOME).

    ``data_files``, not ``data_dir``: with a directory HF takes class folders named train, test,
    val... for splits."""
    import datasets

    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="hasa-hf-") as cache:
            table = datasets.load_dataset("imagefolder", data_files=[str(f) for f in files], split="train",
                                          cache_dir=cache, keep_in_memory=True, drop_labels=False, drop_metadata=True)
            hf_names = table.features["label"].names
            return list(table["image"]), [hf_names[i] for i in table["label"]]
    except Exception as err:  # a broken file surfaces as one of many types; all mean the same to a user
        reason = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read the images in {folder} ({reason}): check that every file there is an "
                        "image PIL can open") from err


def _file_of(image, folder: Path) -> str:
    """Where a decoded image came from, relative to its folder (for messages)."""
    path = Path(getattr(image, "filename", "") or "?")
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name


def _to_tensor(folder: Path, images: list) -> torch.Tensor:
    """(N, C, H, W) floats in [0, 1], all in the first image's colour mode (RGB or grayscale L)."""
    mode = "L" if images[0].mode in GRAY_MODES else "RGB"
    width, height = images[0].size
    if min(width, height) < 2:
        raise DataError(f"images in {folder} are {width}x{height} pixels: the CNN needs at least 2x2; use larger "
                        "images")
    for img in images:
        if img.size != (width, height):
            first, other = (_file_of(i, folder) for i in (images[0], img))
            raise DataError(f"images in {folder} differ in size ({first} is {width}x{height}, {other} is "
                            f"{img.size[0]}x{img.size[1]} pixels, width x height): resize every image of the "
                            f"federation to one size, e.g. {width}x{height}")
    pixels = torch.from_numpy(np.stack([np.asarray(img.convert(mode), dtype=np.uint8) for img in images]))
    pixels = pixels.unsqueeze(1) if mode == "L" else pixels.permute(0, 3, 1, 2)
    return pixels.to(torch.float32).div_(255.0).contiguous()


@lru_cache(maxsize=4)
def read_imagefolder(folder: Path, class_names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(images, labels, class names) of one imagefolder.

    The class names are ``class_names`` or, if empty, the sorted class folders seen here (right
    only when every client has every class folder). Cached: treat the tensors as read-only.
    """
    if _images_in(folder):
        raise DataError(f"{folder} holds images outside class folders ({_images_in(folder)[0].name}): move each "
                        "image into the sub-folder named after its class")
    classes = _subfolders(folder)
    names = class_names or tuple(c.name for c in classes)
    unknown = [c.name for c in classes if c.name not in names]
    if unknown:
        raise DataError(f"{folder} has class folder {unknown[0]!r}, which is not in class-names ({', '.join(names)}): "
                        "add it to class-names (the same list for every client and the server) or remove the folder")
    files = [f for c in classes for f in _images_in(c)]
    if not files:
        raise DataError(f"folder {folder} holds no images (.png, .jpg, ...) in class sub-folders: put each class's "
                        "images in a sub-folder named after the class")
    images, folders = _decode(folder, files)
    labels = torch.tensor([names.index(f) for f in folders], dtype=torch.int64)
    return _to_tensor(folder, images), labels, names


def split_images(name: str, origin: str, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...], seed: int,
                 test_fraction: float) -> ClientData:
    """One client's images, split by the run seed."""
    if len(y) < 2:
        raise DataError(f"client {name!r} ({origin}) has {len(y)} image(s); it needs at least 2 for a train/test "
                        "split: give it more images")
    train, test = (torch.from_numpy(i) for i in split_indices(len(y), test_fraction, seed, name))
    return ClientData(name, x[train], y[train], x[test], y[test], classes)


@lru_cache(maxsize=4)
def dirichlet_partitions(folder: Path, class_names: tuple[str, ...], num_clients: int,
                         alpha: float) -> tuple[np.ndarray, ...]:
    """Rows of each client's label-skewed share of one imagefolder (simulation; fixed partition seed).

    Each partition gets at least 10 images, or half a fair share in a small folder, never fewer
    than the 2 a train/test split needs."""
    _, labels, _ = read_imagefolder(folder, class_names)
    min_size = min(MAX_MIN_PARTITION, max(2, len(labels) // (2 * num_clients)))
    try:
        return dirichlet_rows(labels.numpy(), num_clients, alpha, min_size)
    except ValueError as err:
        raise DataError(f"cannot split the {len(labels)} images in {folder} into {num_clients} Dirichlet partitions "
                        f"of >= {min_size} images ({err}): use a smaller num-clients, a larger dirichlet-alpha or "
                        "more images") from err
