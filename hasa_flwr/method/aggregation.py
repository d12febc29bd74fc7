"""Overlap-aware weighted averaging of sub-model updates into the supernet.

Pure torch: an update is the client's unit indices, its sub-tensors (in subnet layout) and its
weight n_i. Every client's contribution is written with one vectorised ``index_put_`` per
parameter; there is no loop over entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hasa_flwr.method.subnet import Indices, Spec, expected_shapes, open_grid, positions

AGGREGATIONS = ("full", "selective")


@dataclass
class Update:
    indices: Indices
    params: dict[str, torch.Tensor]
    weight: float


def check_update(update: Update, state: dict[str, torch.Tensor], spec: Spec, sizes: dict[str, int]) -> None:
    """Raise ValueError if an update does not fit the units it was given, or is not finite."""
    if not (math.isfinite(update.weight) and update.weight > 0):
        raise ValueError(f"weight must be a positive number, got {update.weight}")
    want = expected_shapes(state, spec, update.indices, sizes)
    if set(update.params) != set(want):
        raise ValueError(f"parameter names differ: missing {sorted(set(want) - set(update.params))}, "
                         f"unexpected {sorted(set(update.params) - set(want))}")
    for name, shape in want.items():
        t = update.params[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"'{name}' has shape {tuple(t.shape)}, expected {shape}")
        if not torch.isfinite(t).all():
            raise ValueError(f"'{name}' contains NaN or Inf")


def aggregate(state: dict[str, torch.Tensor], updates: list[Update], spec: Spec, sizes: dict[str, int],
              mode: str = "full") -> dict[str, torch.Tensor]:
    """New supernet parameters.

    ``full`` (paper): every client counts for every coordinate with weight n_i; coordinates it did
    not train contribute the broadcast value. ``selective``: per coordinate, the weighted mean over
    the clients that trained it; coordinates nobody trained keep their value. With every width 1
    both are FedAvg.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation '{mode}': choose one of {', '.join(AGGREGATIONS)}")
    if not updates:
        return {k: v.clone() for k, v in state.items()}
    total = float(sum(u.weight for u in updates))
    out = {}
    for name, axes in spec.items():
        old = state[name].to(torch.float64)
        acc = torch.zeros_like(old)
        cover = torch.zeros_like(old)
        for u in updates:
            grid = open_grid(positions(axes, u.indices, sizes), old.shape)
            value = u.params[name].to(torch.float64)
            acc.index_put_(grid, value * u.weight, accumulate=True)
            cover.index_put_(grid, torch.full_like(value, u.weight), accumulate=True)
        if mode == "full":
            new = (acc + (total - cover) * old) / total
        else:
            new = torch.where(cover > 0, acc / cover.clamp_min(1e-300), old)
        out[name] = new.to(state[name].dtype)
    return out
