"""The mainline fallback: gpu-first on a kernel without sched_ext.

The same uprobes tag GPU-launching threads; a tagged thread runs at nice
GPU_NICE while its tag lives. Batch work runs in a cgroup with cpu.idle=1
(the idle class's weight: it yields to everything else) and the quota as a
CPU bandwidth limit (cgroup v2 cpu.max, or the v1 cpu controller's CFS
quota on hybrid hosts). Everything is undone on exit: nice values restored,
members moved back to their cgroups, the group removed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scx_gpu.controlplane.cgroups import CGROUP_ROOT, cgroup_path, cpu_stat, processes
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.gpubudget import GpuBudget
from scx_gpu.controlplane.scheduler import live_gpu_tags
from scx_gpu.controlplane.tiers import exec_command
from scx_gpu.errors import EnvironmentProblem, UsageError

GPU_NICE = -10
GROUP_NAME = "scx-gpu-fallback-batch"
V1_CPU_ROOT = Path("/sys/fs/cgroup/cpu")
SUBTREE_CONTROL = CGROUP_ROOT / "cgroup.subtree_control"  # controllers of the root's children
WEAKER = ("mainline fallback (no sched_ext here), a weaker guarantee: gpu threads are "
          f"reniced to {GPU_NICE} after their first detected launch but still share CPUs with "
          "other work by weight, and batch runs in an idle cgroup that still gets a sliver "
          "of CPU under load")


def _v2_has_cpu() -> bool:
    controllers = CGROUP_ROOT / "cgroup.controllers"
    return controllers.is_file() and "cpu" in controllers.read_text().split()


class CpuGroup:
    """The batch group: a cgroup with cpu.idle=1 and a bandwidth limit."""

    def __init__(self) -> None:
        self.enabled_cpu = False  # we turned the cpu controller on below the v2 root
        if _v2_has_cpu():
            self.v2, self.root = True, CGROUP_ROOT
            if "cpu" not in SUBTREE_CONTROL.read_text().split():
                SUBTREE_CONTROL.write_text("+cpu")
                self.enabled_cpu = True
        elif (V1_CPU_ROOT / "cpu.idle").is_file():
            self.v2, self.root = False, V1_CPU_ROOT
        else:
            raise EnvironmentProblem(
                "the mainline fallback needs the cpu cgroup controller with cpu.idle (cgroup v2,"
                " or the v1 cpu controller, kernel >= 5.15)")
        self.path = self.root / GROUP_NAME
        self.origins: dict[int, str] = {}
        self.cpu_max = "max"  # the group's v2 bandwidth limit, once created

    def create(self, quota_pct: int, period_ms: int, ncpus: int) -> None:
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.idle").write_text("1")
        period_us = period_ms * 1000
        quota_us = period_us * ncpus * quota_pct // 100
        unlimited = quota_pct >= 100
        self.cpu_max = "max" if unlimited else f"{max(quota_us, 1000)} {period_us}"
        if self.v2:
            (self.path / "cpu.max").write_text(self.cpu_max)
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(
                "-1" if unlimited else str(max(quota_us, 1000)))

    def _origin(self, pid: int) -> str | None:
        """pid's cgroup in this hierarchy, from /proc/PID/cgroup."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if (self.v2 and controllers == "") or (
                    not self.v2 and "cpu" in controllers.split(",")):
                return path
        return None

    def add(self, pid: int) -> None:
        """Move process pid into the group, remembering where it was."""
        if pid in self.origins:
            return
        origin = self._origin(pid)
        if origin is None or origin == f"/{GROUP_NAME}":
            return
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except (ProcessLookupError, FileNotFoundError):
            return  # it exited meanwhile
        self.origins[pid] = origin

    def remove(self) -> None:
        """Move every member back where it came from (or to the root), remove the
        group, and turn the cpu controller off again if we turned it on (left on,
        each cgroup competes as one entity: SCHED_IDLE inside one no longer
        yields to the rest of the machine)."""
        if self.path.is_dir():
            for pid in processes(self.path):
                home = self.root / self.origins.get(pid, "/").lstrip("/")
                try:
                    (home / "cgroup.procs").write_text(str(pid))
                except OSError:
                    (self.root / "cgroup.procs").write_text(str(pid))
            self.path.rmdir()
        self.origins.clear()
        if self.enabled_cpu:
            with contextlib.suppress(OSError):  # EBUSY: a child enabled it since; it stays
                SUBTREE_CONTROL.write_text("-cpu")
            self.enabled_cpu = False


@dataclass(frozen=True)
class BatchUsage:
    """What the batch group and the declared cgroups have used so far."""

    processes: int
    cpu_ns: int | None  # None: the v1 cpu controller does not count CPU time
    throttled_ns: int  # held back by the quota


def _processes() -> Iterator[tuple[int, str]]:
    for comm_file in Path("/proc").glob("[0-9]*/comm"):
        try:
            yield int(comm_file.parent.name), comm_file.read_text().strip()
        except (OSError, ValueError):
            continue


