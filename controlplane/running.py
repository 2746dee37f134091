"""A handle on the running scheduler: its pinned maps, opened once.

`status`, `quota get` and `quota set` read and change the scheduler that
`scx-gpu load` runs through this.
"""

from __future__ import annotations

from collections.abc import Callable
from ctypes import c_int64, c_uint32
from pathlib import Path
from types import TracebackType
from typing import Any

from scx_gpu.bpf import libbpf, maps
from scx_gpu.controlplane import intf
from scx_gpu.controlplane.runstate import run_state
from scx_gpu.controlplane.scheduler import (
    PIN_DIR,
    ZERO,
    live_gpu_tags,
    update_tunables,
)

OpenMap = Callable[[str], int]
MAPS = ("stats", "tunables", "tier_tasks", "gpu_tags")


def open_pinned(pin_dir: Path = PIN_DIR) -> OpenMap:
    return lambda name: maps.open_pinned(str(pin_dir / name))


class RunningScheduler:
    """Statistics, tunables, the quota, tier counts and gpu tags of the loaded scheduler."""

    def __init__(self, open_map: OpenMap | None = None) -> None:
        opener = open_map or open_pinned()
        self.fds: dict[str, int] = {}
        try:
            for name in MAPS:
                self.fds[name] = opener(name)
        except BaseException:
            self.close()
            raise
        self.ncpus = libbpf.num_possible_cpus()

    def __enter__(self) -> RunningScheduler:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for fd in self.fds.values():
            maps.close(fd)
        self.fds.clear()

    def stats(self) -> intf.Stats:
        return maps.sum_percpu(self.fds["stats"], ZERO, intf.Stats, self.ncpus)

    def cpu_stats(self) -> list[intf.Stats]:
        """Each CPU's own counters, by CPU number: the work it ran, not who asked."""
        return maps.lookup_percpu(self.fds["stats"], ZERO, intf.Stats, self.ncpus)

    def tunables(self) -> intf.Tunables:
        return maps.lookup(self.fds["tunables"], ZERO, intf.Tunables) or intf.Tunables()

    def set_quota(self, quota: int | str) -> None:
        """A percentage (fixed from then on) or "auto" (the loader's loop takes over)."""
        def change(tun: intf.Tunables) -> bool:
            tun.quota_mode = intf.QuotaMode.AUTO if quota == "auto" else intf.QuotaMode.FIXED
            if isinstance(quota, int):
                tun.batch_quota_pct = quota
            return True
        update_tunables(self.fds["tunables"], change)

    def tier_tasks(self) -> dict[str, int]:
        """Tasks in each tier now."""
        return {tier.name.lower(): (maps.lookup(self.fds["tier_tasks"], c_uint32(tier), c_int64)
                                    or c_int64()).value for tier in intf.Tier}

    def gpu_tags(self) -> list[int]:
        """Thread (or process) ids whose gpu tag is alive."""
        return live_gpu_tags(self.fds["gpu_tags"], self.tunables().gpu_ttl_ns)

    def run_state(self) -> dict[str, Any]:
        """What its loader wrote about itself: pid, configuration, last quota change."""
        return run_state()

    def quota_line(self) -> str:
        tun = self.tunables()
        return (f"{tun.batch_quota_pct}% of all CPUs per {tun.batch_period_ns // 10**6} ms "
                f"({intf.QuotaMode(tun.quota_mode).name.lower()})")
