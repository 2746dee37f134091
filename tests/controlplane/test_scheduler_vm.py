"""The gpu-first scheduler in a real sched_ext kernel (bodies run in the VM).

Timing under emulation is coarse, so these assert large effects only.
"""

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane import bounds, config, intf, loader, runstate, stats, stats_socket
from scx_gpu.controlplane.cgroups import CGROUP_ROOT
from scx_gpu.controlplane.running import RunningScheduler, open_pinned
from scx_gpu.controlplane.scheduler import BpfScheduler, gpu_tag_times
from scx_gpu.controlplane.tiers import OWN_ROOT
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.tracer.session import TraceSession
from scx_gpu.workloads import SYNTHETIC_SHAPE, program
from tests.helpers import (
    arm_dump,
    assert_one_line_error,
    cpu_hogs,
    disabled,
    dump,
    dump_lines,
    ejection,
    enabled,
    in_tier,
    json_lines,
    launcher,
    runnable_waits_s,
    scx_gpu,
)

pytestmark = pytest.mark.vm
LAUNCHER, STUB = program("launcher"), program("libcuda.so.1")
SPINNERS = program("spinners")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_loads_and_detaches_on_signal(sig):
    proc = subprocess.Popen([*sc.SCX_GPU, "load", "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    sc.wait_for(enabled, 60, "state enabled, ops scx_gpu")
    # Every thread of the control plane runs ahead of the normal tier's work.
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        assert os.getpriority(os.PRIO_PROCESS, int(task.name)) == loader.CONTROL_NICE
    proc.send_signal(sig)
    took = sc.wait_for(disabled, 2.0, "state disabled within 2 s")
    proc.wait(timeout=10)
    assert took <= 2.0
    assert subprocess.run(["true"], timeout=5).returncode == 0  # still responsive
    assert sc.status()["ops"] is None


# Per program, against the verifier's limit of 1,000,000: checked at each
# call in each caller's state, dispatch's path took 392,355 (25 s of loading
# under emulation); with its hot functions global, 6,309.
VERIFIED_INSNS_MAX = 50_000
# The storm's length: the watchdog (intf.TIMEOUT_MS) ejected the old core within a minute.
STORM_S = int(os.environ.get("SCX_GPU_STORM_S", "60"))


def test_every_program_verifies_far_below_the_verifiers_limit():
    sched = BpfScheduler()
    try:
        loader.load_object(sched, config.build(None, {}))
        counts = sched.verified_insns()
    finally:
        sched.close()
    print(json.dumps(counts))
    assert "gpu_dispatch" in counts and max(counts.values()) <= VERIFIED_INSNS_MAX, counts


def test_load_prints_each_intervals_statistics():
    """The loop both loaders share prints a line every --stats-interval (the
    fallback's own line: test_fallback)."""
    with sc.loaded("--json", "--stats-interval", "0.5", quiet=False) as log:
        launcher = subprocess.Popen([LAUNCHER, "--cuda-lib", STUB, "--duration", "60",
                                     "--work-us", "100"], stdout=subprocess.DEVNULL)
        try:
            def launching() -> list[dict[str, Any]]:
                return [line for line in json_lines(log)
                        if line["tiers"]["gpu"]["runs"] > 0 and line["detector_hits"] > 0]
            sc.wait_for(lambda: len(launching()) >= 2, 60, "two lines with the launcher's runs",
                        seen=lambda: (json_lines(log)[-2:], sc.status()))
            lines = json_lines(log)
        finally:
            launcher.kill()
            launcher.wait()
    print(lines[-1])
    assert all(0.4 <= line["interval_s"] < 5 for line in lines), [
        line["interval_s"] for line in lines]


def test_detection_tags_the_launching_thread_only_then_expires():
    launch_s, linger_s, ttl_s = 8, 8, 2
    with sc.loaded("--gpu-ttl-ms", str(ttl_s * 1000), "--detect-window-ms", "200",
                   "--detect-period-ms", "1000"):
        started = time.monotonic()
        proc = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB),
                                 "--api", "ex", "--duration", str(launch_s),
                                 "--linger", str(linger_s), "--work-us", "100"],
                                stdout=subprocess.PIPE, text=True)
        sc.wait_for(lambda: len(list(Path(f"/proc/{proc.pid}/task").iterdir())) == 2, 10,
                    "the launcher's worker thread")
        main, worker = sorted(int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir())
        assert main == proc.pid
        # One snapshot shows who is tagged: within a few detector periods
        # (slack for emulation), long before launching stops.
        seen: list[int] = []
        processes: list[dict[str, object]] = []

        def worker_tagged() -> bool:
            ours = sc.status()["scx_gpu"]
            seen[:], processes[:] = ours["gpu_tagged_ids"], ours["gpu_processes"]
            return worker in seen
        sc.wait_for(worker_tagged, 6.0, "a detector window to tag the launching thread")
        assert main not in seen, (main, worker, seen)  # not its sibling
        # Its process, which uses no GPU (the stub libcuda maps no device).
        assert {"pid": proc.pid, "gpus": []} in processes, processes
        # Launching stops at launch_s; the tag is gone ttl_s (plus a period) later.
        left = started + launch_s + ttl_s + 4 - time.monotonic()
        sc.wait_for(lambda: worker not in sc.status()["scx_gpu"]["gpu_tagged_ids"], left,
                    "the tag to expire")
        assert proc.poll() is None, "the thread exited before its tag expired"
        proc.wait(timeout=30)
        totals = sc.status()["scx_gpu"]["totals"]
        # Counted by the probes' cookies: the one entry point it launches through.
        assert totals["detector_hits"] > 0
        assert totals["detector_hits_by_entry"] == {"cuLaunchKernelEx": totals["detector_hits"]}


def _first_tags(proc: subprocess.Popen[bytes], tags_fd: int) -> dict[int, float]:
    """Each of proc's threads -> when it was first seen tagged, in s from now."""
    started, first = time.monotonic_ns(), dict[int, float]()
    while proc.poll() is None:
        with contextlib.suppress(OSError):  # the process is exiting
            tids = [int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir()]
            seen = gpu_tag_times(tags_fd)
            first.update({t: (time.monotonic_ns() - started) / 1e9 for t in tids
                          if t not in first and seen.get(t, 0) >= started})
        time.sleep(0.005)
    return first


def test_every_launch_thread_joins_the_gpu_tier_beside_normal_hogs():
    # Found first is not found all: the other launch threads wait in the
    # normal tier beside the hogs, and windows that closed as soon as the
    # first launched again missed the second for 1.7-3.4 s, or the whole run,
    # in 7 of 18 trials (2026-12-01); waiting for starving siblings, the spread
    # was at most 0.023 s in 12 of 12.
    spreads = []
    with sc.loaded():
        tags_fd = open_pinned()("gpu_tags")
        with cpu_hogs(2 * NPROC):
            for _ in range(3):
                proc = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB), "--api", "graph",
                                         "--threads", str(NPROC), "--duration", "4",
                                         *SYNTHETIC_SHAPE], stdout=subprocess.DEVNULL)
                first = _first_tags(proc, tags_fd)
                assert proc.returncode == 0 and proc.pid not in first, first
                assert len(first) == NPROC, first  # every worker, not the main thread
                spreads.append(max(first.values()) - min(first.values()))
    print(f"last launch thread tagged after the first by {spreads} s")
    assert max(spreads) < 1.0, spreads


