"""The scheduler on an emulated two-socket machine: 8 vCPUs as 2 sockets x 2
cores x 2 threads, an L3 and a NUMA node per socket (CPUs 0-3 and 4-7; SMT
pairs 0-1, 2-3, ...). These tests share a boot of their own.

Timing under emulation is coarse (8 vCPUs on a host of 2 cores), so these
assert large effects only.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane import bounds
from scx_gpu.controlplane.cgroups import CGROUP_ROOT, processes
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.intf import Tier
from scx_gpu.controlplane.running import RunningScheduler
from scx_gpu.controlplane.runstate import run_state
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.tracer.session import TraceSession
from scx_gpu.workloads import program
from tests.helpers import (
    arm_dump,
    cpu_hogs,
    dump,
    dump_lines,
    ejection,
    enabled,
    in_tier,
    runnable_waits_s,
)

TOPOLOGY = "sockets=2,cores=2,threads=2"
pytestmark = pytest.mark.vm(topology=TOPOLOGY)
DOMAINS = ({0, 1, 2, 3}, {4, 5, 6, 7})
LAUNCHER, STUB = program("launcher"), program("libcuda.so.1")
PERIOD_MS = 100  # the default quota period
# The smallest run delay of a spinner that waits wrongly: a batch slice after each of its
# slices (kept behind the gpu hogs at home it would be about 0.7). Half of it is the bound:
# emulated vCPUs on 2 host cores gave a right one 0.06-0.08 (kthreads, host scheduling).
DEFAULTS = Config()
BEHIND_BATCH = DEFAULTS.batch_slice_us / (DEFAULTS.slice_us + DEFAULTS.batch_slice_us)


def test_each_llc_has_its_own_queues():
    with sc.loaded(quiet=False) as log, cpu_hogs(4, tier="batch", cpus="4-7"):
        sc.wait_for(lambda: "scheduling domains" in log.read_text(), 10, "the domains line")
        arm_dump()
        dump()
        lines = dump_lines()
        text = log.read_text()
    print(json.dumps({"dump": lines}))
    assert "2 scheduling domains: 0-3 | 4-7" in text, text
    for tier in ("gpu", "normal", "batch"):
        for where in ("domain 0:", "domain 1:", "per-CPU:"):
            assert sum(line.startswith(f"tier {tier}: {where}") for line in lines) == 1, lines
    assert sum(line.startswith("tier gpu: over budget:") for line in lines) == 1, lines


# A gpu-tier thread that spins, first on CPU 0 among the gpu hogs of domain 0,
# then allowed everywhere: prints the share of the next seconds it spent
# runnable but not running (its run delay) and the CPUs it ran on.
SPIN = """
import json, os, sys, time
def delay():
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9
def cpu():
    with open("/proc/thread-self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
os.sched_setaffinity(0, {0})
end = time.monotonic() + 1
while time.monotonic() < end:
    pass
os.sched_setaffinity(0, set(range(os.cpu_count())))
start, waited, cpus = time.monotonic(), delay(), {}
while (now := time.monotonic()) < start + float(sys.argv[1]):
    cpus[cpu()] = cpus.get(cpu(), 0) + 1
print(json.dumps({"run_delay": (delay() - waited) / (now - start), "cpus": cpus}))
"""


def test_a_gpu_thread_is_not_kept_behind_batch_in_the_other_domain():
    # Domain 0 is full of gpu work (3 hogs per CPU), domain 1 runs batch only
    # (2 hogs per CPU: no CPU there ever idles). The spinner must take a CPU
    # from batch in domain 1 rather than queue behind the gpu hogs at home.
    seconds = 4
    with sc.loaded("--quota", "100"), cpu_hogs(8, tier="batch", cpus="4-7"), \
            cpu_hogs(12, tier="gpu", cpus="0-3"):
        before, start = _batch_s(), time.monotonic()
        out = subprocess.run([*sc.SCX_GPU, "run", "--tier", "gpu", "--", sys.executable, "-c",
                              SPIN, str(seconds)], capture_output=True, text=True, timeout=120)
        batch_share = (_batch_s() - before) / ((time.monotonic() - start) * NPROC)
        assert enabled(), ejection()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    report["batch_share"] = batch_share
    print(json.dumps(report))
    ran = {int(c): n for c, n in report["cpus"].items()}
    on_domain_1 = sum(n for c, n in ran.items() if c in DOMAINS[1]) / sum(ran.values())
    assert on_domain_1 >= 0.9, report
    assert report["run_delay"] <= BEHIND_BATCH / 2, report
    # Batch keeps the rest of domain 1 (3 of 8 CPUs while the spinner runs, all
    # 4 while its Python starts): the test had batch to preempt.
    # 0.239 twice on the slower build machine of 2026-11-30: under emulation only
    # that batch was not shut out of domain 1.
    assert batch_share >= 0.20, report


def _batch_s() -> float:
    """Seconds the batch tier ran so far, by the scheduler's books (ops.running
    to ops.stopping). Not the spinners' own timing: with 8 vCPUs on 2 host
    cores a vCPU's host thread often waits between two clock reads, which
    looks to them like time not running (they timed batch at 3-4% of the
    CPUs while schedstat had its 4 CPUs 98% busy); nor cgroup CPU time,
    which this VM over-counts after idle gaps (spinners.c)."""
    return sum(_batch_ns_by_cpu().values()) / 1e9


def _run_ns() -> dict[int, int]:
    """Each CPU's time running tasks (not idle), ns, from /proc/schedstat: a
    clock, unlike /proc/stat's ticks, which an emulated vCPU misses when its
    host thread waits. The kernel's run time, which this VM over-counts after
    idle gaps (spinners.c): only an idling CPU's figure can grow, so it can
    make a batch-free sibling look busy, never a busy one look idle."""
    run = {}
    for line in Path("/proc/schedstat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            run[int(name[3:])] = int(fields[6])
    return run


def test_exclusive_smt_keeps_batch_off_gpu_siblings():
    # gpu hogs on CPUs 0 and 4; their siblings 1 and 5 must run no batch
    # while 6 batch hogs share the 4 CPUs left. With --gpu-smt shared (the
    # same test otherwise) batch kept 1 and 5 95-100% busy.
    seconds, siblings, others = 4, (1, 5), (2, 3, 6, 7)
    with sc.loaded("--gpu-smt", "exclusive", "--quota", "100"), \
            cpu_hogs(6, tier="batch"), cpu_hogs(2, tier="gpu", cpus="0,4"):
        time.sleep(1)  # the hogs' first moves settle
        before, batch_before, start = _run_ns(), _batch_ns_by_cpu(), time.monotonic()
        time.sleep(seconds)
        after, batch_after, took = _run_ns(), _batch_ns_by_cpu(), time.monotonic() - start
        assert enabled(), ejection()
    busy = {cpu: (after[cpu] - before[cpu]) / 1e9 / took for cpu in after}
    batch = {cpu: (batch_after[cpu] - batch_before[cpu]) / 1e9 / took for cpu in after}
    print(json.dumps({"cpu_busy": busy, "batch_busy": batch}))
    # Batch only: normal work (this test, the loader) may run beside a gpu
    # thread, and took 0.14-0.38 of a sibling here under emulation.
    assert all(batch[cpu] <= 0.05 for cpu in siblings), batch
    assert all(batch[cpu] >= 0.5 for cpu in others), batch  # batch ran, elsewhere


def _batch_ns_by_cpu() -> dict[int, int]:
    """Each CPU's batch run time so far, ns, by the scheduler's books (_batch_s)."""
    with RunningScheduler() as sched:
        return {cpu: s.tier[Tier.BATCH].runtime_ns for cpu, s in enumerate(sched.cpu_stats())}


# A batch task that spins and records its longest gap between two looks at
# the clock, the last one included (it may come long after the end).
GAPS = """
import os, sys, time
if sys.argv[3] != "any":
    os.sched_setaffinity(0, {int(sys.argv[3])})
