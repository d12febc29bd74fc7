"""A deployed ServerApp that notices replies sooner: Flower 1.41's HttpGrid checks for them every 3 s.

`HttpGrid.send_and_receive` sleeps a fixed 3 s between pulls (flwr/superlink/grid/http_grid.py), so
every exchange of a deployed run waits up to 3 s (1.5 s on average) after the last reply arrived;
the simulation engine's grid checks every 0.1 s. `PromptGrid` wraps the deployed grid and pulls at
the run config's `reply-poll` interval instead; everything else is the wrapped grid's own code, so
the strategy, SecAgg+ and the phases use it unchanged.

In simulation the replies are stored in this process's memory, by the engine's thread, so the
ServerApp need not poll at all: `WakingGrid` (still an `InMemoryGrid`: phases tell simulation from
deployment by the type) sleeps until the state stores a reply. Checking every 0.01 s instead woke
this process ~100 times a second on the cores the actors train on; woken, it used less CPU in each
of six A/B pairs (0.148 vs 0.175 CPU-s per Medium round, median; the round time did not measurably
change: benchmarks/overhead/README.md), and nothing waits on a timer after the last reply.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.supercore.run import Run
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

SIMULATION_PULL_INTERVAL = 1.0  # simulation: the longest sleep between checks when no reply is stored (a safety net)


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
        """HttpGrid's loop, at our interval."""
        return pull_until_answered(self, messages, timeout, lambda left, _: time.sleep(min(self.interval, left)))


class WakingGrid(InMemoryGrid):
    """The simulation engine's grid, woken by every reply the engine stores instead of checking on a timer.

    Wraps the shared in-memory state's `store_message_res` (the one call through which the engine's
    thread stores replies, errors included) to count stored replies and wake waiters. A check also
    happens at least every `pull_interval` s, for what the state itself creates when it is pulled
    (replies to expired messages)."""

    @classmethod
    def around(cls, grid: InMemoryGrid) -> WakingGrid:
        woken = cls.__new__(cls)
        woken.__dict__.update(grid.__dict__)  # same state, run and settings
        woken._stored, woken._bell = 0, threading.Condition()
        store = woken.state.store_message_res

        def store_and_ring(message: Message):
            out = store(message)
            with woken._bell:
                woken._stored += 1
                woken._bell.notify_all()
            return out

        woken.state.store_message_res = store_and_ring
        woken.pull_interval = SIMULATION_PULL_INTERVAL
        return woken

    def stored(self) -> int:
        with self._bell:
            return self._stored

    def nap(self, left: float, stored_before_pull: int) -> None:
        """Until a reply is stored after that pull (at most `pull_interval` s)."""
        with self._bell:
            self._bell.wait_for(lambda: self._stored != stored_before_pull, timeout=min(self.pull_interval, left))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Pull whenever a reply was stored (at least every `pull_interval` s)."""
        return pull_until_answered(self, messages, timeout, self.nap, self.stored)


def pull_until_answered(grid: Grid, messages: Iterable[Message], timeout: float | None,
                        nap: Callable[[float, int], None], mark: Callable[[], int] = lambda: 0) -> list[Message]:
    """HttpGrid's loop: push, then pull until every reply is in or ``timeout``, with a last pull at the
    deadline (where HttpGrid's loop ends on its sleep). Between pulls ``nap(seconds left, mark)``, where
    ``mark()`` was read just before the pull: a grid woken by replies waits for any stored after it
    (a local, so concurrent calls each keep their own)."""
    waiting = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while True:
        before = mark()
        pulled = list(grid.pull_messages(waiting))
        replies += pulled
        waiting -= {m.metadata.reply_to_message_id for m in pulled}
        left = math.inf if end is None else end - time.monotonic()
        if not waiting or left <= 0:
            return replies
        nap(left, before)


def prompt(grid: Grid, interval: float) -> Grid:
    """The grid a run uses: deployed grids poll every ``interval`` s; the simulation's is woken by each reply."""
    if isinstance(grid, WakingGrid):
        return grid
    if isinstance(grid, InMemoryGrid):
        return WakingGrid.around(grid)
    return PromptGrid(grid, interval)
