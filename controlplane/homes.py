"""GPU locality: the home CPUs of each GPU process and of the rest of its cgroup.

A home is the set of CPUs local to the GPUs a process has a context on
(topology.gpu_cpus), or `--gpu-cpus` for all gpu work. The processes looked
at are those of live launch tags and the gpu tier's explicit pids and cgroup
members. Each gets its home by process id, and its cgroup gets that home
when every such process in the cgroup agrees: a serving stack's API server
and helpers hold no GPU file, and moving the GPU holder alone split vLLM's
request path across nodes (sched-ext/scx pull request 3772). The root
cgroup gets none (it would be every process's).

Everything reads below a root directory ("/"; tests point it at a fake
/proc and /sys); HomeMaps writes the result into the scheduler's maps.
"""

from __future__ import annotations

from collections.abc import Iterable
from ctypes import c_uint32, c_uint64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from scx_gpu.bpf import maps
from scx_gpu.controlplane import intf
from scx_gpu.controlplane.cgroups import CGROUP_ROOT, processes
from scx_gpu.controlplane.topology import (
    Cpu,
    Gpu,
    format_cpulist,
    gpu_cpus,
    process_gpus,
    tgid,
)

ROOT_CGROUP = "/"


@dataclass(frozen=True)
class Homes:
    cpus: dict[int, tuple[int, ...]] = field(default_factory=dict)  # home -> its CPUs
    processes: dict[int, int] = field(default_factory=dict)  # tgid -> home
    cgroups: dict[str, int] = field(default_factory=dict)  # cgroup v2 path ("/a/b") -> home

    def away(self, cpus: Iterable[int]) -> tuple[int, ...]:
        """Of cpus, those outside every home; () when no home is in use."""
        if not self.cpus:
            return ()
        inside = {c for home in self.cpus.values() for c in home}
        return tuple(sorted(set(cpus) - inside))

    def describe(self) -> str:
        """One line: each home's CPUs and how many processes and cgroups live there."""
        parts = []
        for home, cpus in sorted(self.cpus.items()):
            procs = sum(h == home for h in self.processes.values())
            groups = sum(h == home for h in self.cgroups.values())
            parts.append(f"home {home}: CPUs {format_cpulist(cpus)} ({procs} process"
                         f"{'es' * (procs != 1)}, {groups} cgroup{'s' * (groups != 1)})")
        return "GPU locality: " + ("; ".join(parts) or "no homes")


