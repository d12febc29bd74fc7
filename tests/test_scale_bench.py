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
        if proc.poll() is None:
            proc.kill()


def test_allocation_timer_runs_the_real_allocation():
    assert 0.0 < allocation_seconds(10_000, repeats=1) < 60.0
