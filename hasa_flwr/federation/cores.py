"""The ServerApp's torch threads: one in simulation, where the ClientApp actors have every core.

Flower's simulation runs the ServerApp on the machine whose CPUs Ray hands to the actors, and torch
starts one intra-op thread per core in the ServerApp's process as well. After each parallel region
(aggregation, slicing, the round's checkpoint) the idle OpenMP threads spin before they sleep: on
the Medium preset (2 cores) the ServerApp's second torch thread used 0.07 of the simulation
process's 0.23 CPU-s per round, CPU taken from training. The server's tensor work is elementwise
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
