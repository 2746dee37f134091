"""The wait bound the scheduler is built around (sched/bpf/scx_gpu.bpf.c states it).

A runnable normal or batch task waits at most 2F + P + N * s / (C * f): F the
floor wait, P the quota period, N the runnable tasks of its tier, C the CPUs,
s the shortest slice and f the floor share, in which floor service runs.
"""

from scx_gpu.controlplane import intf

# Batch floor service counts against the quota: a quota below the floor share
# would leave starving batch tasks without it, past any bound.
MIN_QUOTA_PCT = intf.FLOOR_PCT


def wait_bound_s(floor_ms: float, period_ms: float, runnable: int, cpus: int) -> float:
    """Longest wait of a runnable normal or batch task, in seconds."""
    floor_cpus = cpus * intf.FLOOR_PCT / 100
    return (2 * floor_ms + period_ms) / 1000 + runnable * intf.MIN_SLICE_US / 1e6 / floor_cpus


def design_bound_s(floor_ms: float, period_ms: float) -> float:
    """The bound at DESIGN_RUNNABLE runnable tasks per CPU (independent of the CPU count)."""
    return wait_bound_s(floor_ms, period_ms, intf.DESIGN_RUNNABLE, 1)


def watchdog_margin_s() -> float:
    """The most a bound may be: half the kernel watchdog's timeout (ops.timeout_ms)."""
    return intf.TIMEOUT_MS / 1000 / 2
