"""A deployed ServerApp that notices replies sooner: Flower 1.41's HttpGrid checks for them every 3 s.

`HttpGrid.send_and_receive` sleeps a fixed 3 s between pulls (flwr/superlink/grid/http_grid.py), so
every exchange of a deployed run waits up to 3 s (1.5 s on average) after the last reply arrived;
the simulation engine's grid checks every 0.1 s. `PromptGrid` wraps the deployed grid and pulls at
the run config's `reply-poll` interval instead; everything else is the wrapped grid's own code, so
the strategy, SecAgg+ and the phases use it unchanged. The simulation's grid keeps its type and
checks every 0.01 s (its `pull_interval`): its replies are in the same process's memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.supercore.run import Run
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

SIMULATION_PULL_INTERVAL = 0.01  # a check is a lock and a lookup in this process: ~free (Flower's default: 0.1 s)


class PromptGrid(Grid):
    """The wrapped grid, with `send_and_receive` pulling replies every ``interval`` seconds."""

    def __init__(self, grid: Grid, interval: float) -> None:
        self.grid, self.interval = grid, interval

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """HttpGrid's loop (push, then pull until every reply is in or ``timeout``), at our interval."""
        waiting = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:  # a last pull at the deadline, where HttpGrid's loop ends on its sleep
            pulled = list(self.pull_messages(waiting))
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            left = math.inf if end is None else end - time.monotonic()
            if not waiting or left <= 0:
                break
            time.sleep(min(self.interval, left))
        return replies


def prompt(grid: Grid, interval: float) -> Grid:
    """The grid a run uses: deployed grids poll every ``interval`` s; the simulation's keeps its type (phases tell
    simulation from deployment by it) and polls every SIMULATION_PULL_INTERVAL s."""
    if isinstance(grid, InMemoryGrid):
        grid.pull_interval = min(grid.pull_interval, SIMULATION_PULL_INTERVAL)
        return grid
    return PromptGrid(grid, interval)
