"""Which units of the supernet a client gets, and how to cut them out and put them back.

A model describes its parameters with a *slicing spec*: for every parameter, one entry per axis,
either ``None`` (the axis never scales: vocabulary, classes, input channels) or an :class:`Axis`
naming the scalable dimension it follows. Everything here is pure torch, so slicing can be tested
without Flower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EXTRACTIONS = ("prefix", "rolling", "random", "ordered", "own")


@dataclass(frozen=True)
class Axis:
    """An axis that follows scalable dimension ``dim`` of full size K.

    ``blocks``: the axis holds ``blocks`` consecutive copies of the K units (the 4 LSTM gates).
    ``inner``: every unit spans ``inner`` consecutive entries (a conv channel flattened over
    its spatial positions before a linear layer).
    """

    dim: str
    blocks: int = 1
    inner: int = 1


Spec = dict[str, tuple[Axis | None, ...]]
Indices = dict[str, torch.Tensor]


def num_units(width: float, size: int) -> int:
    """Units kept at ``width``: max(1, floor(width * K)) (paper). The epsilon keeps 0.3*10 at 3."""
    return max(1, min(size, math.floor(width * size + 1e-9)))


def sub_sizes(width: float, sizes: dict[str, int]) -> dict[str, int]:
    """Size of every scalable dimension in the width-``width`` subnet."""
    return {dim: num_units(width, k) for dim, k in sizes.items()}


def select_units(
    extraction: str,
    width: float,
    sizes: dict[str, int],
    *,
    server_round: int = 0,
    seed: int = 0,
    client: int = 0,
) -> Indices:
    """Global unit indices (sorted) a client trains, per scalable dimension.

    ``prefix`` and ``ordered`` take units [0, k) (HeteroFL, HASA, FjORD); ``rolling`` takes
    ``(arange(k) + round) mod K`` (FedRolex); ``random`` takes a k-subset drawn from a generator
    seeded by (seed, round, client, dimension) (Federated Dropout), so runs are reproducible.
    ``own`` depends on every client's width at once: see ``own_units``.
    """
    if extraction == "own":
        raise ValueError("extraction 'own' gives every client units that depend on all widths: use own_units")
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction '{extraction}': choose one of {', '.join(EXTRACTIONS)}")
    out: Indices = {}
    for d, (dim, size) in enumerate(sorted(sizes.items())):
        k = num_units(width, size)
        if extraction == "rolling":
            idx = torch.sort((torch.arange(k) + server_round) % size).values
        elif extraction == "random":
            gen = torch.Generator().manual_seed(hash_seed(seed, server_round, client, d))
            idx = torch.sort(torch.randperm(size, generator=gen)[:k]).values
        else:
            idx = torch.arange(k)
        out[dim] = idx
    return out


def own_units(widths: dict[int, float], sizes: dict[str, int]) -> dict[int, Indices]:
    """``own``: every client trains the narrowest client's prefix, which all share, plus a block of
    its own beyond it (blocks packed in client-number order), so under selective aggregation a wider
    client's extra units are trained by it alone. Prefix slicing gives that private capacity to the
    widest client only: every wider client shares the second-widest's units.

    ``widths``: client number -> width. A client's units are ``num_units(width)`` as under prefix,
    so its model is the same width-w model; ValueError if the blocks do not fit the supernet."""
    out: dict[int, Indices] = {pid: {} for pid in widths}
    for dim, size in sorted(sizes.items()):
        ks = {pid: num_units(w, size) for pid, w in widths.items()}
        shared, needed = min(ks.values()), own_needed(list(ks.values()))
        if needed > size:
            raise ValueError(f"extraction 'own' needs {needed} units of {dim} (the shared prefix plus every client's "
                             f"own block) but the supernet has {size}: lower width-max or the budget, or use "
                             "extraction 'prefix'")
        start = shared
        for pid in sorted(ks):
            out[pid][dim] = torch.cat([torch.arange(shared), torch.arange(start, start + ks[pid] - shared)])
            start += ks[pid] - shared
    return out


def own_needed(ks: list[int]) -> int:
    """Units ``own`` occupies for these unit counts: the shared prefix plus every client's block."""
    return min(ks) + sum(k - min(ks) for k in ks)


