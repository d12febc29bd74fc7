"""`hasa bench deploy`'s parts without a deployment: the prompt grid's reply loop (and the
simulation's), the no-op app's imports, the compared rounds, the report table and the command's
one-line errors. (The no-op app runs for real in tests/test_deploy.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT
from flwr.app import Message, RecordDict
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from hasa_flwr.study.deploy_bench import compared, markdown, ratio_interval
from hasa_flwr.study.noop_app import write_noop_app
from hasa_flwr.federation.polling import PromptGrid, prompt


class FakeClock:
    """Time that passes only when the code under test sleeps: a test checks the sleeps it asks for,
    not how fast this machine is."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from hasa_flwr.federation import polling

    fake = FakeClock()
    monkeypatch.setattr(polling, "time", fake)
    return fake


class SlowGrid:
    """Replies (only their reply-to ids) become available ``delays`` seconds after the push."""

    def __init__(self, delays: list[float], clock: FakeClock) -> None:
        self.delays, self.pulls, self.clock = delays, 0, clock

    def push_messages(self, messages):
        self.pushed = self.clock.monotonic()
        self.ids = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.ids)

    def pull_messages(self, ids):
        self.pulls += 1
        now, ready = self.clock.monotonic(), []
        for i, d in zip(self.ids, self.delays):
            if i in ids and now - self.pushed >= d:
                ready.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)))
        return ready


def messages(n: int) -> list[SimpleNamespace]:
    """Stand-ins: the prompt grid hands messages to push_messages untouched."""
    return [SimpleNamespace(dst_node_id=i + 1) for i in range(n)]


def test_prompt_grid_collects_replies_at_its_interval(clock):
    slow = SlowGrid([0.1, 0.3, 0.5], clock)
    replies = PromptGrid(slow, 0.05).send_and_receive(messages(3), timeout=10)
    assert sorted(m.metadata.reply_to_message_id for m in replies) == ["m0", "m1", "m2"]
    # it checks every 0.05 s and returns at the first check after the last reply (Flower's HttpGrid
    # sleeps 3 s after each empty pull)
    assert clock.sleeps and all(s == 0.05 for s in clock.sleeps)
    assert 0.5 <= clock.now < 0.5 + 0.05 + 1e-9 and slow.pulls == len(clock.sleeps) + 1


def test_prompt_grid_returns_what_came_before_the_timeout(clock):
    slow = SlowGrid([0.05, 30.0], clock)
    replies = PromptGrid(slow, 0.5).send_and_receive(messages(2), timeout=0.4)
    assert [m.metadata.reply_to_message_id for m in replies] == ["m0"]
    assert clock.sleeps == [0.4] and slow.pulls == 2   # the sleep is cut to the timeout, then one last pull


class EngineState:
    """The in-memory state as the simulation engine uses it: each pushed message's reply is stored by
    another thread ``delays`` s after the push (None: never)."""

    def __init__(self, delays: list[float | None]) -> None:
        self.delays, self.stored, self.pulls = list(delays), {}, 0

    def store_message_ins(self, msg):
        delay = self.delays.pop(0)
        if delay is not None:
            threading.Timer(delay, lambda: self.store_message_res(Message(RecordDict(), reply_to=msg))).start()
        return msg.metadata.message_id

    def store_message_res(self, reply):
        self.stored[reply.metadata.reply_to_message_id] = reply

    def get_message_res(self, message_ids, run_id):
        self.pulls += 1
        return [self.stored.pop(i) for i in list(self.stored) if i in message_ids]

    def delete_messages(self, message_ins_ids):
        pass


def engine_grid(delays: list[float | None]) -> InMemoryGrid:
    grid = InMemoryGrid.__new__(InMemoryGrid)
    grid.state, grid.pull_interval, grid._run = EngineState(delays), 0.1, SimpleNamespace(run_id=1)
    return grid


def flower_messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=i + 1, message_type="train") for i in range(n)]


def test_simulation_grid_keeps_its_type_and_is_woken_by_each_stored_reply(task_identity):
    grid = prompt(engine_grid([0.05, 0.2, 0.4]), 0.2)
    assert isinstance(grid, InMemoryGrid) and prompt(grid, 0.2) is grid   # phases tell simulation by the type
    grid.pull_interval = 60.0   # the safety net's check must not be what finds the replies
    start = time.monotonic()
    replies = grid.send_and_receive(flower_messages(3), timeout=30)
    assert len(replies) == 3 and time.monotonic() - start < 30
    assert grid.state.pulls <= 4   # the first pull, then one per stored reply (two may land together)


