"""The scale benchmark's parts that are not timing: finding, measuring and stopping its processes."""

import os
import subprocess
import sys
import time

from hasa_flwr.study.processes import MARKER, marked_pids, rss_bytes, stop_marked
from hasa_flwr.study.scale_bench import PeakRss, allocation_seconds


def test_marked_processes_are_found_measured_and_stopped():
    value = "test-" + str(os.getpid())
    env = {**os.environ, MARKER: value}
    # a child that holds ~50 MB and a grandchild that ignores SIGTERM: both must go
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); x = bytearray(50 * 2**20); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 20
        while len(marked_pids(value)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = marked_pids(value)
        assert proc.pid in pids and len(pids) == 2
        sampler = PeakRss(value, interval=0.1)
        sampler.start()
        time.sleep(0.5)
        assert sampler.stop() >= 50 * 2**20 and rss_bytes(proc.pid) >= 50 * 2**20
        stop_marked(value, grace=1.0)
        assert marked_pids(value) == [] and proc.wait(timeout=10) != 0
    finally:
        stop_marked(value, grace=1.0)  # the grandchild too, also when an assert failed
        if proc.poll() is None:
            proc.kill()


def test_allocation_timer_times_the_real_allocation(monkeypatch):
    """What is timed is `allocate` on the asked number of clients, once per repeat (the seconds
    themselves are `hasa bench scale`'s to report, not a test's to bound)."""
    from hasa_flwr.method import allocation
    from hasa_flwr.study import scale_bench

    calls = []

    def counted(rule, scores, sizes, **kw):
        calls.append((rule, len(scores)))
        return allocation.allocate(rule, scores, sizes, **kw)

    monkeypatch.setattr(scale_bench, "allocate", counted)
    assert allocation_seconds(10_000, repeats=2) > 0.0
    assert calls == [("hasa", 10_000), ("hasa", 10_000)]