def test_a_launch_tag_dies_with_its_thread():
    # A tag outlives the launches by its ttl, but not the thread: a new
    # thread that gets the same id must not start in the gpu tier.
    with sc.loaded("--gpu-ttl-ms", "60000", "--detect-window-ms", "200",
                   "--detect-period-ms", "1000"):
        proc = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB), "--duration", "4",
                                 "--work-us", "100"], stdout=subprocess.DEVNULL)
        tagged: list[int] = []

        def seen() -> bool:
            tagged[:] = sc.status()["scx_gpu"]["gpu_tagged_ids"]
            return bool(tagged)
        sc.wait_for(seen, 10, "the launcher's thread to be tagged")
        proc.wait(timeout=60)
        sc.wait_for(lambda: not set(tagged) & set(sc.status()["scx_gpu"]["gpu_tagged_ids"]),
                    5, f"the tags of exited threads {tagged} to go")


def test_discovers_libcuda_in_process_maps_and_tags_its_launcher():
    # The stub's folder stands for a container root the operator trusts; loaded()
    # returns once the loader's run state is written, after its rescan started.
    with sc.loaded("--rescan-s", "1", "--trusted-lib-dir", str(STUB.resolve().parent),
                   cuda_lib=False) as log:
        launcher = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB),
                                     "--duration", "60", "--work-us", "100"],
                                    stdout=subprocess.DEVNULL)
        try:
            sc.wait_for(lambda: bool(sc.status()["scx_gpu"]["gpu_tagged_ids"]), 30,
                        "the launcher to be found and tagged", seen=log.read_text)
        finally:
            launcher.terminate()
            launcher.wait(timeout=60)
        text = log.read_text()
    assert f"probing {STUB.resolve()} (pid {launcher.pid})" in text, text


def test_an_unprivileged_users_libcuda_is_not_probed():
    # Anyone can map a file named libcuda and call a launch function in a
    # loop: probed, that would put them ahead of everyone.
    home = Path("/tmp/scx-gpu-nobody")
    home.mkdir(exist_ok=True)
    lib = home / "libcuda.so.1"
    lib.write_bytes(STUB.read_bytes())
    for path in (home, lib):
        os.chown(path, 65534, 65534)
    lib.chmod(0o755)
    with sc.loaded("--rescan-s", "1") as log:
        proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 str(LAUNCHER), "--cuda-lib", str(lib), "--duration", "8",
                                 "--work-us", "100"], stdout=subprocess.DEVNULL)
        sc.wait_for(lambda: f"not probing {lib}" in log.read_text(), 30,
                    "the loader to find the copy and refuse it")
        threads = {int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir()}
        for _ in range(3):  # detector windows come and go: look through a few
            assert not threads & set(sc.status()["scx_gpu"]["gpu_tagged_ids"])
            time.sleep(1)
        proc.wait(timeout=60)
        text = log.read_text()
    assert "owned by uid 65534, not root" in text, text
    assert f"scx-gpu: probing {lib}" not in text, text


SLEEPER = """
import json, signal, sys, time
counting = []
signal.signal(signal.SIGUSR1, lambda *_: counting.append(time.monotonic()))
open(sys.argv[2], "w").close()
late = []
while not counting or time.monotonic() - counting[0] < float(sys.argv[1]):
    start = time.monotonic()
    time.sleep(0.001)
    if counting:
        late.append(time.monotonic() - start - 0.001)
late.sort()
print(json.dumps({"wakeups": len(late), "p99_ms": late[len(late) * 99 // 100] * 1000}))
"""


def _sleeper_beside_a_spinner(tmp_path: Path, *args: str) -> dict[str, Any]:
    """A normal task sleeping 1 ms in a loop beside a process that calls a
    launch function on every CPU without pause: the sleeper's wake-up lateness
    once the spinner is tagged (the sleeper starts first: a new process would
    wait for floor service)."""
    seconds, ready = 8, tmp_path / "sleeper-ready"
    ready.unlink(missing_ok=True)
    with sc.loaded(*args):
        sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER, str(seconds), str(ready)],
                                   stdout=subprocess.PIPE, text=True)
        sc.wait_for(ready.exists, 30, "the sleeper to start")
        # The spinner runs until killed, and must still run when the sleeper reports.
        spinner = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB), "--threads",
                                    str(NPROC), "--duration", "3600", "--launches", "1000",
                                    "--work-us", "100", "--gpu-wait-us", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def tagged() -> bool:
                threads = {int(t.name) for t in Path(f"/proc/{spinner.pid}/task").iterdir()}
                return bool(threads & set(sc.status()["scx_gpu"]["gpu_tagged_ids"]))
            # Both started: this process waits in the gpu tier, where an unmetered spinner
            # cannot starve it (it only polls, then sleeps until the sleeper reports).
            with in_tier("gpu"):
                sc.wait_for(tagged, 60, "the spinner to be tagged")
                sleeper.send_signal(signal.SIGUSR1)
                report: dict[str, Any] = json.loads(sleeper.communicate(timeout=240)[0])
            spun = spinner.poll() is None
        finally:
            spinner.kill()
            output = spinner.communicate()[0]
    assert spun, f"the spinner ended (status {spinner.returncode}) before the sleeper: {output}"
    return report


def test_a_tagged_spinner_cannot_starve_a_normal_task(tmp_path):
    # Anyone who may call a trusted libcuda can be tagged: the gpu budgets,
    # not trust, are what bound them. A budget leaves the rest of the CPUs to
    # others, so the sleeper's own need must fit in it: under emulation it
    # takes 23% of a vCPU alone, more than the 10% of 2 that the default 90%
    # leaves (p99 23-38 ms there), so the spinner gets 70% here (5.5-6.3 ms).
    unmetered = _sleeper_beside_a_spinner(tmp_path, "--gpu-budget", "100",
                                          "--gpu-proc-budget", "100")
    metered = _sleeper_beside_a_spinner(tmp_path, "--gpu-proc-budget", "70")
    print(json.dumps({"unmetered": unmetered, "metered": metered}))
    # The premise: unmetered, the check fails (late wake-ups, or few of them: one run
    # had p99 19.6 ms over only 850 wake-ups in 8 s, against 4,547 metered).
    assert _starved(unmetered), unmetered
    assert not _starved(metered), metered


def _starved(sleeper: dict[str, Any]) -> bool:
    """The issue's check fails: wake-up p99 of 20 ms or more, or under 1,000 wake-ups."""
    return bool(sleeper["p99_ms"] >= 20 or sleeper["wakeups"] <= 1000)


def test_gpu_allow_limits_who_may_be_tagged():
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with sc.loaded("--gpu-allow", "65534"):
        runs = {who: subprocess.Popen([*prefix, str(LAUNCHER), "--cuda-lib", str(STUB),
                                       "--duration", "30", "--work-us", "100"],
                                      stdout=subprocess.DEVNULL)
                for who, prefix in (("root", []), ("nobody", nobody))}
        try:
            def threads(who: str) -> set[int]:
                return {int(t.name) for t in Path(f"/proc/{runs[who].pid}/task").iterdir()}

            def tagged() -> set[int]:
                return set(sc.status()["scx_gpu"]["gpu_tagged_ids"])
            sc.wait_for(lambda: bool(threads("nobody") & tagged()), 20,
                        "the allowed user's launcher to be tagged")
            for _ in range(3):  # detector windows come and go: look through a few
                assert not threads("root") & tagged()
                time.sleep(1)
        finally:
            for proc in runs.values():
                proc.kill()
                proc.wait()


