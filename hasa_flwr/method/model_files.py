"""The saved-model format: a trained supernet, or one device's subnet, with all it needs to be used.

A model is a folder holding ``model.safetensors`` (the weights) and ``model.json`` (what rebuilds
and uses them: model kind and full sizes, the width these weights have, the vocabulary or class
names and input shape, every client's name, width and cap, the run config, the hasa-flwr version,
and each tensor's shape and the weights' sha256, so a mismatch between the two files is caught).
It is written under a temporary name and renamed into place, so a reader never sees half a model.

A run leaves ``<results-dir>/<run-id>/model/`` (the supernet) and ``clients/<name>/`` (each
client's width-w_i prefix subnet, sliced from the final supernet); a device in deployment stores
its own subnet under its node config ``model-dir``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hasa_flwr.data.atomic import atomic_path
from hasa_flwr.method.models import build_model, sub_sizes

FORMAT, FORMAT_VERSION = "hasa-flwr-model", 1
WEIGHTS, META = "model.safetensors", "model.json"


class ModelFileError(ValueError):
    """A saved model is missing or inconsistent; the message says what and how to fix it."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("hasa-flwr")
    except PackageNotFoundError:  # an unpacked FAB on a SuperNode
        return "unknown"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and bytes: the same weights always give the same digest."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def model_meta(*, kind: str, sizes: dict[str, int], num_classes: int, scaler: bool, width: float,
               input_shape: tuple[int, ...] | None, vocab: list[str] | None, class_names: list[str] | None,
               max_title_words: int | None, clients: list[dict[str, Any]], run_config: dict[str, Any],
               run_id: int | None, client: str | None = None) -> dict[str, Any]:
    """Everything but the weights. ``width`` < 1 marks a device's subnet (``client`` names it)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "hasa_flwr_version": version(),
            "model": {"kind": kind, "sizes": dict(sizes), "num_classes": int(num_classes), "scaler": bool(scaler),
                      "input_shape": list(input_shape) if input_shape else None},
            "width": float(width), "client": client, "vocab": vocab, "class_names": class_names,
            "max_title_words": max_title_words, "clients": clients, "run_config": run_config, "run_id": run_id}


def save_model(folder: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``folder`` atomically (temp folder + rename; an older model there is replaced)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {**meta, "tensors": {k: list(v.shape) for k, v in state.items()}, "weights_sha256": weights_digest(state)}
    with atomic_path(folder, folder=True) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=1))
    return folder


@dataclass
class SavedModel:
    folder: Path
    meta: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def width(self) -> float:
        return float(self.meta["width"])

    def build(self, width: float | None = None) -> torch.nn.Module:
        """The model with these weights; ``width`` slices a narrower prefix of a supernet."""
        m = self.meta["model"]
        shape = tuple(m["input_shape"]) if m["input_shape"] else None
        if width is None or width == self.width:
            model = build_model(m["kind"], m["num_classes"], m["sizes"], self.width, scaler=m["scaler"],
                                input_shape=shape)
            model.load_state_dict(self.state)
            return model.eval()
        if not 0.0 < width <= self.width:
            raise ModelFileError(f"width {width:g} is outside (0, {self.width:g}]: this model holds width "
                                 f"{self.width:g}; choose a width in that range")
        from hasa_flwr.method.subnet import prefix_state

        full = build_model(m["kind"], m["num_classes"], m["sizes"], 1.0, scaler=m["scaler"], input_shape=shape)
        if self.width != 1.0:
            raise ModelFileError(f"{self.folder} is a width-{self.width:g} subnet: slice other widths from the run's "
                                 "supernet (its model/ folder)")
        sub = build_model(m["kind"], m["num_classes"], m["sizes"], width, scaler=m["scaler"], input_shape=shape)
        sub.load_state_dict(prefix_state(self.state, full.slicing_spec(), m["sizes"], width))
        return sub.eval()


def client_folder_name(name: str) -> str:
    """A client's name as a folder name (path separators and a leading dot would escape the folder)."""
    safe = name.replace("/", "_").replace("\\", "_")
    return "_" + safe if safe.startswith(".") or not safe else safe


def resolve_model_folder(path: str | Path, client: str | None = None) -> Path:
    """A model folder from a model folder, a run folder (its supernet, or ``client``'s subnet) or a
    ``model.safetensors`` file."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in (WEIGHTS, META):
        path = path.parent
    if not path.exists():
        raise ModelFileError(f"{path} not found: pass a run folder (<results-dir>/<run-id>) or a model folder")
    if client is not None:
        run = path if (path / "clients").is_dir() else path.parent.parent if path.parent.name == "clients" else path
        folder = run / "clients" / client_folder_name(client)
        if not (folder / META).is_file():
            known = sorted(p.name for p in (run / "clients").iterdir()) if (run / "clients").is_dir() else []
            raise ModelFileError(f"client {client!r} is not in {run}" + (f" (clients: {', '.join(known)})" if known
                                 else " (it has no clients/ folder)") + ": pass one of its client names or --width")
        return folder
    if (path / META).is_file():
        return path
    if (path / "model" / META).is_file():
        return path / "model"
    raise ModelFileError(f"{path} holds no saved model ({META} + {WEIGHTS}): pass the folder of a finished run "
                         "(a run with save-model=true saves one next to results.json) or a model folder")


def load_model(path: str | Path, client: str | None = None) -> SavedModel:
    """Read and check a saved model: the metadata must describe exactly the weights beside it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = resolve_model_folder(path, client)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{folder / META} is unreadable ({type(err).__name__}): re-export or re-run") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{folder / META} is not a {FORMAT} file")
    if not (folder / WEIGHTS).is_file():
        raise ModelFileError(f"{folder} has {META} but no {WEIGHTS}: the model is incomplete; re-run or copy both files")
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise ModelFileError(f"{folder / WEIGHTS} is unreadable ({err}): copy the file again") from None
    shapes = {k: list(v.shape) for k, v in state.items()}
    if shapes != meta.get("tensors") or weights_digest(state) != meta.get("weights_sha256"):
        raise ModelFileError(f"{folder / META} does not match {WEIGHTS} (tensor names, shapes or sha256 differ): the "
                             "two files come from different models; copy them together")
    m = meta["model"]
    expected = sub_sizes(float(meta["width"]), m["sizes"])
    model = build_model(m["kind"], m["num_classes"], m["sizes"], float(meta["width"]), scaler=m["scaler"],
                        input_shape=tuple(m["input_shape"]) if m["input_shape"] else None)
    if {k: list(v.shape) for k, v in model.state_dict().items()} != shapes:
        raise ModelFileError(f"{folder}: the weights do not fit a {m['kind']} of sizes {expected}: the metadata was "
                             "edited or belongs to another model")
    return SavedModel(folder, meta, state)