def own_fits(widths: list[float], sizes: dict[str, int]) -> bool:
    """Whether ``own_units`` can give these widths disjoint blocks in every scalable dimension."""
    return all(own_needed([num_units(w, size) for w in widths]) <= size for size in sizes.values())


def deployed_units(extraction: str, widths: dict[int, float], sizes: dict[str, int]) -> dict[int, Indices]:
    """The units each client is evaluated on and deploys: its own units under ``own``, otherwise its
    width-w prefix (for rolling and random extraction too: the HeteroFL convention)."""
    if extraction == "own":
        return own_units(widths, sizes)
    return {pid: select_units("prefix", w, sizes) for pid, w in widths.items()}


def trained_units(extraction: str, deployed: dict[int, Indices], client: int, width: float, sizes: dict[str, int], *,
                  server_round: int, seed: int) -> Indices:
    """The units a client trains in one round: its fixed own units under ``own`` (``deployed``, from
    ``deployed_units``), otherwise ``select_units``."""
    if extraction == "own":
        return deployed[client]
    return select_units(extraction, width, sizes, server_round=server_round, seed=seed, client=client)


def hash_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python's hash() is salted for str only)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def axis_positions(axis: Axis, units: torch.Tensor, size: int) -> torch.Tensor:
    """Positions along a parameter axis that belong to the given units."""
    block = torch.arange(axis.blocks).view(-1, 1, 1) * size * axis.inner
    unit = units.view(1, -1, 1) * axis.inner
    inner = torch.arange(axis.inner).view(1, 1, -1)
    return (block + unit + inner).reshape(-1)


def positions(spec_axes: tuple[Axis | None, ...], indices: Indices, sizes: dict[str, int]) -> list[torch.Tensor | None]:
    """Per-axis positions of one parameter (None = the whole axis)."""
    return [None if a is None else axis_positions(a, indices[a.dim], sizes[a.dim]) for a in spec_axes]


def gather(state: dict[str, torch.Tensor], spec: Spec, indices: Indices, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """The selected sub-tensors in the layout of a width-w model; differentiable (autograd flows
    back into ``state``), and unscaled parameters are returned as they are."""
    out = {}
    for name, axes in spec.items():
        t = state[name]
        for dim, pos in enumerate(positions(axes, indices, sizes)):
            if pos is not None:  # positions are built on the CPU; a CUDA model's parameters need them there
                t = t.index_select(dim, pos.to(t.device))
        out[name] = t
    return out


def extract(state: dict[str, torch.Tensor], spec: Spec, indices: Indices, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """A client's sub-model parameters: independent copies, safe to send and train."""
    return {name: t.detach().clone() for name, t in gather(state, spec, indices, sizes).items()}


def expected_shapes(state: dict[str, torch.Tensor], spec: Spec, indices: Indices, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes a client's update must have: what ``extract`` would return."""
    shapes = {}
    for name, axes in spec.items():
        pos = positions(axes, indices, sizes)
        shapes[name] = tuple(len(p) if p is not None else n for p, n in zip(pos, state[name].shape))
    return shapes


def open_grid(pos: list[torch.Tensor | None], shape: torch.Size) -> tuple[torch.Tensor, ...]:
    """Broadcastable index tensors (numpy's ix_) addressing the selected sub-block."""
    ndim = len(shape)
    grid = []
    for dim, (p, n) in enumerate(zip(pos, shape)):
        idx = torch.arange(n) if p is None else p
        view = [1] * ndim
        view[dim] = -1
        grid.append(idx.view(view))
    return tuple(grid)


def prefix_state(state: dict[str, torch.Tensor], spec: Spec, sizes: dict[str, int],
                 width: float) -> dict[str, torch.Tensor]:
    """The width-``width`` prefix of a full supernet's parameters: what a client deploys."""
    return extract(state, spec, select_units("prefix", width, sizes), sizes)