def test_a_launcher_that_may_not_be_tagged_is_trapped_in_windows_only():
    # The probes stand while nothing calls them (an idle node pays nothing);
    # a launcher that --gpu-allow leaves out calls them without being tagged:
    # windows come back, and it is trapped for their share of the time only.
    with sc.loaded("--gpu-allow", "65534"):
        # The first window (0.1 s) found no one: its probes stand by now.
        time.sleep(2)
        before = sc.status()["scx_gpu"]["totals"]["detector_hits"]
        run = subprocess.run([str(LAUNCHER), "--cuda-lib", str(STUB), "--duration", "10",
                              "--work-us", "100"], capture_output=True, text=True, check=True)
        hits = sc.status()["scx_gpu"]["totals"]["detector_hits"] - before
        assert not sc.status()["scx_gpu"]["gpu_tagged_ids"]
    launches = json.loads(run.stdout)["launches"]
    print(json.dumps({"launches": launches, "hits": hits}))
    # Windows of 0.1 s a second: 0.11 in the run of 2026-12-03.
    assert 0 < hits < 0.3 * launches, (hits, launches)


def test_a_launcher_starting_on_an_idle_node_is_seen_at_its_first_launch():
    # With nothing tagged, the probes stand once a window has found no one:
    # a single launch is trapped whenever it comes, not only in a window (10%
    # of the time: all of 3 such launches would be seen once in 1,000 runs).
    def hits() -> int:
        return int(sc.status()["scx_gpu"]["totals"]["detector_hits"])

    def untagged() -> bool:
        return not sc.status()["scx_gpu"]["gpu_tagged_ids"]

    once = [str(LAUNCHER), "--cuda-lib", str(STUB), "--threads", "1", "--api", "kernel"]
    with sc.loaded():
        # The stub is probed once a process maps it (the rescan finds it there).
        subprocess.run([*once, "--duration", "3"], stdout=subprocess.DEVNULL, check=True)
        for _ in range(3):
            sc.wait_for(untagged, 30, "the tags to die with their threads")
            time.sleep(2)  # a period and a window: the search finds no one, and stands
            before = hits()
            # One launch, then 0.1 s of work past the run's 0.05 s: one token.
            run = subprocess.run([*once, "--duration", "0.05", "--launches", "1",
                                  "--work-us", "100000"],
                                 capture_output=True, text=True, check=True)
            assert json.loads(run.stdout)["launches"] == 1, run.stdout
            assert hits() > before, "a single launch on an idle node went unseen"


