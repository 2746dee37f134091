"""Noise scenarios: what runs beside the workload, in one measuring cgroup.

none, cpu (stress-ng --cpu 0: one hog per CPU, or a given count), spin
(scx-gpu's spinners, as many, timing their own CPU: under sched_ext the
test VM's kernel over-counts the CPU time of tasks that run after an idle
gap), net (iperf3 over loopback), disk (fio random writes), heavy (cpu, net
and disk). Each falls back to the built-in generator
(scx_gpu.bench.noisegen) when its tool is not installed. Everything runs in
one cgroup, so its CPU time can be measured and it can be declared batch;
it is stopped by killing that cgroup.

Where that cgroup sits decides what the noise competes with (LAYOUTS):
own     NOISE_CGROUP, below the root. With the root's cpu controller on (as
        on systemd hosts) it competes with the workload's cgroup as one
        entity, which shields a workload that uses little of its share.
shared  a child of the bench's own cgroup, where the workload runs. The cpu
        controller cannot run there (that cgroup holds processes), so the
        noise competes with the launching thread task by task, as a job's own
        helper processes, or batch work on a host without that controller, do.
"""

import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scx_gpu.bench.scenario import in_cgroup, joined
from scx_gpu.controlplane import cgroups
from scx_gpu.controlplane.cgroups import CGROUP_ROOT
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.errors import EnvironmentProblem, UsageError
from scx_gpu.workloads import program

NOISES = ("none", "cpu", "spin", "net", "disk", "heavy")
LAYOUTS = ("own", "shared")
# Noise and hogs always run in this cgroup, so their CPU time can be measured
# whatever their tier; `--batch-cgroup` declares them batch.
NOISE_NAME = "scx-gpu-bench-noise"
NOISE_CGROUP = CGROUP_ROOT / NOISE_NAME
DISK_DIR = Path("/var/tmp/scx-gpu-noise")
SPIN_STATS = Path("/var/tmp/scx-gpu-noise-spin.stats")  # the spinners' records (spinners.c)
SPIN_SLOT = struct.Struct("3d40x")  # created, worst gap, seconds ran; a cache line each
IPERF_PORT = 5299
SETTLE_S = 1.0


def _builtin(kind: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "scx_gpu.bench.noisegen", kind, "--workers", str(workers),
            "--dir", str(DISK_DIR)]


def stress_cpu(hogs: int) -> list[str]:
    return ["stress-ng", "--cpu", str(hogs), "--cpu-method", "int64", "--quiet"]


def _cpu(hogs: int) -> list[str]:
    """hogs busy loops; 0: one per CPU."""
    if shutil.which("stress-ng"):
        return stress_cpu(hogs)
    return _builtin("cpu", hogs or NPROC)


def _spin(hogs: int) -> list[str]:
    return [str(program("spinners")), "--threads", str(hogs or NPROC), "--seconds", "86400",
            "--stats", str(SPIN_STATS)]


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
    parts = {"none": [], "cpu": [_cpu(cpu_hogs)], "spin": [_spin(cpu_hogs)], "net": [_net()],
             "disk": [_disk()],
             "heavy": [_cpu(cpu_hogs), _net(), _disk()]}
    if noise not in parts:
        raise UsageError(f"unknown noise {noise!r}: choose from {', '.join(NOISES)}")
    return parts[noise]


def own_cgroup(proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """This process's cgroup v2 group."""
    for line in proc_cgroup.read_text().splitlines():
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].strip().lstrip("/")
    raise EnvironmentProblem(f"{proc_cgroup} names no cgroup v2 group: is cgroup v2 mounted?")


def cgroup_for(layout: str, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """The noise's cgroup in that layout (see LAYOUTS above)."""
    if layout == "own":
        return NOISE_CGROUP
    if layout != "shared":
        raise UsageError(f"unknown noise cgroup layout {layout!r}: choose from "
                         f"{', '.join(LAYOUTS)}")
    parent = own_cgroup(proc_cgroup)
    controls = parent / "cgroup.subtree_control"
    if controls.is_file() and "cpu" in controls.read_text().split():
        raise UsageError(f"--noise-cgroup shared: the cpu controller runs below {parent}, so "
                         "noise in a child of it competes as one entity, as with own; start "
                         "the bench in a cgroup of its own (systemd-run --scope ...)")
    return parent / NOISE_NAME


def prepare(cgroup: Path = NOISE_CGROUP) -> Path:
    """The noise cgroup, empty (it must exist before a scheduler declares it batch)."""
    cgroup.mkdir(exist_ok=True)
    stop(cgroup)
    return cgroup


def stop(cgroup: Path = NOISE_CGROUP) -> None:
    if (cgroup / "cgroup.kill").exists():
        (cgroup / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (cgroup / "cgroup.procs").read_text().strip():
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"{cgroup}: noise survived cgroup.kill; kill it by hand")
            time.sleep(0.05)
    shutil.rmtree(DISK_DIR, ignore_errors=True)
    SPIN_STATS.unlink(missing_ok=True)


def release(cgroup: Path) -> None:
    """Stop the noise; a shared layout's cgroup is removed too (it sits in the
    caller's cgroup, which is not ours to leave things in)."""
    stop(cgroup)
    if cgroup != NOISE_CGROUP and cgroup.is_dir():
        cgroup.rmdir()


def cpu_seconds(noise: str, cgroup: Path = NOISE_CGROUP) -> float:
    """CPU seconds the noise used so far: as the spin noise timed itself, else
    its cgroup's (cgroup v2 cpu.stat)."""
    if noise == "spin":
        return float(sum(slot[2] for slot in SPIN_SLOT.iter_unpack(SPIN_STATS.read_bytes())))
    return cgroups.cpu_seconds(cgroup)


def lowered(cmd: list[str], nice: int, idle: bool) -> list[str]:
    """cmd at that nice and, if idle, SCHED_IDLE: both inherited by all it starts."""
    if idle:
        cmd = ["chrt", "--idle", "0", *cmd]
    return ["nice", "-n", str(nice), *cmd] if nice else cmd


@contextmanager
def running(noise: str, idle: bool = False, cpu_hogs: int = 0,
            cgroup: Path = NOISE_CGROUP, nice: int = 0) -> Iterator[None]:
    """The noise running for the body's duration, then killed to the last process."""
    cmds = commands(noise, cpu_hogs)
    prepare(cgroup)
    DISK_DIR.mkdir(parents=True, exist_ok=True)
    _idle_group(cgroup, idle)
    procs = [subprocess.Popen(in_cgroup(cgroup, lowered(cmd, nice, idle)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd in cmds]
    try:
        for proc in procs:
            joined(cgroup, proc)
        if procs:
            time.sleep(SETTLE_S)
        yield
    finally:
        stop(cgroup)
        for proc in procs:
            proc.kill()  # one that never joined the cgroup; a no-op for the rest
            proc.wait()
        _idle_group(cgroup, False)


def _idle_group(cgroup: Path, idle: bool) -> None:
    """cpu.idle on the noise cgroup when the cpu controller runs there.

    With the controller on, the cgroup competes as one entity of normal
    weight, so SCHED_IDLE inside it yields only to its own siblings.
    """
    knob = cgroup / "cpu.idle"
    if knob.is_file():
        knob.write_text("1" if idle else "0")
