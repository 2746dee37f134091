"""The machine's CPU topology and each GPU's locality, read from /sys and /proc.

Everything reads below a root directory ("/" on a real machine; tests point
it at a fake tree) and returns plain data; the loader turns it into the
scheduler's maps. No NVML: a process's GPUs are the /dev/nvidiaN device
files it maps read-write (used_gpu_minors says why), the driver's
/proc/driver/nvidia/gpus/ADDR/information maps a device minor number to its
PCI address, and sysfs gives that PCI device's NUMA node and local CPUs.

An LLC is identified by the CPUs that share it (its shared_cpu_list), not
by the cache's `id` attribute: some CPUs (QEMU's AMD model among them)
report a distinct L3 id on every CPU of one shared L3.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scx_gpu.errors import UsageError

SYS_CPU = "sys/devices/system/cpu"
SYS_NODE = "sys/devices/system/node"
SYS_PCI = "sys/bus/pci/devices"
NVIDIA_GPUS = "proc/driver/nvidia/gpus"
# /dev/nvidia0, /dev/nvidia1, ...; not nvidiactl, nvidia-uvm, nvidia-modeset.
# The CPUs this machine runs on: quotas and CPU shares are fractions of all of them.
NPROC = os.cpu_count() or 1
GPU_DEVICE = re.compile(r"/dev/nvidia(\d+)")
LLC_LEVEL = 3
INSTRUCTION = "Instruction"


@dataclass(frozen=True)
class Cpu:
    cpu: int
    online: bool
    node: int | None             # None: no NUMA information
    llc: tuple[int, ...]         # CPUs sharing its last-level cache; () when unknown
    llc_level: int | None
    siblings: tuple[int, ...]    # SMT siblings, itself included; () when unknown


@dataclass(frozen=True)
class Gpu:
    minor: int                   # N of /dev/nvidiaN
    pci: str                     # domain:bus:device.function
    node: int | None             # None: the device reports numa_node -1
    local_cpus: tuple[int, ...]


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The kernel's cpulist syntax ("0-3,8,10-11"), sorted and unique; "" is empty."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.strip().split(",") if p.strip()):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise UsageError(f"bad CPU list {text.strip()!r}: expected e.g. 0-3,8")
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            raise UsageError(f"bad CPU list {text.strip()!r}: range {part} runs backwards")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpulist(cpus: Iterable[int]) -> str:
    """The kernel's cpulist syntax for cpus: {0, 1, 2, 3, 8} -> "0-3,8"."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def gpu_cpus_override(spec: str, cpus: list[Cpu]) -> tuple[int, ...]:
    """`--gpu-cpus LIST`: a non-empty cpulist of CPUs this machine can have."""
    listed = parse_cpulist(spec)
    if not listed:
        raise UsageError("--gpu-cpus: name at least one CPU (e.g. 0-3,8)")
    possible = {c.cpu for c in cpus}
    missing = [c for c in listed if c not in possible]
    if missing:
        raise UsageError(f"--gpu-cpus {spec}: no CPU {', '.join(map(str, missing))} here "
                         f"(possible: 0-{max(possible)})")
    return listed


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cpulist_file(path: Path) -> tuple[int, ...]:
    text = _read(path)
    return parse_cpulist(text) if text is not None else ()


def _llc(cpu_dir: Path) -> tuple[tuple[int, ...], int | None]:
    """The CPUs sharing this CPU's L3 (or its highest data cache level) and its level."""
    best: tuple[int, tuple[int, ...]] | None = None
    for index in sorted(cpu_dir.glob("cache/index[0-9]*")):
        level, kind = _read(index / "level"), _read(index / "type")
        shared = _cpulist_file(index / "shared_cpu_list")
        if level is None or not level.strip().isdigit() or not shared or \
                (kind or "").strip() == INSTRUCTION:
            continue
        if best is None or int(level) > best[0]:
            best = (int(level), shared)
    return (best[1], best[0]) if best else ((), None)


def _node_of(cpu_dir: Path, node_cpus: dict[int, tuple[int, ...]], cpu: int) -> int | None:
    links = [p.name for p in cpu_dir.glob("node[0-9]*")]
    if links:
        return int(links[0][len("node"):])
    return next((node for node, cpus in node_cpus.items() if cpu in cpus), None)