def _start_loader(log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        proc = subprocess.Popen([*sc.SCX_GPU, "load", "--quiet"], stdout=out,
                                stderr=subprocess.STDOUT)
    sc.wait_for(enabled, 60, "the scheduler to load")
    return proc


def test_restarts_when_the_kernel_asks(tmp_path):
    # Without cpu_online/offline callbacks, sched_ext exits a scheduler on CPU
    # hotplug with SCX_ECODE_ACT_RESTART: the loader must load it again.
    log = tmp_path / "load.log"
    loader = _start_loader(log)
    online = Path(f"/sys/devices/system/cpu/cpu{NPROC - 1}/online")
    try:
        for value, restarts in (("0", 1), ("1", 2)):
            online.write_text(value)

            def restarted(n: int = restarts) -> bool:
                return bool(log.read_text().count("asked for a restart") >= n)

            sc.wait_for(restarted, 30, f"restart {restarts}")
            sc.wait_for(enabled, 30, "the scheduler to be enabled again")
            assert loader.poll() is None, log.read_text()
    finally:
        online.write_text("1")
        loader.send_signal(signal.SIGTERM)
        assert loader.wait(timeout=30) == 0, log.read_text()
    assert "hotplug" in log.read_text() or "going" in log.read_text(), log.read_text()


def test_reports_the_kernels_exit_reason_and_fails(tmp_path):
    log = tmp_path / "load.log"
    loader = _start_loader(log)
    Path("/proc/sysrq-trigger").write_text("S")  # sched_ext: disable the BPF scheduler
    assert loader.wait(timeout=30) == 1
    text = log.read_text()
    assert "scheduler exited" in text and "sysrq" in text.lower(), text
    assert disabled() and not Path("/sys/fs/bpf/scx_gpu").exists()


def _tokens_per_s(**kwargs) -> float:
    # One launching thread per vCPU; the warm-up (longer than one detector
    # period) leaves the detection of the new launcher out of the measure.
    return float(launcher("--warmup", "1.5", "--duration", "5", "--threads", str(NPROC),
                          *SYNTHETIC_SHAPE, **kwargs)["tokens_per_s"])


def test_gpu_tier_is_not_slowed_by_hogs():
    hog_count = 2 * NPROC
    stock_alone = _tokens_per_s()
    with cpu_hogs(hog_count):
        stock_hogs = _tokens_per_s()
    with sc.loaded():
        # The denominator is the launcher alone under the same scheduler: the
        # check is what hogs take from the gpu tier (the scheduler's own cost
        # is the benchmark's business).
        alone = _tokens_per_s()
        with cpu_hogs(hog_count, tier="batch"):
            batch_hogs = _tokens_per_s()
        with cpu_hogs(hog_count):
            normal_hogs = _tokens_per_s()
    ratios = {"stock": stock_hogs / stock_alone, "gpu-first, hogs batch": batch_hogs / alone,
              "gpu-first, hogs normal": normal_hogs / alone,
              "gpu-first alone vs stock alone": alone / stock_alone}
    print(json.dumps(ratios))
    assert ratios["stock"] <= 0.70, ratios  # the premise: hogs hurt under stock (up to 0.62 seen)
    assert ratios["gpu-first, hogs batch"] >= 0.85, ratios
    assert ratios["gpu-first, hogs normal"] >= 0.85, ratios


def test_batch_quota_holds_and_changes_at_run_time():
    # No libcuda to probe: no detector windows, whose cost would hide an overrun.
    with sc.loaded("--quota", "30", cuda_lib=False):
        share_30 = _batch_share(8)
        assert scx_gpu("quota", "set", "70").returncode == 0
        share_70 = _batch_share(8)
    print(json.dumps({"quota_30": share_30, "quota_70": share_70}))
    assert abs(share_30 - 0.30) <= 0.10, share_30
    # The harness and the control plane run beside batch: on the slower build
    # machine of 2026-11-30 the 70% quota gave 0.58-0.59 in 4 of 7 runs.
    assert abs(share_70 - 0.70) <= 0.15, share_70


# Its longest gap between clock reads, and how often it read its clock again
# after a pause of over PAUSE_S: the floor visits in which it made progress.
PAUSE_S = 0.1
OBSERVER = f"""
import json, sys, time
end, last, worst, resumed = time.monotonic() + float(sys.argv[1]), time.monotonic(), 0.0, 0
open(sys.argv[2] + ".ready", "w").close()
while (now := time.monotonic()) < end:
    worst, resumed, last = max(worst, now - last), resumed + (now - last > {PAUSE_S}), now
open(sys.argv[2], "w").write(json.dumps({{"worst": worst, "resumed": resumed}}))
"""


def test_floor_serves_batch_under_gpu_saturation(tmp_path):
    seconds, floor_ms = 30, 1000
    with sc.loaded("--floor-ms", str(floor_ms)):
        results = [tmp_path / f"observer{i}" for i in range(2)]
        observers = [subprocess.Popen([*sc.SCX_GPU, "run", "--tier", "batch", "--",
                                       sys.executable, "-c", OBSERVER, str(seconds + 5), str(r)])
                     for r in results]
        sc.wait_for(lambda: all(Path(f"{r}.ready").exists() for r in results), 60,
                    "the batch observers to start")
        trace = TraceSession(ring_mb=16)
        try:
            for o in observers:
                trace.add_process(o.pid)
            trace.attach_tracepoints()
            with in_tier("gpu"), cpu_hogs(2 * NPROC, tier="gpu"):
                time.sleep(seconds)
            # This process is in the normal tier: among the hogs, draining
            # the ring would take it minutes of floor service.
            assert enabled(), ejection()
            events, drops = trace.drain(), trace.drops()
        finally:
            trace.close()
        for o in observers:
            o.wait(timeout=120)
        floor = sc.status()["scx_gpu"]["totals"]["floor_dispatches"]
    waits = [runnable_waits_s(events, o.pid) for o in observers]
    seen = [json.loads(r.read_text()) for r in results]
    print(json.dumps({"max_runnable_wait_s": [float(w.max()) for w in waits],
                      "waits": [len(w) for w in waits], "observed": seen,
                      "floor_dispatches": floor, "drops": drops}))
    assert floor > 0 and drops == 0
    assert all(len(w) >= seconds * 1000 // floor_ms // 2 for w in waits), waits
    # Every wait while runnable ends within the floor (plus one slice of jitter).
    assert all(w.max() < floor_ms / 1000 + 0.1 for w in waits), waits
    # And the task gets work done in its floor visits, though not in every one
    # under emulation: a switch takes about as long as the 0.5 ms floor slice,
    # and some visits (0.9-1.7 ms on the CPU by the trace, 7 of 30 in one run)
    # end before the task is back in user space; two in a row made the 3.0 s
    # gaps of the CI runs of 180d3f7 and c95ab75 (docs/reference.md).
    assert all(o["resumed"] >= seconds * 1000 // floor_ms // 2 for o in seen), seen
    assert max(o["worst"] for o in seen) < bounds.watchdog_margin_s(), seen


# Collapses 2 MB of its own memory into a huge page, again and again: the
# kernel copies the small pages with their page table mapped, inside an RCU
# read-side critical section (MADV_COLLAPSE: any user may ask). Writes its
# collapses, failures and the longest collapse in seconds.
COLLAPSER = """
import ctypes, mmap, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE, HUGE = 14, 15, 25, 2 << 20
end, done, failed, longest = time.monotonic() + float(sys.argv[1]), 0, 0, 0.0
while time.monotonic() < end:
    m = mmap.mmap(-1, 2 * HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    start = (base + HUGE - 1) & ~(HUGE - 1)
    libc.madvise(start, HUGE, MADV_NOHUGEPAGE)  # small pages first: something to copy
    for offset in range(start - base, start - base + HUGE, 4096):
        m[offset] = 1
    libc.madvise(start, HUGE, MADV_HUGEPAGE)
    began = time.monotonic()
    if libc.madvise(start, HUGE, MADV_COLLAPSE) == 0:
        done += 1
    else:
        failed += 1
    longest = max(longest, time.monotonic() - began)
    m.close()
open(sys.argv[2], "w").write(f"{done} {failed} {longest}")
"""


def test_an_rcu_reader_in_the_normal_tier_survives_gpu_saturation(tmp_path):
    # Preempted inside its critical section, a reader holds up every RCU grace
    # period; at a floor slice per floor_ms the copy of one collapse took 23 s
    # under emulation, and the kernel ejects a scheduler when a grace period
    # takes 21 s (khugepaged did it in the saturation test above). 20 s: about
    # 700 collapses where the scheduler keeps readers moving.
    seconds, result = 20, tmp_path / "collapser"
    with sc.loaded():
        collapser = subprocess.Popen([sys.executable, "-c", COLLAPSER, str(seconds), str(result)])
        with cpu_hogs(2 * NPROC, tier="gpu"):
            time.sleep(seconds)
        assert enabled(), ejection()
        collapser.wait(timeout=120)
        readers = sc.status()["scx_gpu"]["totals"]["rcu_readers"]
    done, failed, longest = result.read_text().split()
    print(json.dumps({"collapses": int(done), "failed": int(failed), "longest_s": float(longest),
                      "rcu_readers": readers}))
    assert int(done) > 0 and readers > 0
    # A collapse waits for floor service outside its critical section too
    # (allocating, taking the mmap lock): a few floor periods, never 21 s.
    assert float(longest) < 5.0, longest


# Pinned away from the control plane (the test pins itself, and so the loader,
# to CPU 0): what is measured is the scheduler's handling of the lone thread,
# not the loader's own CPU time. Prints its wall time and its run delay (time
# runnable but not running: the idle gaps a lost reschedule leaves).
LONE_WORK = """
import os, time
os.sched_setaffinity(0, {os.cpu_count() - 1})
def delay():
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9
start, waited, x = time.perf_counter(), delay(), 0
for i in range(1_500_000):
    x += i
print(time.perf_counter() - start, delay() - waited)
"""


def _lone_work_s(tier: str | None = None) -> tuple[float, float]:
    """(seconds, run delay fraction) of a lone CPU-bound thread doing a fixed amount of work."""
    cmd = [sys.executable, "-c", LONE_WORK]
    if tier:
        cmd = [*sc.SCX_GPU, "run", "--tier", tier, "--", *cmd]
    wall, delay = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return float(wall), float(delay) / float(wall)


def test_a_lone_thread_keeps_its_cpu():
    # When its slice ends and nothing else waits, the thread goes on at once:
    # no idle gap until some later event reschedules the CPU.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    runs: dict[str, list[tuple[float, float]]] = {"stock": [], "normal": [], "gpu": []}
    try:
        runs["stock"] = [_lone_work_s() for _ in range(3)]
        # No libcuda rescans: reading every process's maps is the control plane's
        # load, which the stock run does not have.
        with sc.loaded("--rescan-s", "3600"):
            for _ in range(3):  # interleaved: the first seconds after loading are busier
                runs["normal"].append(_lone_work_s())
                runs["gpu"].append(_lone_work_s("gpu"))
    finally:
        os.sched_setaffinity(0, affinity)
    stock, normal, gpu = (min(runs[k]) for k in ("stock", "normal", "gpu"))  # the fastest
    ratios: dict[str, Any] = {
        "stock_s": stock[0], "normal": normal[0] / stock[0], "gpu": gpu[0] / stock[0],
        "delay": {"stock": stock[1], "normal": normal[1], "gpu": gpu[1]}, "runs": runs}
    print(json.dumps(ratios))
    # The design's 2%, as time spent runnable and not running: a dispatch that
    # does not refill the kept task's slice leaves it waiting over half its time.
    assert normal[1] <= 0.02 and gpu[1] <= 0.02, ratios
    # The time itself is coarse under emulation: stock runs of one boot differ
    # by up to 14%, and the normal tier measured 1.06-1.16 with no waiting.
    assert ratios["normal"] <= 1.25 and ratios["gpu"] <= 1.25, ratios


def _spinners(procs: int, threads: int, seconds: float,
              tier: str | None = None) -> subprocess.Popen[str]:
    cmd = [str(SPINNERS), "--procs", str(procs), "--threads", str(threads),
           "--seconds", str(seconds)]
    if tier:
        cmd = [*sc.SCX_GPU, "run", "--tier", tier, "--", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _spun(proc: subprocess.Popen[str], stop: bool = False) -> dict[str, Any]:
    """The spinners' report, when their time is up or (stop) now."""
    if stop:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    report: dict[str, Any] = json.loads(out)
    return report


def _share(report: dict[str, Any], seconds: float) -> float:
    """Of all CPUs over seconds, the spinners' own timing of their runs: the
    VM's kernel over-counts their CPU time (spinners.c)."""
    return float(report["ran_s"]) / (seconds * NPROC)


def _batch_share(seconds: float) -> float:
    """Batch's share of all CPUs: 2 spinners per CPU in the batch tier."""
    return _share(_spun(_spinners(1, 2 * NPROC, seconds, tier="batch")), seconds)


def _switches_and_floor() -> tuple[int, int, float]:
    """The kernel's context switches, the scheduler's floor dispatches, and when."""
    ctxt = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("ctxt "))
    floor = int(sc.status()["scx_gpu"]["totals"]["floor_dispatches"])
    return ctxt, floor, time.monotonic()


def test_a_process_over_its_budget_still_gets_its_budget():
    # A launcher busy on every vCPU, over a 50% process budget, beside 400
    # runnable normal tasks: between its turns it waits until it is within
    # budget again, not a round of the normal tier, so it keeps about its
    # budget: 0.47-0.82 of its alone throughput (the normal tasks 0.37-0.44 of the
    # CPUs). Waiting a round of the normal queue instead, it kept 0.13.
    seconds, budget = 20, 0.5
    with sc.loaded("--gpu-proc-budget", str(int(budget * 100))):
        alone = _tokens_per_s()
        launcher = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB), "--warmup", "5",
                                     "--duration", str(seconds), "--threads", str(NPROC),
                                     *SYNTHETIC_SHAPE], stdout=subprocess.PIPE, text=True)
        sc.wait_for(lambda: bool(sc.status()["scx_gpu"]["gpu_tagged_ids"]), 20,
                    "the launcher to be tagged")
        storm = _spinners(4, 100, seconds + 5)
        during = json.loads(launcher.communicate(timeout=seconds + 120)[0])["tokens_per_s"]
        normal = _spun(storm)
        demotions = sc.status()["scx_gpu"]["totals"]["budget_demotions"]
    print(json.dumps({"launcher_ratio": during / alone, "normal_share":
                      _share(normal, seconds + 5), "budget_demotions": demotions}))
    assert demotions > 0, "the launcher never went over its budget"
    assert during >= 0.7 * budget * alone, (during, alone)


