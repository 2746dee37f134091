"""Building blocks of the scheduler's VM scenarios (run inside the guest)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scx_gpu.controlplane.loader import sched_ext_state
from scx_gpu.controlplane.tiers import OWN_ROOT
from scx_gpu.workloads import program

LAUNCHER = program("launcher")
STUB_LIBCUDA = program("libcuda.so.1")
SCX_GPU = [sys.executable, "-m", "scx_gpu"]
# About 70% busy: 10 launches x 500 us of CPU, then a 2 ms "GPU" wait.
BUSY_LAUNCHER = ["--launches", "10", "--work-us", "500", "--gpu-wait-us", "2000"]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05) -> float:
    """Seconds until predicate() held; AssertionError after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


def enabled() -> bool:
    return sched_ext_state() == ("enabled", "scx_gpu")


def disabled() -> bool:
    return sched_ext_state()[0] == "disabled"


@contextmanager
def loaded(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`scx-gpu load` running in the background for the body's duration."""
    with tempfile.NamedTemporaryFile("w+", prefix="scx-gpu-load-") as log:
        proc = subprocess.Popen([*SCX_GPU, "load", "--quiet", "--cuda-lib", str(STUB_LIBCUDA),
                                 *args], stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: enabled() or proc.poll() is not None, 60, "the scheduler to load")
            assert proc.poll() is None, f"scx-gpu load exited: {Path(log.name).read_text()}"
            yield proc
            assert proc.poll() is None, f"scx-gpu load died: {Path(log.name).read_text()}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    wait_for(disabled, 10, "sched_ext to be disabled after SIGTERM")


def launcher(*args: str, tier: str | None = None, timeout: float = 120) -> dict:
    """Run the synthetic launcher to completion; its JSON report."""
    cmd = [str(LAUNCHER), "--cuda-lib", str(STUB_LIBCUDA), *args]
    if tier:
        cmd = [*SCX_GPU, "run", "--tier", tier, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout)


@contextmanager
def hogs(count: int, tier: str | None = None, nice: int = 0,
         policy: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """count CPU hogs (stress-ng) for the body's duration."""
    cmd = ["stress-ng", "--cpu", str(count), "--cpu-method", "int64", "--quiet"]
    if policy == "idle":
        cmd = ["chrt", "--idle", "0", *cmd]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    if tier:
        cmd = [*SCX_GPU, "run", "--tier", tier, "--", *cmd]
    proc = subprocess.Popen(cmd, start_new_session=True, text=True)
    time.sleep(1.0)  # let every hog start
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tier_cpu_s(tier: str) -> float:
    """CPU seconds used so far by everything in scx-gpu's cgroup for the tier."""
    for line in (OWN_ROOT / tier / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "usage_usec":
            return int(value) / 1e6
    raise AssertionError("cpu.stat has no usage_usec")


def cpu_share(tier: str, seconds: float) -> float:
    """Share (0-1) of all CPUs the tier's cgroup used over the next seconds."""
    before, start = tier_cpu_s(tier), time.monotonic()
    time.sleep(seconds)
    used = tier_cpu_s(tier) - before
    return used / ((time.monotonic() - start) * (os.cpu_count() or 1))


def status() -> dict:
    out = subprocess.run([*SCX_GPU, "status", "--json"], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)
