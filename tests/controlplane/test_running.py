"""The handle on the running scheduler, on a scheduler object loaded on the
host (detector and maps only: no sched_ext needed)."""

import ctypes
import itertools
import os
import random
import threading
import time
from collections.abc import Iterator

import pytest

from scx_gpu.bpf import maps
from scx_gpu.controlplane import autoquota, intf, loader
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.intf import QuotaMode
from scx_gpu.controlplane.placement import placement
from scx_gpu.controlplane.running import RunningScheduler
from scx_gpu.controlplane.scheduler import ZERO, BpfScheduler
from scx_gpu.controlplane.topology import read_cpus

pytestmark = pytest.mark.root
CONFIG = Config(quota="auto", auto_quota_period_s=0.001)
DECIDE_S = 0.002  # each control step holds its read of the tunables this long


@pytest.fixture
def sched() -> Iterator[BpfScheduler]:
    obj = BpfScheduler()
    try:
        obj.detector_only()
        obj.set_options(loader.read_only_options(CONFIG, placement(read_cpus())))
        obj.load()
        obj.write_tunables(loader.tunables(CONFIG))
        yield obj
    finally:
        obj.close()


def _handle(sched: BpfScheduler) -> RunningScheduler:
    return RunningScheduler(lambda name: os.dup(sched.map_fd(name)))


def test_reads_what_the_loader_wrote(sched):
    with _handle(sched) as running:
        tun = running.tunables()
        assert (tun.batch_quota_pct, tun.quota_mode) == (CONFIG.auto_quota_min, QuotaMode.AUTO)
        assert running.quota_line() == f"{CONFIG.auto_quota_min}% of all CPUs per 100 ms (auto)"
        assert running.tier_tasks() == {"gpu": 0, "normal": 0, "batch": 0}
        assert running.gpu_tags() == [] and running.stats().detector_hits == 0
        assert len(running.cpu_stats()) == running.ncpus


def test_quota_set_is_never_overwritten_by_the_auto_quota_loop(sched, monkeypatch):
    """`quota set N` lands while the loop is between its read of the tunables
    and its write (it steps the quota up every period: the gpu tier is idle
    here); each fixed N must stick."""
    deciding = threading.Event()
    decide = autoquota.QuotaController.decide

    def slow_decide(self, hist):
        deciding.set()
        time.sleep(DECIDE_S)
        return decide(self, hist)

    monkeypatch.setattr(autoquota.QuotaController, "decide", slow_decide)
    changes: list[autoquota.Change] = []
    loop = autoquota.AutoQuota(CONFIG, sched, changes.append)
    lost = []
    try:
        with _handle(sched) as running:
            for fixed in random.sample(range(10, 60), 20):
                running.set_quota("auto")
                deciding.clear()
                assert deciding.wait(5), "the loop did not run"
                running.set_quota(fixed)
                time.sleep(10 * DECIDE_S)  # the loop's next steps see the fixed mode
                tun = running.tunables()
                if (tun.quota_mode, tun.batch_quota_pct) != (QuotaMode.FIXED, fixed):
                    lost.append((fixed, tun.quota_mode, tun.batch_quota_pct))
    finally:
        loop.close()
    assert changes, "the loop changed nothing"
    assert lost == []


def test_a_new_tag_life_comes_with_a_new_tier_generation(sched):
    # A task classified normal once its tag lapsed under a short life keeps
    # that tier until the generation changes: a launch under a longer life,
    # where the same tag is still live, is no new tag to the probe.
    with _handle(sched) as running:
        before = running.tunables()
        sched.set_tag_life(5_800_000_000)
        after = running.tunables()
    assert after.gpu_ttl_ns == 5_800_000_000 and after.tier_gen == before.tier_gen + 1
    assert after.batch_quota_pct == before.batch_quota_pct  # the rest as it was


def test_counters_are_every_cpus_added_up(sched):
    words = ctypes.sizeof(intf.Stats) // 8
    per_cpu = [[random.randrange(1 << 40) for _ in range(words)] for _ in range(sched.ncpus)]
    maps.update(sched.map_fd("stats"), ZERO,
                (ctypes.c_uint64 * (words * sched.ncpus))(*itertools.chain(*per_cpu)))
    expected = [sum(column) for column in zip(*per_cpu, strict=True)]
    with _handle(sched) as running:
        for total in (running.stats(), sched.read_stats()):
            assert list((ctypes.c_uint64 * words).from_buffer_copy(total)) == expected
        assert [list((ctypes.c_uint64 * words).from_buffer_copy(s))
                for s in running.cpu_stats()] == per_cpu


def test_the_exit_record_is_read_from_the_kernels_own_bss(sched):
    """The loader reads it where libbpf maps .bss, not through a syscall: a
    write to the kernel's map must show there."""
    assert sched.exit_info().kind == intf.EXIT_NONE
    layout = sched.section_vars(".bss")
    value = (ctypes.c_char * max(offset + size for offset, size in layout.values()))()
    offset = layout["exit_info"][0]
    record = intf.ExitInfo(kind=intf.EXIT_ERROR, exit_code=7, reason=b"stalled")
    ctypes.memmove(ctypes.addressof(value) + offset, ctypes.addressof(record),
                   ctypes.sizeof(record))
    maps.update(sched.map_fd(".bss"), ZERO, value)
    seen = sched.exit_info()
    assert (seen.kind, seen.exit_code, seen.reason) == (intf.EXIT_ERROR, 7, b"stalled")
