"""Turn the scheduler's counters into the numbers users read."""

from ctypes import c_uint64, sizeof
from dataclasses import dataclass
from operator import sub
from typing import Any, Protocol

from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS
from scx_gpu.controlplane.intf import Stats, Tier


def diff(now: Stats, before: Stats) -> Stats:
    """Counters accumulated between two snapshots (every field is a u64 counter)."""
    words = c_uint64 * (sizeof(Stats) // 8)
    return Stats.from_buffer_copy(words(*map(sub, words.from_buffer_copy(now),
                                               words.from_buffer_copy(before))))


def hits_by_entry_point(stats: Stats) -> dict[str, int]:
    """The launch probes' hits by entry point, those hit only."""
    return {s: n for s, n in zip(LAUNCH_SYMBOLS, stats.site_hits, strict=True) if n}


def _quantile_bucket(hist: list[int], q: float) -> tuple[int, float] | None:
    """The log2 bucket holding quantile q and how far into it the quantile's
    rank falls (0-1], or None for an empty histogram."""
    total = sum(hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for bucket, count in enumerate(hist):
        if count and seen + count >= rank:
            return bucket, (rank - seen) / count
        seen += count
    return len(hist) - 1, 1.0


def wait_percentile_ns(hist: list[int], q: float) -> int:
    """Upper bound of the log2 bucket holding quantile q (0 if empty)."""
    found = _quantile_bucket(hist, q)
    return 0 if found is None else 2 << found[0]


def wait_quantile_ns(hist: list[int], q: float) -> float:
    """Quantile q, interpolated linearly inside its log2 bucket [2^b, 2^(b+1))
    (0 if empty): an estimate, where wait_percentile_ns is a bound."""
    found = _quantile_bucket(hist, q)
    if found is None:
        return 0.0
    bucket, into = found
    return (1 << bucket) * (1 + into)


class Report(Protocol):
    """One interval's statistics, as `scx-gpu load` prints them."""

    def as_dict(self) -> dict[str, Any]: ...

    def line(self) -> str: ...


@dataclass
class Summary:
    interval_s: float
    stats: Stats
    quota_pct: int
    duty_cycle: float

    def as_dict(self) -> dict[str, Any]:
        tiers = {}
        for tier in Tier:
            ts = self.stats.tier[tier]
            hist = list(ts.wait_hist)
            tiers[tier.name.lower()] = {
                "cpu_pct": 100.0 * ts.runtime_ns / 1e9 / self.interval_s if self.interval_s else 0,
                "runtime_s": ts.runtime_ns / 1e9,
                "runs": ts.runs,
                "preemptions": ts.preemptions,
                "wait_p50_us": wait_percentile_ns(hist, 0.50) / 1000,
                "wait_p99_us": wait_percentile_ns(hist, 0.99) / 1000,
                "wait_hist": hist,
            }
        return {
            "interval_s": self.interval_s,
            "tiers": tiers,
            "batch_quota_pct": self.quota_pct,
            "batch_throttled_ms": self.stats.batch_throttled_ns / 1e6,
            "floor_dispatches": self.stats.floor_dispatches,
            "slice_kicks": self.stats.slice_kicks,
            "detector_hits": self.stats.detector_hits,
            "detector_hits_by_entry": hits_by_entry_point(self.stats),
            "cpu_mismatches": self.stats.cpu_mismatches,
            "classifications": self.stats.classifications,
            "budget_demotions": self.stats.budget_demotions,
            "rcu_readers": self.stats.rcu_readers,
            "detector_duty_pct": 100.0 * self.duty_cycle,
        }

    def line(self) -> str:
        return line(self.as_dict())


def line(summary: dict[str, Any]) -> str:
    """The statistics line `scx-gpu load` and `--monitor` print, of Summary.as_dict()."""
    parts = [f"{name}: cpu {t['cpu_pct']:5.1f}% runs {t['runs']:6d} "
             f"wait p99 {t['wait_p99_us']:8.0f}us" for name, t in summary["tiers"].items()]
    return (" | ".join(parts) + f" | quota {summary['batch_quota_pct']}% throttled "
            f"{summary['batch_throttled_ms']:.0f}ms floor {summary['floor_dispatches']} "
            f"hits {summary['detector_hits']} duty {summary['detector_duty_pct']:.0f}%")


@dataclass
class FallbackSummary:
    """The mainline fallback's statistics over interval_s: it has no tiers'
    run queues to measure, so what nice and the batch cgroup did instead."""

    interval_s: float
    reniced: int  # gpu threads at the fallback's nice now
    demotions: int  # of them given their own nice back by the gpu budgets
    batch_processes: int
    batch_cpu_ns: int | None  # None where the cgroup does not count it (v1)
    batch_throttled_ns: int
    quota_pct: int
    detector_hits: int
    duty_cycle: float

    def as_dict(self) -> dict[str, Any]:
        cpu = self.batch_cpu_ns
        return {
            "interval_s": self.interval_s,
            "gpu_threads_reniced": self.reniced,
            "budget_demotions": self.demotions,
            "batch_processes": self.batch_processes,
            "batch_cpu_pct": None if cpu is None or not self.interval_s else
            100.0 * cpu / 1e9 / self.interval_s,
            "batch_quota_pct": self.quota_pct,
            "batch_throttled_ms": self.batch_throttled_ns / 1e6,
            "detector_hits": self.detector_hits,
            "detector_duty_pct": 100.0 * self.duty_cycle,
        }

    def line(self) -> str:
        d = self.as_dict()
        cpu = "n/a" if d["batch_cpu_pct"] is None else f"{d['batch_cpu_pct']:5.1f}%"
        return (f"gpu: reniced {d['gpu_threads_reniced']:4d} threads, over budget "
                f"{d['budget_demotions']} | batch: cpu {cpu} "
                f"processes {d['batch_processes']:4d} | quota {d['batch_quota_pct']}% throttled "
                f"{d['batch_throttled_ms']:.0f}ms hits {d['detector_hits']} "
                f"duty {d['detector_duty_pct']:.0f}%")