def comm_matcher(patterns: list[str]) -> re.Pattern[str] | None:
    """One regex for exact names and "prefix*" patterns."""
    if not patterns:
        return None
    alternatives = [re.escape(p[:-1]) + ".*" if p.endswith("*") else re.escape(p)
                    for p in patterns]
    return re.compile("|".join(alternatives))


class Renicer:
    """Gives tagged threads GPU_NICE while their tag lives and their process
    is within the gpu budgets, then their own nice back."""

    def __init__(self, tags_fd: int, ttl_ns: Callable[[], int], whole_process: bool,
                 budget: GpuBudget) -> None:
        self.tags_fd, self.ttl_ns, self.whole_process = tags_fd, ttl_ns, whole_process
        self.budget = budget
        self.raised: dict[int, int] = {}  # tid -> its nice before
        self.demotions = 0  # reniced threads given their nice back while still tagged

    def _threads(self, key: int) -> list[int]:
        if not self.whole_process:
            return [key]
        try:
            return [int(t.name) for t in Path(f"/proc/{key}/task").iterdir()]
        except OSError:
            return []

    def live(self) -> set[int]:
        alive: set[int] = set()
        for key in live_gpu_tags(self.tags_fd, self.ttl_ns()):
            alive.update(self._threads(key))
        return alive

    def tick(self) -> None:
        tagged = self.live()
        alive = self.budget.within(tagged)
        self.demotions += len((set(self.raised) & tagged) - alive)
        for tid in alive - set(self.raised):
            try:
                before = os.getpriority(os.PRIO_PROCESS, tid)
                if before > GPU_NICE:
                    os.setpriority(os.PRIO_PROCESS, tid, GPU_NICE)
                    self.raised[tid] = before
            except ProcessLookupError:
                continue
        for tid in set(self.raised) - alive:
            self._restore(tid)

    def _restore(self, tid: int) -> None:
        before = self.raised.pop(tid)
        with contextlib.suppress(ProcessLookupError):  # the thread is gone
            os.setpriority(os.PRIO_PROCESS, tid, before)

    def restore_all(self) -> None:
        for tid in list(self.raised):
            self._restore(tid)


class BatchMembers:
    """Puts the configured batch work in the group, now and as it appears.

    A declared cgroup (v2) is not moved: it gets cpu.idle=1 and the group's
    bandwidth limit in place (each declared cgroup its own quota), and both
    settings back on exit.
    """

    SETTINGS = ("cpu.idle", "cpu.max")

    def __init__(self, config: Config, group: CpuGroup) -> None:
        self.group = group
        self.pids = list(config.batch.pids)
        self.comms = comm_matcher(config.batch.comms)
        self.saved: dict[Path, dict[str, str]] = {}
        if config.batch.cgroups and not group.v2:
            raise UsageError("--batch-cgroup needs cgroup v2 with the cpu controller; this host"
                             " has the v1 cpu controller: use --batch-comm or --batch-pid")
        for spec in config.batch.cgroups:
            path = cgroup_path(spec)
            if not all((path / name).is_file() for name in self.SETTINGS):
                raise UsageError(f"--batch-cgroup {spec}: not a cgroup v2 group under the cpu "
                                 "controller")
            self.saved[path] = {name: (path / name).read_text().strip()
                                for name in self.SETTINGS}

    def declare(self) -> None:
        for path in self.saved:
            (path / "cpu.idle").write_text("1")
            (path / "cpu.max").write_text(self.group.cpu_max)

    def scan(self) -> None:
        for pid in self.pids:
            self.group.add(pid)
        if self.comms:
            for pid, comm in _processes():
                if self.comms.fullmatch(comm):
                    self.group.add(pid)

    def usage(self) -> BatchUsage:
        cgroups = [self.group.path, *self.saved]
        stats = [cpu_stat(path) for path in cgroups]
        count = sum(len(processes(path)) for path in cgroups)
        if not self.group.v2:  # v1 cpu.stat: throttled_time in ns, no usage
            return BatchUsage(count, None, sum(s.get("throttled_time", 0) for s in stats))
        return BatchUsage(count, 1000 * sum(s.get("usage_usec", 0) for s in stats),
                          1000 * sum(s.get("throttled_usec", 0) for s in stats))

    def undo(self) -> None:
        for path, settings in self.saved.items():
            for name, value in settings.items():
                try:
                    (path / name).write_text(value)
                except OSError:
                    continue  # the cgroup is gone


def exec_in_fallback(tier: str, cmd: list[str], batch_group: Path) -> None:
    """`scx-gpu run` under the fallback: batch joins the idle group, gpu gets GPU_NICE."""
    if tier == "batch":
        (batch_group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    else:
        os.setpriority(os.PRIO_PROCESS, 0, GPU_NICE)
    exec_command(cmd)