def test_simulation_grid_returns_what_came_before_the_timeout(task_identity):
    grid = prompt(engine_grid([0.05, None]), 0.2)
    replies = grid.send_and_receive(flower_messages(2), timeout=0.5)
    assert len(replies) == 1 and grid.state.pulls <= 3


def test_noop_app_imports_only_flower(tmp_path):
    """Its ClientApp process must not pay for torch or hasa-flwr: it is the floor."""
    folder = write_noop_app(tmp_path / "noop")
    code = "import sys, noop_app; print(sorted(m for m in ('torch', 'hasa_flwr', 'numpy.random') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch" not in out.stdout and "hasa_flwr" not in out.stdout
    assert (folder / "pyproject.toml").read_text().count("noop_app:") == 2


def test_clientapp_freezes_what_it_imported():
    """Each deployed message's process imports client_app; its imports are kept out of the collector."""
    code = "import gc, client_app; print(gc.get_freeze_count() > 100_000)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_compared_rounds():
    assert compared([9.0, 5.0, 6.0, 12.0]) == [5.0, 6.0]
    assert compared([3.0, 4.0]) == [3.0, 4.0]


def test_report_table():
    run = {"median_round_s": 4.0, "clientapp_cpu_s": 2.0, "clientapp_lifetime_s": 3.0}
    table = markdown({"caps": [0.8, 0.5], "rounds": 6, "superexec_poll_s": 1.0, "cpus": 2,
                      "runs": [{"reply_poll_s": 0.2, "hasa": {**run, "median_round_s": 6.5}, "noop": run,
                                "ratio_to_noop": 1.625, "ratio_interval_95": (1.4, 1.9), "speedup_vs_before": 4.0}]})
    assert "| 0.2 s | 6.50 | 4.00 | 1.62 (1.40-1.90) | 4.0x faster | 2.00 / 2.00 | 3.00 / 3.00 |" in table
    # a deploy.json from before the interval was recorded: computed from its rounds
    old = {"reply_poll_s": 3, "hasa": {**run, "rounds_s": [9.0, 6.0, 6.0, 6.0, 9.0]},
           "noop": {**run, "rounds_s": [9.0, 4.0, 4.0, 4.0, 9.0]}, "ratio_to_noop": 1.5, "speedup_vs_before": 4.0}
    table = markdown({"caps": [0.8, 0.5], "rounds": 5, "superexec_poll_s": 1.0, "cpus": 2, "runs": [old]})
    assert "| 3 s | 4.00 | 4.00 | 1.50 (1.50-1.50) |" in table


def test_ratio_interval_brackets_the_ratio_and_narrows_with_rounds():
    assert ratio_interval([6.0] * 5, [4.0] * 5) == (1.5, 1.5)  # no spread: no doubt
    rng = np.random.default_rng(1)
    few = ratio_interval(list(7.5 + rng.normal(0, 0.8, 6)), list(5.0 + rng.normal(0, 0.4, 6)))
    many = ratio_interval(list(7.5 + rng.normal(0, 0.8, 60)), list(5.0 + rng.normal(0, 0.4, 60)))
    assert few[0] < 1.5 < few[1] and many[0] < 1.5 < many[1]
    assert many[1] - many[0] < few[1] - few[0]
    assert ratio_interval([1.0, 9.0, 5.0], [4.0, 4.0, 4.0], seed=3) == ratio_interval([1.0, 9.0, 5.0], [4.0, 4.0, 4.0],
                                                                                        seed=3)  # reproducible


@pytest.mark.parametrize("args,message", [
    (["--caps", "0.8"], "--caps needs one width cap"),
    (["--caps", "0.8,1.5"], "--caps values must lie in"),
    (["--caps", "a,b"], "--caps must be comma-separated numbers"),
    (["--reply-poll", "0"], "--reply-poll values must lie in"),
    (["--rounds", "2"], "--rounds must be at least 3"),
    (["--superexec-poll", "0.001"], "--superexec-poll must be"),
])
def test_bench_deploy_bad_options(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "hasa_flwr.cli", "bench", "deploy", "--out", str(tmp_path / "o"),
                          *args], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "o").exists()


def test_private_keys_are_owner_only_from_the_first_byte(tmp_path):
    """Even under umask 000, and over a key file that was world-readable."""
    import os
    import stat

    from hasa_flwr.study.credentials import make_node_keys, make_tls_files

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "dev").write_text("old")
    os.chmod(tmp_path / "keys" / "dev", 0o644)
    old = os.umask(0)
    try:
        private, public = make_node_keys(tmp_path / "keys", "dev")
        tls = make_tls_files(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and stat.S_IMODE(tls.server_key.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert stat.S_IMODE(public.stat().st_mode) == 0o666  # public: the umask's
