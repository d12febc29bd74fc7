"""Checkpoints after every round, and resuming a run from the last one.

A checkpoint is a saved-model folder (model_files: safetensors + model.json) whose metadata also
holds everything the server needs to go on: the round, the run config, the roster with its
allocation, the strategy's history and counters, the secure rounds and drop-outs. It is written
under a temporary name and renamed into place, then ``checkpoints/latest`` is replaced atomically,
so a crash never leaves a half-written checkpoint. Training seeds, extraction and participation
samples depend only on (seed, round, client), so nothing else is needed to continue exactly.

A lock file holds the writing process's PID and host: a resume refuses to start while that process
lives (a stopped simulation may leave `flwr-simulation` running).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hasa_flwr.data.atomic import write_text_atomic
from hasa_flwr.method.allocation import Allocation
from hasa_flwr.method.model_files import load_model, save_model

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOCK = "lock"
KEEP = 2  # checkpoints kept: the latest and the one before (the latest may be the round a crash hit)


class ResumeError(ValueError):
    """A run cannot be resumed from this folder; the message says why and what to do."""


@dataclass
class Checkpoint:
    round: int
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def progress(self) -> dict[str, Any]:
        return self.meta["checkpoint"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) writes nothing more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def claim(run_dir: Path) -> None:
    """Make this process the folder's writer; ResumeError if a live process on this host holds it."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK
    if lock.is_file():
        try:
            pid_text, host = lock.read_text().split()
            pid = int(pid_text)
        except ValueError:
            pid, host = -1, ""
        if host == socket.gethostname() and pid != os.getpid() and _alive(pid):
            raise ResumeError(f"{run_dir} is still being written by process {pid} (a run that has not stopped): "
                              f"stop it first (flwr stop <run-id>, or kill {pid}), then resume")
    write_text_atomic(lock, f"{os.getpid()} {socket.gethostname()}\n")


def release(run_dir: Path) -> None:
    """The run is complete (results.json written): this process no longer writes the folder."""
    lock = Path(run_dir) / CHECKPOINTS / LOCK
    if lock.is_file() and lock.read_text().split()[:1] == [str(os.getpid())]:
        lock.unlink()


def write_checkpoint(run_dir: Path, server_round: int, state: dict[str, torch.Tensor], meta: dict[str, Any],
                     progress: dict[str, Any]) -> Path:
    """checkpoints/round-<r>/ (weights + metadata with ``progress``), then the ``latest`` pointer."""
    root = Path(run_dir) / CHECKPOINTS
    folder = save_model(root / f"round-{server_round:04d}", state, {**meta, "checkpoint": progress})
    write_text_atomic(root / LATEST, folder.name + "\n")
    for old in sorted(root.glob("round-*"))[:-KEEP]:
        if old.is_dir() and old.name != folder.name:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    return folder


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The last complete checkpoint of a run folder."""
    root = Path(run_dir).expanduser() / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.is_file():
        raise ResumeError(f"no checkpoint in {run_dir}: resume takes the folder of a run that finished at least one "
                          "round (it holds checkpoints/latest), i.e. <results-dir>/<run-id>")
    saved = load_model(root / pointer.read_text().strip())
    if "checkpoint" not in saved.meta:
        raise ResumeError(f"{root / pointer.read_text().strip()} is a model, not a checkpoint")
    return Checkpoint(int(saved.meta["checkpoint"]["round"]), saved.state, saved.meta)


def allocation_record(allocation: Allocation) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(allocation).items()}


def allocation_from_record(record: dict[str, Any]) -> Allocation:
    arrays = {"widths", "ranks", "scores"}
    return Allocation(**{k: (np.asarray(v, dtype=np.float64) if k in arrays else v) for k, v in record.items()})
