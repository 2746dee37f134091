"""The gpu budgets under the mainline fallback: a launch tag is a claim any
local user can make, so the renice that it earns is metered like the
sched_ext scheduler's gpu tier (sched/bpf/scx_gpu.bpf.c): all the CPU time of
a process's tagged threads against proc_pct % of all CPUs, and of all
tagged threads against tier_pct %, as token buckets (GCRA) that bank
bank_s and owe at most period_s. Here the threads' run time comes from
/proc/TID/schedstat at each call.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scx_gpu.controlplane import topology


def thread_runtime_s(tid: int) -> float | None:
    """CPU time the thread has run, in seconds; None once it is gone."""
    try:
        return int(Path(f"/proc/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Bucket:
    """When the bucket is empty again (the theoretical arrival time)."""

    rate: float  # CPU seconds it is refilled per second
    tat: float = 0.0

    def charge(self, used_s: float, now: float, bank_s: float, period_s: float) -> None:
        self.tat = min(max(self.tat, now) + used_s / self.rate, now + bank_s + period_s)

    def over(self, now: float, bank_s: float) -> bool:
        return self.tat - now > bank_s


@dataclass
class GpuBudget:
    proc_pct: int
    tier_pct: int
    ncpus: int
    period_s: float
    bank_s: float
    runtime: Callable[[int], float | None] = thread_runtime_s
    tgid: Callable[[int], int | None] = topology.tgid
    clock: Callable[[], float] = time.monotonic
    _last: dict[int, float] = field(default_factory=dict)  # tid -> run time at the last call
    _procs: dict[int, Bucket] = field(default_factory=dict)
    _tier: Bucket | None = None

    def within(self, tids: Iterable[int]) -> set[int]:
        """Charge what each tagged thread ran since the last call; those of
        them whose process and the tier are within budget."""
        now = self.clock()
        tier = self._tier or Bucket(self.tier_pct / 100 * self.ncpus)
        self._tier = tier
        by_proc: dict[int, list[int]] = {}
        seen: dict[int, float] = {}
        for tid in tids:
            ran, tgid = self.runtime(tid), self.tgid(tid)
            if ran is None or tgid is None:
                continue
            used = ran - self._last.get(tid, ran)
            seen[tid] = ran
            by_proc.setdefault(tgid, []).append(tid)
            bucket = self._procs.setdefault(tgid, Bucket(self.proc_pct / 100 * self.ncpus))
            bucket.charge(used, now, self.bank_s, self.period_s)
            tier.charge(used, now, self.bank_s, self.period_s)
        self._last = seen
        self._procs = {tgid: self._procs[tgid] for tgid in by_proc}
        if tier.over(now, self.bank_s):
            return set()
        return {tid for tgid, members in by_proc.items()
                if not self._procs[tgid].over(now, self.bank_s) for tid in members}