def read_cpus(root: Path = Path("/")) -> list[Cpu]:
    """Every possible CPU, online or not (an offline CPU has no cache or SMT
    information until it comes online)."""
    base = root / SYS_CPU
    possible = _cpulist_file(base / "possible")
    if not possible:
        raise UsageError(f"{base}/possible is missing or empty: is {root} a Linux root?")
    online = set(_cpulist_file(base / "online"))
    node_cpus = {int(d.name[len("node"):]): _cpulist_file(d / "cpulist")
                 for d in (root / SYS_NODE).glob("node[0-9]*")}
    cpus = []
    for cpu in possible:
        cpu_dir = base / f"cpu{cpu}"
        up = cpu in online
        llc, level = _llc(cpu_dir) if up else ((), None)
        siblings = _cpulist_file(cpu_dir / "topology/thread_siblings_list") if up else ()
        cpus.append(Cpu(cpu, up, _node_of(cpu_dir, node_cpus, cpu), llc, level, siblings))
    return cpus


def llc_domains(cpus: list[Cpu]) -> dict[int, int]:
    """A dense domain number (0, 1, ...) for every CPU: one per LLC, in order
    of each LLC's lowest CPU; CPUs whose LLC is unknown (offline, or no cache
    information) get one domain per NUMA node, after the LLCs."""
    keys: dict[tuple[str, object], int] = {}
    known = [c for c in cpus if c.llc]
    unknown = [c for c in cpus if not c.llc]
    domains = {}
    for c in sorted(known, key=lambda c: c.llc):
        domains[c.cpu] = keys.setdefault(("llc", c.llc), len(keys))
    for c in sorted(unknown, key=lambda c: (c.node is None, c.node or 0, c.cpu)):
        domains[c.cpu] = keys.setdefault(("node", c.node), len(keys))
    return domains


def _gpu_info(text: str) -> dict[str, str]:
    fields = (line.partition(":") for line in text.splitlines())
    return {key.strip(): value.strip() for key, sep, value in fields if sep}


def read_gpus(root: Path = Path("/")) -> dict[int, Gpu]:
    """The NVIDIA GPUs the driver knows, by device minor number; none without the driver."""
    gpus = {}
    for entry in sorted((root / NVIDIA_GPUS).glob("*")):
        info = _gpu_info(_read(entry / "information") or "")
        minor = info.get("Device Minor", "")
        if not minor.isdigit():
            continue
        pci = info.get("Bus Location", entry.name).lower()
        device = root / SYS_PCI / pci
        node_text = (_read(device / "numa_node") or "-1").strip()
        node = int(node_text) if node_text.lstrip("-").isdigit() and int(node_text) >= 0 else None
        gpus[int(minor)] = Gpu(int(minor), pci, node, _cpulist_file(device / "local_cpulist"))
    return gpus


def used_gpu_minors(pid: int, root: Path = Path("/")) -> tuple[int, ...]:
    """Minor numbers of the GPUs process pid has a context on; () when none,
    when it is gone, or when it is not ours to look at (another user's).

    On an H200 host (driver 580) every CUDA process holds every /dev/nvidiaN
    open and maps a few write-only pages of each, whatever it uses (even with
    CUDA_VISIBLE_DEVICES); a context on a GPU adds a read-write shared mapping
    of that GPU's file (docs/results/h200/gpu-map/)."""
    try:
        lines = (root / "proc" / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return ()
    minors = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or not fields[1].startswith("rw") or fields[1][3:] != "s":
            continue
        match = GPU_DEVICE.fullmatch(fields[5])
        if match:
            minors.add(int(match[1]))
    return tuple(sorted(minors))


def process_gpus(pid: int, root: Path = Path("/"),
                 gpus: dict[int, Gpu] | None = None) -> list[Gpu]:
    """The GPUs process pid uses (gpus: read_gpus(root), when the caller has it)."""
    known = read_gpus(root) if gpus is None else gpus
    return [known[m] for m in used_gpu_minors(pid, root) if m in known]


def gpu_cpus(gpus: list[Gpu], cpus: list[Cpu]) -> tuple[int, ...]:
    """The CPUs local to any of gpus: their local_cpulist, else their node's
    CPUs; () when none of them says where it sits."""
    local: set[int] = set()
    for gpu in gpus:
        if gpu.local_cpus:
            local.update(gpu.local_cpus)
        elif gpu.node is not None:
            local.update(c.cpu for c in cpus if c.node == gpu.node)
    return tuple(sorted(local))


def tgid(tid: int, root: Path = Path("/")) -> int | None:
    """The process (thread group) of thread tid; None once it is gone."""
    status = _read(root / "proc" / str(tid) / "status") or ""
    found = re.search(r"^Tgid:\s*(\d+)", status, re.M)
    return int(found[1]) if found else None


def gpu_processes(ids: list[int], root: Path = Path("/")) -> dict[int, list[Gpu]]:
    """The processes of tagged thread (or process) ids, each with the GPUs it
    uses (none known: an empty list)."""
    known = read_gpus(root)
    pids = {pid for pid in (tgid(i, root) for i in ids) if pid is not None}
    return {pid: process_gpus(pid, root, known) for pid in sorted(pids)}