def process_cgroup(pid: int, root: Path = Path("/")) -> str | None:
    """The cgroup v2 path of process pid ("/a/b"); None once it is gone."""
    try:
        lines = (root / "proc" / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    return next((line[len("0::"):] for line in lines if line.startswith("0::")), None)


def candidates(tagged: Iterable[int], pids: Iterable[int], cgroups: Iterable[Path],
               root: Path = Path("/")) -> list[int]:
    """The processes whose homes to look for: of tagged thread (or process)
    ids and of pids, and the members of cgroups; at most MAX_GPU_PROCS."""
    found = {p for p in (tgid(i, root) for i in [*tagged, *pids]) if p is not None}
    for cgroup in cgroups:
        found.update(processes(cgroup))
    return sorted(found)[:intf.MAX_GPU_PROCS]


class HomeNumbers:
    """Stable numbers for sets of CPUs: a set keeps its number while in use."""

    def __init__(self, size: int = intf.MAX_HOMES) -> None:
        self.size = size
        self.numbers: dict[tuple[int, ...], int] = {}

    def renumber(self, needed: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
        """Numbers for needed (in first-seen order); sets past size get none."""
        wanted = list(dict.fromkeys(needed))
        self.numbers = {s: n for s, n in self.numbers.items() if s in wanted}
        free = sorted(set(range(self.size)) - set(self.numbers.values()), reverse=True)
        for cpus in wanted:
            if cpus not in self.numbers and free:
                self.numbers[cpus] = free.pop()
        return dict(self.numbers)


def home_cpus(pid: int, gpus: dict[int, Gpu], cpus: list[Cpu], override: tuple[int, ...],
              root: Path = Path("/")) -> tuple[int, ...]:
    """The CPUs process pid should run on: override, else those local to
    the GPUs it uses; () when none, or every CPU (no preference)."""
    if override:
        return override
    local = gpu_cpus(process_gpus(pid, root, gpus), cpus)
    return () if set(local) >= {c.cpu for c in cpus if c.online} else local


def assign(pids: Iterable[int], gpus: dict[int, Gpu], cpus: list[Cpu],
           override: tuple[int, ...], numbers: HomeNumbers, root: Path = Path("/")) -> Homes:
    """The home of each of pids that has one, and of the cgroups whose
    processes among pids agree on one."""
    wanted = {pid: home_cpus(pid, gpus, cpus, override, root) for pid in pids}
    wanted = {pid: local for pid, local in wanted.items() if local}
    number = {override: intf.GPU_CPUS_HOME} if override else numbers.renumber(wanted.values())
    procs = {pid: number[local] for pid, local in wanted.items() if local in number}
    # Under --gpu-cpus every gpu-tier task lives in its home, found or not.
    used = set(procs.values()) | ({intf.GPU_CPUS_HOME} if override else set())
    return Homes({n: s for s, n in number.items() if n in used}, procs,
                 _agreed_cgroups(procs, root))


def _agreed_cgroups(procs: dict[int, int], root: Path) -> dict[str, int]:
    """The cgroups (not the root) whose processes among procs share one
    home; at most MAX_GPU_CGROUPS."""
    cgroups: dict[str, set[int]] = {}
    for pid, home in procs.items():
        path = process_cgroup(pid, root)
        if path is not None and path != ROOT_CGROUP:
            cgroups.setdefault(path, set()).add(home)
    agreed = [(path, homes.pop()) for path, homes in cgroups.items() if len(homes) == 1]
    return dict(agreed[:intf.MAX_GPU_CGROUPS])


class HomeWriter(Protocol):
    def map_fd(self, name: str) -> int: ...
    def set_home(self, home: int, cpus: tuple[int, ...]) -> None: ...
    def next_generation(self) -> None: ...


class HomeMaps:
    """Homes written into the scheduler's maps, changes only; a change makes
    every task look its home up again."""

    def __init__(self, sched: HomeWriter, all_cpus: tuple[int, ...],
                 cgroup_root: Path = CGROUP_ROOT) -> None:
        self.sched = sched
        self.all_cpus = all_cpus
        self.cgroup_root = cgroup_root
        self.written = Homes()
        self.cgroup_ids: dict[int, int] = {}  # cgroup id -> home, as written

    def write(self, homes: Homes) -> None:
        changed = self._homes(homes) | self._processes(homes) | self._cgroups(homes)
        if changed:
            self.sched.next_generation()
        self.written = homes

    def _homes(self, homes: Homes) -> bool:
        old = self.written
        for home in set(old.cpus) | set(homes.cpus):
            if old.cpus.get(home) != homes.cpus.get(home):
                self.sched.set_home(home, homes.cpus.get(home, ()))
        away = homes.away(self.all_cpus)
        if away != old.away(self.all_cpus):
            self.sched.set_home(intf.AWAY_HOME, away)
        return old.cpus != homes.cpus

    def _processes(self, homes: Homes) -> bool:
        fd, old = self.sched.map_fd("gpu_proc_homes"), self.written.processes
        for pid in set(old) - set(homes.processes):
            maps.delete(fd, c_uint32(pid))
        for pid, home in homes.processes.items():
            if old.get(pid) != home:
                maps.update(fd, c_uint32(pid), c_uint32(home))
        return old != homes.processes

    def _cgroups(self, homes: Homes) -> bool:
        fd, ids = self.sched.map_fd("gpu_cgroup_homes"), {}
        for path, home in homes.cgroups.items():
            try:
                ids[(self.cgroup_root / path.lstrip("/")).stat().st_ino] = home
            except OSError:
                continue  # gone since its process was read
        for cgid in set(self.cgroup_ids) - set(ids):
            maps.delete(fd, c_uint64(cgid))
        for cgid, home in ids.items():
            if self.cgroup_ids.get(cgid) != home:
                maps.update(fd, c_uint64(cgid), c_uint32(home))
        changed, self.cgroup_ids = ids != self.cgroup_ids, ids
        return changed
