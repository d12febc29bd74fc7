"""What a run leaves besides results.json: the trained supernet and every client's own subnet.

Both in the saved-model format of model_files.py: ``<run-dir>/model/`` (the supernet) and
``<run-dir>/clients/<name>/`` (each client's width-w_i subnet, sliced from the final supernet:
the model it trained and would deploy; its prefix, or its own units under extraction ``own``).
``init-from`` starts a run from a saved supernet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hasa_flwr.federation.config import Settings
from hasa_flwr.method.model_files import SavedModel, client_folder_name, load_model, model_meta, save_model
from hasa_flwr.method.subnet import Spec, deployed_units, extract

CLIENTS = "clients"


def class_names(settings: Settings) -> list[str] | None:
    if settings.dataset == "digits":
        return [str(d) for d in range(10)]
    return [n for n in settings.class_names.split(",") if n] or None


def meta_for(settings: Settings, *, num_classes: int, input_shape: tuple[int, ...] | None, vocab: list[str] | None,
             clients: list[dict[str, Any]], run_id: int | None, width: float = 1.0,
             client: str | None = None) -> dict[str, Any]:
    return model_meta(kind=settings.model, sizes=settings.sizes, num_classes=num_classes, scaler=settings.scaler,
                      width=width, input_shape=input_shape, vocab=vocab, class_names=class_names(settings),
                      max_title_words=settings.max_title_words if vocab is not None else None, clients=clients,
                      run_config=settings.to_dict(), run_id=run_id, client=client)


def save_run_models(run_dir: Path, settings: Settings, state: dict[str, torch.Tensor], spec: Spec, *,
                    num_classes: int, input_shape: tuple[int, ...] | None, vocab: list[str] | None,
                    clients: list[dict[str, Any]], run_id: int | None) -> Path:
    """The supernet, then each client's subnet; returns the supernet's folder."""
    common = {"num_classes": num_classes, "input_shape": input_shape, "vocab": vocab, "clients": clients,
              "run_id": run_id}
    folder = save_model(run_dir / "model", state, meta_for(settings, **common))
    units = deployed_units(settings.extraction, {c["partition_id"]: c["width"] for c in clients}, settings.sizes)
    for c in clients:
        save_model(run_dir / CLIENTS / client_folder_name(c["name"]),
                   extract(state, spec, units[c["partition_id"]], settings.sizes),
                   meta_for(settings, **common, width=c["width"], client=c["name"]))
    return folder


def init_from(settings: Settings, num_classes: int, input_shape: tuple[int, ...] | None,
              vocab: list[str] | None) -> SavedModel:
    """A saved supernet to start from; anything that does not fit this run is one clear error."""
    saved = load_model(settings.init_from)
    m = saved.meta["model"]
    problems = []
    if saved.width != 1.0:
        problems.append(f"it is a width-{saved.width:g} subnet, not a supernet (use the run's model/ folder)")
    if m["kind"] != settings.model or m["sizes"] != settings.sizes:
        problems.append(f"its model is {m['kind']} {m['sizes']}, this run's {settings.model} {settings.sizes}")
    if m["num_classes"] != num_classes:
        problems.append(f"it has {m['num_classes']} classes/words, this run {num_classes}")
    if vocab is not None and saved.meta.get("vocab") != vocab:
        problems.append("its vocabulary differs from the one this federation agreed on (pass its words as vocab-path)")
    if (tuple(m["input_shape"]) if m["input_shape"] else None) != (input_shape if m["kind"] == "cnn" else None):
        problems.append(f"its input shape {m['input_shape']} differs from the data's {input_shape}")
    if problems:
        raise ValueError(f"init-from {saved.folder} does not fit this run: {'; '.join(problems)}")
    return saved