end, last, worst = time.monotonic() + float(sys.argv[1]), time.monotonic(), 0.0
open(sys.argv[2] + ".ready", "w").close()
while last < end:
    now = time.monotonic()
    worst, last = max(worst, now - last), now
open(sys.argv[2], "w").write(str(worst))
"""


def test_floor_reaches_batch_in_every_domain_and_on_one_cpu(tmp_path):
    # Every CPU saturated by gpu hogs: batch runs by floor service only, one
    # task allowed anywhere (a domain's queue), one on CPU 5 only (its CPU's).
    seconds, floor_ms = 8, 1000
    with sc.loaded("--floor-ms", str(floor_ms)):
        results = {where: tmp_path / f"gaps-{where}" for where in ("any", "5")}
        observers = {where: subprocess.Popen([*sc.SCX_GPU, "run", "--tier", "batch", "--",
                                              sys.executable, "-c", GAPS, str(seconds + 4),
                                              str(path), where])
                     for where, path in results.items()}
        sc.wait_for(lambda: all(Path(f"{p}.ready").exists() for p in results.values()), 60,
                    "the batch observers to start")
        trace = TraceSession(ring_mb=16)
        try:
            for o in observers.values():
                trace.add_process(o.pid)
            trace.attach_tracepoints()
            with in_tier("gpu"), cpu_hogs(16, tier="gpu"):
                time.sleep(seconds)
                assert enabled(), ejection()
            # Drained once the hogs are gone: this process is in the normal tier.
            events, drops = trace.drain(), trace.drops()
        finally:
            trace.close()
        for o in observers.values():
            o.wait(timeout=120)
        floor = sc.status()["scx_gpu"]["totals"]["floor_dispatches"]
    waits = {where: runnable_waits_s(events, o.pid) for where, o in observers.items()}
    gaps = {where: float(path.read_text()) for where, path in results.items()}
    bound = bounds.wait_bound_s(floor_ms, PERIOD_MS, len(observers), NPROC)
    print(json.dumps({"max_runnable_wait_s": {w: float(v.max()) for w, v in waits.items()},
                      "floor_waits": {w: int((v >= floor_ms / 2000).sum())
                                      for w, v in waits.items()},
                      "max_gap_s": gaps, "bound_s": bound, "floor_dispatches": floor,
                      "drops": drops}))
    assert floor > 0 and drops == 0
    # Each was served by the floor again and again while the hogs ran ...
    assert all((w >= floor_ms / 2000).sum() >= seconds * 1000 // floor_ms // 2
               for w in waits.values()), waits
    # ... and every wait while runnable ended within the bound.
    assert all(w.max() <= bound for w in waits.values()), (waits, bound)
    # The spinners' own gaps are printed, not asserted: with 8 vCPUs on 2
    # host cores a floor slice (0.5 ms by the guest's clock, 0.35-18 ms on
    # CPU by the trace) often passes while its vCPU does not run, so a gap
    # spanned 2-6 floor periods in runs whose waits all ended within 1.07 s,
    # under main's single queues as under these (2026-11-29).


# GPU locality, with a synthetic GPU map: --gpu-cpus names node 1 (the VM has
# no GPU). BURSTS runs argv[3] processes that start on CPU argv[2], then may
# run anywhere: each spins in bursts of 3 ms with 1 ms sleeps between (every
# wakeup is a placement decision) for argv[1] seconds, counting the CPU it
# finds itself on at each look, and prints those counts as a JSON line.
BURSTS = """
import json, os, sys, time
def cpu():
    with open("/proc/thread-self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
os.sched_setaffinity(0, {int(sys.argv[2])})
for _ in range(int(sys.argv[3]) - 1):
    if os.fork() == 0:
        break
os.sched_setaffinity(0, set(range(os.cpu_count())))
end, seen = time.monotonic() + float(sys.argv[1]), {}
while time.monotonic() < end:
    burst = time.monotonic() + 0.003
    while time.monotonic() < burst:
        seen[cpu()] = seen.get(cpu(), 0) + 1
    time.sleep(0.001)
print(json.dumps(seen), flush=True)
"""
HOME = DOMAINS[1]


def _bursts(cmd_prefix: list[str], seconds: float, start_cpu: int,
            procs: int = 1) -> dict[int, int]:
    """BURSTS's counts, summed over its processes."""
    out = subprocess.run([*cmd_prefix, sys.executable, "-c", BURSTS, str(seconds),
                          str(start_cpu), str(procs)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen: dict[int, int] = {}
    for line in out.stdout.splitlines():
        for cpu, n in json.loads(line).items():
            seen[int(cpu)] = seen.get(int(cpu), 0) + n
    assert len(out.stdout.splitlines()) == procs, out.stdout
    return seen


def _share(seen: dict[int, int], cpus: set[int]) -> float:
    return sum(n for c, n in seen.items() if c in cpus) / sum(seen.values())


def test_a_gpu_thread_runs_on_its_gpus_node():
    # Node 1 runs batch on every CPU, node 0 idles: the gpu thread, started
    # on node 0, must take node 1's CPUs from batch at each wakeup rather
    # than stay where it was.
    with sc.loaded("--gpu-cpus", "4-7", "--quota", "100"), \
            cpu_hogs(4, tier="batch", cpus="4-7"):
        seen = _bursts([*sc.SCX_GPU, "run", "--tier", "gpu", "--"], 4, start_cpu=0)
        assert enabled(), ejection()
    share = _share(seen, HOME)
    print(json.dumps({"on_home": share, "cpus": seen}))
    assert share >= 0.95, seen


def test_batch_prefers_cpus_outside_the_homes():
    # Two batch processes born on node 1 (the home): they move to node 0 and
    # stay off node 1 while a CPU of node 0 is free. The control plane (gpu
    # tier, its libcuda rescan busy at start) and this test run on node 1,
    # so that node 0's CPUs are free: left anywhere, they took node 0's CPUs
    # at times and batch rightly went to node 1 (20-24% in two runs of three).
    with sc.loaded("--gpu-cpus", "4-7", "--quota", "100"), \
            _pinned([run_state()["pid"], os.getpid()], HOME):
        seen = _bursts([*sc.SCX_GPU, "run", "--tier", "batch", "--"], 4, start_cpu=5,
                       procs=2)
        assert enabled(), ejection()
    share = _share(seen, HOME)
    print(json.dumps({"on_home": share, "cpus": seen}))
    # Left to the kernel's choice batch spent 51-63% on node 1; preferring
    # node 0 it spent 0.5-2% in targeted runs, 8.6% in one full run in which
    # CPU 3 was never free to it, and 28.8% in a full run on the slower build
    # machine of 2026-11-30: under emulation, only the large effect.
    assert share <= 0.35, (seen, _busiest_threads())


def _busiest_threads() -> str:
    """The threads with the most CPU time, with their CPUs: who held the CPUs."""
    return subprocess.run(["ps", "-eLo", "tid,psr,time,comm", "--sort=-time"],
                          capture_output=True, text=True).stdout[:2000]


@contextmanager
def _pinned(pids: list[int], cpus: set[int]) -> Iterator[None]:
    """Every thread of pids on cpus for the body's duration (threads they
    start inherit it); all CPUs again after."""
    threads = [int(t.name) for pid in pids for t in Path(f"/proc/{pid}/task").iterdir()]
    for tid in threads:
        os.sched_setaffinity(tid, cpus)
    try:
        yield
    finally:
        for tid in threads:
            with suppress(ProcessLookupError):
                os.sched_setaffinity(tid, range(NPROC))


def test_the_rest_of_a_gpu_processs_cgroup_follows_it(tmp_path):
    # A tagged launcher and a normal-tier helper that holds no GPU share a
    # cgroup: the helper, started on node 0, runs on node 1 with its launcher.
    group = CGROUP_ROOT / "scx-gpu-test-serving"
    with sc.loaded("--gpu-cpus", "4-7", quiet=False) as log:
        launcher = subprocess.Popen(sc.in_cgroup(group, [str(LAUNCHER), "--cuda-lib",
                                                         str(STUB), "--duration", "120",
                                                         "--work-us", "100"]),
                                    stdout=subprocess.DEVNULL)
        try:
            sc.wait_for(lambda: "(1 process, 1 cgroup)" in log.read_text(), 60,
                        "the launcher's cgroup to get its home")
            seen = _bursts(sc.in_cgroup(group, []), 4, start_cpu=0)
            assert enabled(), ejection()
            # The homes as the loader wrote them: one lost mid-run lets the helper go.
            homes = [line for line in log.read_text().splitlines() if "process" in line]
        finally:
            (group / "cgroup.kill").write_text("1")
            launcher.wait(timeout=30)
            sc.wait_for(lambda: not processes(group), 10, "the test cgroup to empty")
            group.rmdir()
    share = _share(seen, HOME)
    print(json.dumps({"on_home": share, "cpus": seen, "homes": homes}))
    # In the clean-clone run of 7108a51 the helper ran half its time on CPU 1
    # (0.52), then passed in a fresh boot: cause not found, hence the homes.
    assert share >= 0.9, (seen, homes)