def test_a_crowd_over_budget_on_one_cpu_cannot_hold_up_a_launcher_on_another():
    # Tagged threads over a gpu budget wait in a budget queue. A user pins 16
    # tagged spinners to CPU 0, and with the tier's budget below one CPU
    # (45% of 2 vCPUs) every tagged thread waits there, the launcher pinned to
    # CPU 1 too. CPU 1 has nothing else to run, so the launcher must keep
    # most of it: 0.71-0.80 of its alone throughput (over budget, it runs in
    # slices of 0.5 ms). While one queue held them all and a CPU gave up on
    # it after 8 tasks it may not run, the launcher kept 0.12.
    seconds = 10

    def tokens_per_s() -> float:
        return float(launcher("--warmup", "1.5", "--duration", str(seconds), "--threads", "1",
                              *SYNTHETIC_SHAPE, cpus="1")["tokens_per_s"])

    with sc.loaded("--gpu-budget", str(90 // NPROC)):
        alone = tokens_per_s()
        crowd = subprocess.Popen(["taskset", "-c", "0", str(LAUNCHER), "--cuda-lib", str(STUB),
                                  "--threads", "16", "--duration", str(seconds * 6),
                                  "--launches", "1000", "--work-us", "100",
                                  "--gpu-wait-us", "0"], stdout=subprocess.DEVNULL)
        try:
            def tagged() -> bool:
                threads = {int(t.name) for t in Path(f"/proc/{crowd.pid}/task").iterdir()}
                return bool(threads & set(sc.status()["scx_gpu"]["gpu_tagged_ids"]))
            sc.wait_for(tagged, 60, "the crowd to be tagged")
            beside = tokens_per_s()
            assert enabled(), ejection()
            demotions = sc.status()["scx_gpu"]["totals"]["budget_demotions"]
        finally:
            crowd.kill()
            crowd.wait()
    print(json.dumps({"alone": alone, "beside": beside, "ratio": beside / alone,
                      "budget_demotions": demotions}))
    assert demotions > 0, "nothing went over the tier's budget"
    assert beside >= 0.5 * alone, (beside, alone)


def test_task_storm_starves_nobody_and_spares_the_launcher():
    # 2,000 runnable normal tasks (20 processes forked at once, 100 threads
    # each) beside busy gpu launchers and batch hogs, for STORM_S: three of the
    # watchdog's timeouts (SCX_GPU_STORM_S=120 gives the two minutes).
    seconds, floor_ms, period_ms = STORM_S, 1000, 100
    with sc.loaded() as log:
        alone = _tokens_per_s()
        # Batch and the launcher first: both are slow to start among 2,000 tasks.
        batch = _spinners(1, 2 * NPROC, seconds + 20, tier="batch")
        # Its threads too: creating one beside busy launchers takes floor slices, each a
        # floor wait, and the new thread's gap counts from when its creator asked.
        sc.wait_for(lambda: _spinning_threads(batch) == 2 * NPROC, 60, "the batch spinners")
        worker, hog_threads = _worker_threads(batch)
        launcher = subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB), "--warmup", "8",
                                     "--duration", str(seconds - 20), "--threads", str(NPROC),
                                     *SYNTHETIC_SHAPE], stdout=subprocess.PIPE, text=True)
        sc.wait_for(lambda: bool(sc.status()["scx_gpu"]["gpu_tagged_ids"]), 20,
                    "the launcher to be tagged")
        trace = TraceSession(ring_mb=16)
        try:
            trace.add_process(worker)
            trace.attach_tracepoints()
            before = _switches_and_floor()
            storm = _spinners(20, 100, seconds)
            during = json.loads(launcher.communicate(timeout=seconds + 120)[0])["tokens_per_s"]
            normal, hogs = _spun(storm), _spun(batch)
            assert enabled(), f"the kernel ejected the scheduler:\n{log.read_text()}"
            tag_life_ms = sc.status()["scx_gpu"]["gpu_ttl_ms"]
            switches, floors, took = (b - a for a, b in zip(before, _switches_and_floor(),
                                                             strict=True))
            events, drops = trace.drain(), trace.drops()
        finally:
            trace.close()
    bound = {"normal": bounds.wait_bound_s(floor_ms, period_ms, normal["tasks"] + NPROC, NPROC),
             "batch": bounds.wait_bound_s(floor_ms, period_ms, hogs["tasks"], NPROC)}
    waits = [runnable_waits_s(events, tid) for tid in hog_threads]
    print(json.dumps({"launcher_ratio": during / alone, "normal": normal, "batch": hogs,
                      "bound_s": bound, "tag_life_ms": tag_life_ms,
                      "switches_per_s": switches / took,
                      "floor_dispatches_per_s": floors / took, "drops": drops,
                      "batch_max_runnable_wait_s": [float(w.max()) for w in waits]}))
    assert normal["ran"] == normal["tasks"] == 2000 and hogs["ran"] == hogs["tasks"]
    assert drops == 0 and all(len(w) >= seconds * 1000 // floor_ms // 4 for w in waits), waits
    # The bound is on waits while runnable, by the kernel's switches. The
    # spinners' own gaps also span floor slices that ended before the task was
    # back in user space (a switch under emulation takes about the 0.5 ms
    # slice): 3.0-4.0 s, up to 3 floor waits, in the runs of 2026-12-02.
    assert all(w.max() <= bound["batch"] for w in waits), (waits, bound)
    assert hogs["max_gap_s"] < bounds.watchdog_margin_s(), (hogs, bound)
    # Under emulation a switch among 2,000 tasks costs about 1.75 ms, far
    # above the 0.5 ms slice the bound counts on (stock: 22 s gaps alone):
    # here the normal tasks must run well inside the watchdog's timeout.
    assert normal["max_gap_s"] < intf.TIMEOUT_MS / 1000, (normal, bound)
    # Busy on every vCPU, the launcher is over its 90% process budget: while
    # its over-budget turns waited a round of the 2,000 normal tasks it kept
    # 0.25-0.79 (0.38 in the run beside the fix); waiting in the budget queue
    # it kept 0.87, the 0.80. A core that lets the storm starve the
    # control plane, or a detector whose detach blocks its loop, lets the
    # launcher's tags expire: it keeps 0.05-0.17. Renewals that closed at their
    # length without a demoted thread, or opened half way to expiry behind 1-2 s
    # attaches, and a fork per rescan: 0.25-0.75 (2026-12-02); without: 0.75-0.89,
    # and 0.47-0.98 in 6 runs (2026-12-03: a tag lapsed behind a 3 s attach).
    # Tags that outlive slow attaches, held renewals polled every 10 ms: 0.90-0.99
    # in 7 runs over 3 boots, 0.955 on 8 vCPUs of 16 real cores (with 1 ms polls
    # the control plane took the held thread's CPU: 0.17-0.23).
    assert during >= 0.8 * alone, (during, alone)


def _spinning_threads(proc: subprocess.Popen[str]) -> int:
    """Threads the spinners' worker processes have started so far."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return sum(len(list(Path(f"/proc/{c}/task").iterdir())) - 1 for c in children
               if Path(f"/proc/{c}/task").is_dir())


def _worker_threads(proc: subprocess.Popen[str]) -> tuple[int, list[int]]:
    """The one worker process of these spinners, and its spinning threads."""
    worker = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text())
    return worker, [int(t.name) for t in Path(f"/proc/{worker}/task").iterdir()
                    if int(t.name) != worker]


def test_gpu_saturation_leaves_normal_tasks_within_their_bound():
    seconds, floor_ms, period_ms, tasks = 20, 1000, 100, 4 * NPROC
    with sc.loaded():
        # Started first: a thread's creation counts as its first run, and a
        # creator among saturating gpu threads waits a floor wait per step.
        normal = _spinners(1, tasks, 10 * seconds)
        sc.wait_for(lambda: _spinning_threads(normal) == tasks, 30, "the spinners to start")
        worker, threads = _worker_threads(normal)
        arm_dump()
        trace = TraceSession(ring_mb=16)
        try:
            trace.add_process(worker)
            trace.attach_tracepoints()
            with in_tier("gpu"), cpu_hogs(2 * NPROC, tier="gpu"):
                time.sleep(seconds)
                dump()
            # Read once the hogs are gone: this process is in the normal tier.
            assert enabled(), ejection()
            events, drops = trace.drain(), trace.drops()
        finally:
            trace.close()
        report, lines = _spun(normal, stop=True), dump_lines()
    # The tier holds the guest's own normal tasks besides the spinners (the
    # dump counts them, per domain and on single CPUs): the bound is for all.
    queued = sum(int(line.split(" queued")[0].rsplit(" ", 1)[1]) for line in lines
                 if line.startswith("tier normal:"))
    assert queued > 0, lines
    bound = bounds.wait_bound_s(floor_ms, period_ms, max(tasks, queued) + NPROC, NPROC)
    waits = [runnable_waits_s(events, tid) for tid in threads]
    print(json.dumps({"normal": report, "bound_s": bound, "dump": lines, "drops": drops,
                      "max_runnable_wait_s": [float(w.max()) for w in waits]}))
    assert report["ran"] == tasks and drops == 0, report
    assert all(len(w) >= seconds * 1000 // floor_ms // 4 for w in waits), waits
    # The bound is on waits while runnable, by the kernel's switches. The
    # spinners' own gaps between clock reads also span floor slices whose vCPU
    # did not run: 2.0 s in earlier runs, 3.0-4.0 s on 2026-11-30 with the
    # objects of before and after that day's budget change alike.
    assert all(w.max() <= bound for w in waits), (waits, bound)


KERNEL_WAITS = 20  # of each kind
KTHREAD_WAIT_S = 0.25  # a quarter of the floor wait (F = 1 s) the kthreads had
# Seconds of kernel operations that wait for kthreads: a write to vm/stat_refresh
# (schedule_on_each_cpu(): a kworker bound to each CPU) and membarrier(GLOBAL) (an RCU
# grace period: rcu_preempt, unbound).
WAITER = """
import ctypes, json, sys, time
libc = ctypes.CDLL(None, use_errno=True)
SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL = 324, 1

def refresh():
    with open("/proc/sys/vm/stat_refresh", "w") as f:
        f.write("1")

def grace_period():
    if libc.syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "membarrier")

