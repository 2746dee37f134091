"""`scx-gpu doctor`: what this machine offers scx-gpu, and what may interfere."""

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scx_gpu.bpf import libbpf, libcuda
from scx_gpu.controlplane.runstate import SCHED_EXT
from scx_gpu.errors import ScxGpuError

OK, WARN, MISSING, INFO = "ok", "warn", "missing", "info"


@dataclass(frozen=True)
class Finding:
    id: str
    name: str
    value: Any
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _mount_types() -> set[str]:
    text = _read("/proc/mounts") or ""
    return {fields[2] for fields in (line.split() for line in text.splitlines()) if len(fields) > 2}


def kernel() -> Finding:
    return Finding("kernel", "Kernel", os.uname().release, INFO)


def sched_ext() -> Finding:
    state = _read(SCHED_EXT / "state")
    if state is None:
        return Finding(
            "sched_ext", "sched_ext", {"present": False}, MISSING,
            "no CONFIG_SCHED_CLASS_EXT in this kernel: try `scx-gpu vm` or the mainline fallback",
        )
    ops = _read(SCHED_EXT / "root" / "ops")
    value = {"present": True, "state": state, "ops": ops or None}
    detail = f"state {state}" + (f", scheduler {ops}" if ops else "")
    return Finding("sched_ext", "sched_ext", value, OK, detail)


def btf() -> Finding:
    present = Path("/sys/kernel/btf/vmlinux").is_file()
    return Finding("btf", "Kernel BTF", present, OK if present else MISSING,
                   "" if present else "CO-RE needs CONFIG_DEBUG_INFO_BTF")


def uprobes() -> Finding:
    present = Path("/sys/bus/event_source/devices/uprobe").is_dir()
    return Finding("uprobes", "uprobes", present, OK if present else MISSING,
                   "" if present else "GPU detection needs CONFIG_UPROBE_EVENTS")


def libbpf_version() -> Finding:
    try:
        major, minor = libbpf.version()
    except ScxGpuError as exc:
        return Finding("libbpf", "libbpf", None, MISSING, str(exc))
    ok = (major, minor) >= libbpf.MIN_VERSION
    need = ".".join(map(str, libbpf.MIN_VERSION))
    return Finding("libbpf", "libbpf", f"{major}.{minor}", OK if ok else WARN,
                   "" if ok else f"need >= {need} to attach sched_ext schedulers")


def filesystems() -> list[Finding]:
    types = _mount_types()
    return [
        Finding(fs, name, fs in types, OK if fs in types else WARN, "" if fs in types else hint)
        for fs, name, hint in (
            ("bpf", "bpffs mounted", "mount -t bpf bpf /sys/fs/bpf (pinned maps)"),
            ("tracefs", "tracefs mounted", "mount -t tracefs tracefs /sys/kernel/tracing"),
        )
    ]


def root() -> Finding:
    is_root = os.geteuid() == 0
    return Finding("root", "Running as root", is_root, OK if is_root else WARN,
                   "" if is_root else "loading BPF needs root (CAP_BPF, CAP_SYS_ADMIN)")


def cuda() -> Finding:
    found = libcuda.discover()
    paths = [f"{lib.path} ({lib.source})" for lib in found]
    return Finding("libcuda", "libcuda found", [str(lib.path) for lib in found],
                   OK if found else INFO, ", ".join(paths) or "none: no GPU detection possible")


def cgroup_cpu() -> Finding:
    controllers = _read("/sys/fs/cgroup/cgroup.controllers")
    ok = controllers is not None and "cpu" in controllers.split()
    return Finding("cgroup_v2_cpu", "cgroup v2 with cpu controller", ok, OK if ok else WARN,
                   "" if ok else "batch cgroups and the fallback need cgroup v2's cpu controller")


def psi() -> Finding:
    present = _read("/proc/pressure/cpu") is not None
    return Finding("psi", "Pressure stall information", present, OK if present else INFO)


def numa_balancing() -> Finding:
    value = _read("/proc/sys/kernel/numa_balancing")
    on = value not in (None, "0")
    return Finding("numa_balancing", "NUMA balancing", value, WARN if on else OK,
                   "migrates GPU feeder threads' memory; consider sysctl kernel.numa_balancing=0"
                   if on else "")


def irqbalance() -> Finding:
    running = any(
        _read(f"/proc/{pid}/comm") == "irqbalance" for pid in os.listdir("/proc") if pid.isdigit()
    )
    return Finding("irqbalance", "irqbalance running", running, WARN if running else OK,
                   "may move NIC/GPU IRQs onto GPU feeder CPUs" if running else "")


def cpu_governor() -> Finding:
    governors = sorted({
        g for g in (_read(p) for p in Path("/sys/devices/system/cpu").glob(
            "cpu[0-9]*/cpufreq/scaling_governor")) if g
    })
    if not governors:
        return Finding("cpu_governor", "CPU frequency governor", None, INFO, "no cpufreq")
    slow = [g for g in governors if g != "performance"]
    return Finding("cpu_governor", "CPU frequency governor", governors, WARN if slow else OK,
                   "non-performance governors add wake-up latency" if slow else "")


CHECKS: list[Callable[[], Finding | list[Finding]]] = [
    kernel, sched_ext, btf, uprobes, libbpf_version, filesystems, root, cuda,
    cgroup_cpu, psi, numa_balancing, irqbalance, cpu_governor,
]


def run_checks() -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS:
        result = check()
        findings.extend(result if isinstance(result, list) else [result])
    return findings
