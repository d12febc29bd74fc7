"""The ServerApp's torch threads: one in simulation, where the ClientApp actors have every core.

Flower's simulation runs the ServerApp on the machine whose CPUs Ray hands to the actors, and torch
starts one intra-op thread per core in the ServerApp's process as well. After each parallel region
(aggregation, slicing, the round's checkpoint) the idle OpenMP threads spin before they sleep, on
cores the actors train on (benchmarks/overhead/README.md: the simulation process used 0.13 and 0.18
CPU-s per Medium round at one thread, 0.19 and 0.21 at torch's default). The server's tensor work is elementwise
(weighted sums, index_put over disjoint positions, slicing), so one thread gives bit-identical
results. A deployed ServerApp has its machine to itself and keeps torch's default.
"""

from __future__ import annotations

import torch
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid


def leave_cores_to_clients(grid: Grid) -> None:
    """One torch thread for this process when it is a simulation's ServerApp."""
    if isinstance(grid, InMemoryGrid):
        torch.set_num_threads(1)