took = {}
for op in (refresh, grace_period):
    took[op.__name__] = []
    for _ in range(int(sys.argv[1])):
        start = time.monotonic()
        op()
        took[op.__name__].append(time.monotonic() - start)
print(json.dumps(took))
"""


def _kernel_waits(tier: str | None = None) -> dict[str, list[float]]:
    """WAITER's times, run in tier (else here): in the normal tier beside gpu hogs, each
    of its own wake-ups would wait for floor service."""
    cmd = [sys.executable, "-c", WAITER, str(KERNEL_WAITS)]
    out = subprocess.run(sc.in_cgroup(OWN_ROOT / tier, cmd) if tier else cmd,
                         capture_output=True, text=True, check=True, timeout=300).stdout
    took: dict[str, list[float]] = json.loads(out)
    return took


# An RT task on each CPU that wakes every millisecond: each wake-up takes the CPU
# from sched_ext (ops.cpu_release), which queues again what waits in its local
# queue. The soft-lockup watchdog's stop task does so every 4 s per CPU.
RT_TICKER = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
while True:
    time.sleep(0.001)
"""


@contextlib.contextmanager
def rt_tickers() -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", RT_TICKER, str(cpu)]) for cpu in range(NPROC)]
    try:
        yield
        assert all(proc.poll() is None for proc in procs), "an RT ticker stopped"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_kthreads_run_beside_busy_gpu_threads_and_rt_ticks():
    alone = _kernel_waits()
    with sc.loaded():
        with in_tier("gpu"), cpu_hogs(2 * NPROC, tier="gpu"), rt_tickers():
            beside = _kernel_waits("gpu")
        assert enabled(), ejection()
    print(json.dumps({"alone_s": alone, "beside_gpu_hogs_and_rt_s": beside}))
    assert all(max(took) < KTHREAD_WAIT_S for took in beside.values()), beside


