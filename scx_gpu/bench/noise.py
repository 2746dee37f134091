"""Noise scenarios: what runs beside the workload, in one measuring cgroup.

none, cpu (stress-ng --cpu 0: one hog per CPU, or a given count), net
(iperf3 over loopback), disk (fio random writes), heavy (all three). Each
falls back to the built-in generator (scx_gpu.bench.noisegen) when its tool
is not installed. Everything runs in NOISE_CGROUP, so its CPU time can be
measured and it can be declared batch; it is stopped by killing that cgroup.
"""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scx_gpu.bench.scenario import cgroup_cpu_s, in_cgroup, joined
from scx_gpu.controlplane.tiers import CGROUP_ROOT
from scx_gpu.errors import EnvironmentProblem, UsageError

NOISES = ("none", "cpu", "net", "disk", "heavy")
NOISE_CGROUP = CGROUP_ROOT / "scx-gpu-bench-noise"
DISK_DIR = Path("/var/tmp/scx-gpu-noise")
IPERF_PORT = 5299
SETTLE_S = 1.0
NPROC = os.cpu_count() or 1


def _builtin(kind: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "scx_gpu.bench.noisegen", kind, "--workers", str(workers),
            "--dir", str(DISK_DIR)]


def _cpu(hogs: int) -> list[str]:
    """hogs busy loops; 0: one per CPU."""
    if shutil.which("stress-ng"):
        return ["stress-ng", "--cpu", str(hogs), "--cpu-method", "int64", "--quiet"]
    return _builtin("cpu", hogs or NPROC)


def _net() -> list[str]:
    streams = max(1, NPROC // 4)
    if shutil.which("iperf3"):
        return ["sh", "-c", f"iperf3 -s -p {IPERF_PORT} >/dev/null & sleep 0.5; exec iperf3 -c "
                f"127.0.0.1 -p {IPERF_PORT} -t 86400 -P {streams} >/dev/null"]
    return _builtin("net", streams)


def _disk() -> list[str]:
    if shutil.which("fio"):
        return ["fio", "--name=scx-gpu-noise", f"--directory={DISK_DIR}", "--rw=randwrite",
                "--bs=4k", "--size=256m", "--numjobs=2", "--fsync=16", "--time_based",
                "--runtime=86400", "--output=/dev/null"]
    return _builtin("disk", 2)


def commands(noise: str, cpu_hogs: int = 0) -> list[list[str]]:
    """The command lines one noise scenario runs (cpu_hogs: 0 for one per CPU)."""
    if cpu_hogs < 0:
        raise UsageError(f"--cpu-hogs {cpu_hogs}: give a count >= 0 (0: one per CPU)")
    parts = {"none": [], "cpu": [_cpu(cpu_hogs)], "net": [_net()], "disk": [_disk()],
             "heavy": [_cpu(cpu_hogs), _net(), _disk()]}
    if noise not in parts:
        raise UsageError(f"unknown noise {noise!r}: choose from {', '.join(NOISES)}")
    return parts[noise]


def prepare() -> Path:
    """The noise cgroup, empty (it must exist before a scheduler declares it batch)."""
    NOISE_CGROUP.mkdir(exist_ok=True)
    stop()
    return NOISE_CGROUP


def stop() -> None:
    if (NOISE_CGROUP / "cgroup.kill").exists():
        (NOISE_CGROUP / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (NOISE_CGROUP / "cgroup.procs").read_text().strip():
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"{NOISE_CGROUP}: noise survived cgroup.kill; kill it by hand")
            time.sleep(0.05)
    shutil.rmtree(DISK_DIR, ignore_errors=True)


def cpu_seconds() -> float:
    """CPU seconds the noise used so far (cgroup v2 cpu.stat)."""
    return cgroup_cpu_s(NOISE_CGROUP)


@contextmanager
def running(noise: str, idle: bool = False, cpu_hogs: int = 0) -> Iterator[None]:
    """The noise running for the body's duration, then killed to the last process."""
    cmds = commands(noise, cpu_hogs)
    prepare()
    DISK_DIR.mkdir(parents=True, exist_ok=True)
    _idle_group(idle)
    # SCHED_IDLE (chrt) is inherited by everything the noise starts.
    procs = [subprocess.Popen(in_cgroup(NOISE_CGROUP, ["chrt", "--idle", "0", *cmd] if idle
                                        else cmd),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd in cmds]
    try:
        for proc in procs:
            joined(NOISE_CGROUP, proc)
        if procs:
            time.sleep(SETTLE_S)
        yield
    finally:
        stop()
        for proc in procs:
            proc.kill()  # one that never joined the cgroup; a no-op for the rest
            proc.wait()
        _idle_group(False)


def _idle_group(idle: bool) -> None:
    """cpu.idle on the noise cgroup when the cpu controller runs there.

    With the controller on, the cgroup competes as one entity of normal
    weight, so SCHED_IDLE inside it yields only to its own siblings.
    """
    knob = NOISE_CGROUP / "cpu.idle"
    if knob.is_file():
        knob.write_text("1" if idle else "0")
