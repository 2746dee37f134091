"""`--quota auto`: the batch quota as a closed loop on the gpu tier's waits.

Once per control period the controller reads the gpu tier's run-queue wait
histogram for that period (the scheduler's own) and moves the quota: one
step up while the wait p99 is within the target, or while the gpu tier
hardly ran (nothing to protect); halved at once when the target is missed;
always between a minimum and a maximum. Additive increase, multiplicative
decrease: batch probes for spare CPU slowly and backs off fast when the
threads feeding the GPU start to wait.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.intf import QuotaMode, Stats, Tier, Tunables
from scx_gpu.controlplane.scheduler import BpfScheduler
from scx_gpu.controlplane.stats import diff, wait_quantile_ns

# Fewer gpu-tier runs than this in a period: the tier is idle, its p99 noise.
MIN_GPU_RUNS = 20


@dataclass(frozen=True)
class Change:
    before: int
    after: int
    reason: str
    at: float  # wall-clock time, for status

    def line(self) -> str:
        return f"batch quota {self.before}% -> {self.after}%: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QuotaController:
    target_us: float
    low: int
    high: int
    step: int
    quota: int

    def decide(self, gpu_wait_hist: list[int]) -> Change | None:
        """The change this period's histogram calls for, applied to self.quota."""
        runs = sum(gpu_wait_hist)
        if runs < MIN_GPU_RUNS:
            want, reason = self.quota + self.step, f"gpu tier idle ({runs} runs)"
        else:
            p99_us = wait_quantile_ns(gpu_wait_hist, 0.99) / 1000
            if p99_us <= self.target_us:
                want = self.quota + self.step
                reason = f"gpu wait p99 {p99_us:.0f} us within the {self.target_us:g} us target"
            else:
                want = self.quota // 2
                reason = f"gpu wait p99 {p99_us:.0f} us over the {self.target_us:g} us target"
        after = min(self.high, max(self.low, want))
        if after == self.quota:
            return None
        change = Change(self.quota, after, reason, time.time())
        self.quota = after
        return change


class AutoQuota:
    """Drives a loaded scheduler's quota once per control period while the
    tunables' quota mode is auto (`scx-gpu quota set` switches it, in the same
    update as a fixed quota); on_change gets every change (the loader logs it and keeps the
    last one for status). Runs on its own thread, so the period holds while
    the loader's loop is busy (attaching probes takes a while under emulation)."""

    def __init__(self, config: Config, sched: BpfScheduler,
                 on_change: Callable[[Change], None]) -> None:
        self.config, self.sched, self.on_change = config, sched, on_change
        c = config
        self.controller = QuotaController(c.gpu_wait_target_us, c.auto_quota_min,
                                          c.auto_quota_max, c.auto_quota_step, c.start_quota())
        self.before: Stats | None = sched.read_stats()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scx-gpu-autoquota", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.config.auto_quota_period_s):
            self.tick()

    def close(self) -> None:
        self.done.set()
        self.thread.join()

    def tick(self) -> None:
        if self.sched.read_tunables().quota_mode != QuotaMode.AUTO:
            self.before = None  # fixed: no period to measure until auto again
            return
        current = self.sched.read_stats()
        if self.before is None:
            self.before = current
            return
        hist = list(diff(current, self.before).tier[Tier.GPU].wait_hist)
        self.before = current
        changes = []

        def step(tun: Tunables) -> bool:
            if tun.quota_mode != QuotaMode.AUTO:
                return False  # fixed: `quota set N` owns the quota
            self.controller.quota = tun.batch_quota_pct  # from where it is, as set last
            change = self.controller.decide(hist)
            if change is None:
                return False
            tun.batch_quota_pct = change.after
            changes.append(change)
            return True
        self.sched.update_tunables(step)
        for change in changes:
            self.on_change(change)