CHURN = """
import os, random, sys, time
groups, pids = sys.argv[1:3], [int(p) for p in sys.argv[3].split(",")]
end, cpus, changes = time.monotonic() + float(sys.argv[4]), sorted(os.sched_getaffinity(0)), 0
while time.monotonic() < end:
    for pid in pids:
        os.sched_setaffinity(pid, random.sample(cpus, random.randint(1, len(cpus))))
        os.setpriority(os.PRIO_PROCESS, pid, random.randint(0, 10))
        with open(os.path.join(random.choice(groups), "cgroup.procs"), "w") as f:
            f.write(str(pid))
        changes += 3
print(changes)
"""


def test_affinity_nice_and_cgroup_churn_keeps_per_cpu_state_right():
    # Changing a running task's affinity, nice or cgroup from another CPU runs
    # its ops.stopping/ops.running there: the per-CPU records must still be
    # those of the task's own CPU.
    seconds = 12
    with sc.loaded(), cpu_hogs(2 * NPROC) as cgroup:
        groups = [cgroup / "a", cgroup / "b"]
        for g in groups:
            g.mkdir(exist_ok=True)
        hogs = (cgroup / "cgroup.procs").read_text().split()
        churn = subprocess.Popen([sys.executable, "-c", CHURN, *map(str, groups), ",".join(hogs),
                                  str(seconds)], stdout=subprocess.PIPE, text=True)
        tokens = _tokens_per_s()
        changes = int(churn.communicate(timeout=120)[0])
        totals = sc.status()["scx_gpu"]["totals"]
    gpu_p99_us = stats.wait_percentile_ns(totals["tiers"]["gpu"]["wait_hist"], 0.99) / 1000
    print(json.dumps({"changes": changes, "cpu_mismatches": totals["cpu_mismatches"],
                      "gpu_wait_p99_us": gpu_p99_us, "tokens_per_s": tokens}))
    assert churn.returncode == 0 and changes > 100, changes
    assert totals["cpu_mismatches"] == 0, totals["cpu_mismatches"]
    # A waking gpu thread runs within a batch slice (2 ms; log2 buckets: 4.2 ms).
    # On the slower build machine of 2026-11-30 half the runs (3 of 6, with this
    # object and the one before) landed in the next bucket: emulated time.
    assert gpu_p99_us <= 8388.608, gpu_p99_us


def test_bad_input_leaves_nothing_loaded(tmp_path):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("quota = [\n")
    cases = [
        (["--policy", "nope"], 2, ["gpu-first, fair"]),
        (["--config", str(bad_toml)], 2, ["malformed TOML"]),
        (["--quota", "101"], 2, ["outside 10-100"]),
        (["--batch-cgroup", "/no/such/group"], 2, ["does not exist"]),
    ]
    for args, code, needles in cases:
        assert_one_line_error(scx_gpu("load", *args), code, needles)
        assert disabled() and not Path("/sys/fs/bpf/scx_gpu").exists()
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *sc.SCX_GPU, "load"], capture_output=True, text=True)
    assert_one_line_error(nobody, 1, ["needs root"])
    with sc.loaded():
        assert_one_line_error(scx_gpu("load"), 1, ["already loaded", "scx_gpu"])
    assert disabled() and not Path("/sys/fs/bpf/scx_gpu").exists()


def test_comm_pattern_declares_batch_and_status_counts_tiers():
    seconds = 8
    with sc.loaded("--quota", "30", "--batch-comm", "spinn*"):
        spinners = _spinners(1, 2 * NPROC, 60)
        sc.wait_for(lambda: _spinning_threads(spinners) == 2 * NPROC, 30, "the spinners to start")
        tasks = sc.status()["scx_gpu"]["tier_tasks"]
        control = len(list(Path(f"/proc/{runstate.run_state()['pid']}/task").iterdir()))
        _spun(spinners, stop=True)
        # Measured alone: status's own CPU above would come out of batch's share.
        share = _share(_spun(_spinners(1, 2 * NPROC, seconds)), seconds)
    print(json.dumps({"share": share, "tier_tasks": tasks, "control_threads": control}))
    assert tasks["batch"] >= 2 * NPROC, tasks  # the spinning threads
    # The gpu tier holds only the control plane's threads (they renew tags).
    assert tasks["normal"] > 0 and 1 <= tasks["gpu"] <= control, (tasks, control)
    assert abs(share - 0.30) <= 0.10, share  # matched by name alone, held to the quota


def test_a_task_is_classified_again_only_when_its_tier_may_change():
    # Hogs run slice after slice: each enqueue finds its cached tier.
    with sc.loaded("--batch-comm", "stress*"), cpu_hogs(2 * NPROC):
        time.sleep(2)
        before = sc.status()["scx_gpu"]["totals"]
        time.sleep(5)
        after = sc.status()["scx_gpu"]["totals"]
    runs = sum(after["tiers"][t]["runs"] - before["tiers"][t]["runs"] for t in after["tiers"])
    classified = after["classifications"] - before["classifications"]
    print(json.dumps({"runs": runs, "classifications": classified}))
    assert runs > 500 and classified <= 0.05 * runs, (runs, classified)


def test_a_cgroup_declares_its_subtree_at_any_depth():
    top = CGROUP_ROOT / "scx-gpu-deep"
    levels = [top.joinpath(*[f"l{i}" for i in range(n)]) for n in range(13)]
    levels[-1].mkdir(parents=True, exist_ok=True)
    try:
        with sc.loaded("--batch-cgroup", str(top)):
            proc = subprocess.Popen(sc.in_cgroup(levels[-1], [str(SPINNERS), "--threads", "2",
                                                              "--seconds", "20"]),
                                    stdout=subprocess.DEVNULL)
            sc.joined(levels[-1], proc)
            sc.wait_for(lambda: sc.status()["scx_gpu"]["tier_tasks"]["batch"] >= 2, 15,
                        "the spinners 12 levels below the batch cgroup to be batch")
            (levels[-1] / "cgroup.kill").write_text("1")
            proc.wait(timeout=30)
    finally:
        (levels[-1] / "cgroup.kill").write_text("1")
        sc.wait_for(lambda: not (levels[-1] / "cgroup.procs").read_text().strip(), 30,
                    "the deep cgroup to empty")
        for level in reversed(levels):
            level.rmdir()


def test_statistics_endpoints_prometheus_and_scx_stats():
    port = 9464
    url = f"http://127.0.0.1:{port}/metrics"
    with sc.loaded("--metrics-addr", str(port)):
        time.sleep(1.5)
        sock = stats_socket.SOCKET_PATH
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and sock.stat().st_uid == 0
        monitor = subprocess.Popen([*sc.SCX_GPU, "load", "--monitor", "0.3"],
                                   stdout=subprocess.PIPE, text=True)
        watchdog = threading.Timer(60, monitor.kill)
        watchdog.start()
        lines = []
        assert monitor.stdout
        for line in monitor.stdout:
            lines.append(line)
            if len(lines) == 2:
                monitor.send_signal(signal.SIGINT)  # Ctrl-C ends a monitor quietly
                break
        monitor.communicate(timeout=30)
        watchdog.cancel()
        assert monitor.returncode == 0, lines
        assert all(line.startswith("gpu: cpu") for line in lines) and len(lines) == 2, lines
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            text = reply.read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("scx_gpu_enabled", ())] == 1
        assert samples[("scx_gpu_tier_runs_total", (("tier", "normal"),))] > 0
        assert samples[("scx_gpu_wait_seconds_count", (("tier", "normal"),))] > 0
        assert samples[("scx_gpu_batch_quota_ratio", ())] == 0.5
        listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        assert [f"0100007F:{port:04X}"] == [f[1] for f in listening
                                            if f[3] == "0A" and f[1].endswith(f":{port:04X}")]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        assert missing.value.code == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    assert not stats_socket.SOCKET_PATH.exists()


AUTO_PERIOD_S = 0.5
# Under emulation wakeups are slow: with one launching thread beside batch
# hogs the gpu tier's wait p99 over a control period is 250-950 us at quotas
# 10-100 and over a whole run 0.4-11 ms at fixed quotas 10 and 30.
TCG_WAIT_TARGET_US = 200
IDLE_S = 5.0


def _quota_timeline(stop: threading.Event, out: list[tuple[float, int]]) -> None:
    while not stop.is_set():
        with RunningScheduler() as sched:
            out.append((time.monotonic(), sched.tunables().batch_quota_pct))
        time.sleep(0.1)


def _stepping_launcher() -> dict[str, Any]:
    """Idle, busy, idle, busy beside batch spinners: the quota timeline, busy
    phase starts, tokens/s per busy phase, batch CPU seconds, gpu wait p99."""
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_quota_timeline, args=(stop, timeline))
    busy_starts, rates = [], []
    before = sc.status()["scx_gpu"]["totals"]["tiers"]["gpu"]["wait_hist"]
    batch = _spinners(1, 2 * NPROC, 600, tier="batch")
    sc.joined(OWN_ROOT / "batch", batch)
    sampler.start()
    try:
        for _ in range(2):
            time.sleep(IDLE_S)
            busy_starts.append(time.monotonic())
            rates.append(float(launcher("--warmup", "1.5", "--duration", "5",
                                        *SYNTHETIC_SHAPE)["tokens_per_s"]))
    finally:
        stop.set()
        sampler.join()
        spun = _spun(batch, stop=True)
    after = sc.status()["scx_gpu"]["totals"]["tiers"]["gpu"]["wait_hist"]
    waits = [a - b for a, b in zip(after, before, strict=True)]  # the busy phases'
    return {"timeline": timeline, "busy_starts": busy_starts, "tokens_per_s": rates,
            "batch_cpu_s": spun["ran_s"],
            "gpu_wait_p99_us": stats.wait_quantile_ns(waits, 0.99) / 1000}


def _quota_at(timeline: list[tuple[float, int]], t: float) -> int:
    return [q for at, q in timeline if at <= t][-1]


def _check_mode_switches() -> None:
    """status shows the loop; `quota set N` fixes the quota, `quota set auto` resumes."""
    ours = sc.status()["scx_gpu"]
    assert ours["batch_quota_mode"] == "auto" and ours["last_quota_change"]["reason"], ours
    assert "last quota change" in scx_gpu("status").stdout
    assert scx_gpu("quota", "set", "30").returncode == 0
    time.sleep(4 * AUTO_PERIOD_S)
    assert scx_gpu("quota", "get").stdout.startswith("30% of all CPUs per 100 ms (fixed)")
    assert scx_gpu("quota", "set", "auto").returncode == 0
    sc.wait_for(lambda: sc.status()["scx_gpu"]["batch_quota_pct"] != 30, 10,
                "the loop to move the quota again")


def test_auto_quota_follows_the_launcher(tmp_path):
    cfg = tmp_path / "auto.toml"
    cfg.write_text(f"quota = 'auto'\ngpu_wait_target_us = {TCG_WAIT_TARGET_US}\n"
                   f"auto_quota_step = 10\nauto_quota_period_s = {AUTO_PERIOD_S}\n")
    runs = {}
    # One load: `quota set N` fixes the quota until `quota set auto`.
    with sc.loaded("--config", str(cfg)) as log:
        runs["auto"] = _stepping_launcher()
        _check_mode_switches()
        for quota in ("10", "30"):
            assert scx_gpu("quota", "set", quota).returncode == 0
            runs[f"fixed {quota}"] = _stepping_launcher()
        changes = [line for line in log.read_text().splitlines() if "batch quota" in line]
    auto, fixed_10, fixed_30 = runs["auto"], runs["fixed 10"], runs["fixed 30"]
    idle_peaks = [_quota_at(auto["timeline"], t) for t in auto["busy_starts"]]
    # Halved within a detector period to tag the launcher and a few control
    # periods: the lowest quota of that window (after it the loop may raise
    # the quota again while the launcher's waits are within the target).
    settled = [min(q for at, q in auto["timeline"] if t < at <= t + 1.0 + 4 * AUTO_PERIOD_S)
               for t in auto["busy_starts"]]
    summary = {name: {k: v for k, v in r.items() if k not in ("timeline", "busy_starts")}
               for name, r in runs.items()}
    print(json.dumps({"changes": changes, "idle_peaks": idle_peaks, "settled": settled,
                      **summary}))
    # The premise: at 30% the target is missed.
    assert fixed_30["gpu_wait_p99_us"] > TCG_WAIT_TARGET_US, summary
    # Up while the launcher is away, down within a few control periods once it is busy.
    assert all(peak >= 40 for peak in idle_peaks), idle_peaks
    assert all(s <= p / 2 for s, p in zip(settled, idle_peaks, strict=True)), (settled, idle_peaks)
    assert any("over the" in c for c in changes) and any("idle" in c for c in changes), changes
    # The launcher keeps the priority check's bound against the most protective
    # fixed quota; batch gets far more CPU than under it, and more than under
    # a fixed quota that misses the target.
    assert min(auto["tokens_per_s"]) >= 0.85 * max(fixed_10["tokens_per_s"]), summary
    assert auto["batch_cpu_s"] >= 2 * fixed_10["batch_cpu_s"], summary
    assert auto["batch_cpu_s"] > fixed_30["batch_cpu_s"], summary
