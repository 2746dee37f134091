"""The mainline fallback of `scx-gpu load` (root).

On this host (no sched_ext, the v1 cpu controller of a hybrid cgroup
layout) and in the VM (cgroup v2), so both of CpuGroup's paths run for real.
"""

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane import fallback, loader, runstate
from scx_gpu.controlplane.cgroups import cpu_seconds
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.detector import Detector
from scx_gpu.controlplane.fallback import SUBTREE_CONTROL
from scx_gpu.controlplane.gpubudget import GpuBudget
from scx_gpu.controlplane.scheduler import BpfScheduler
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.workloads import SYNTHETIC_SHAPE, program
from tests.helpers import assert_one_line_error, cpu_hogs, json_lines, launcher, scx_gpu

pytestmark = pytest.mark.root
BOTH = pytest.mark.parametrize("hierarchy", [
    pytest.param("v1-host"), pytest.param("v2-vm", marks=pytest.mark.vm)])
LAUNCHER, STUB = str(program("launcher")), str(program("libcuda.so.1"))
FALLBACK = runstate.FALLBACK_MODE
START_TIMEOUT_S = 60  # beside 2 * NPROC hogs under emulation, as scenario.loaded waits


# The nice the programs a test launches start at: its own, which they inherit.
OWN_NICE = os.getpriority(os.PRIO_PROCESS, 0)


def nice_of(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def launching_threads(pid: int) -> list[int]:
    return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if int(t.name) != pid]


@contextmanager
def fallback_loaded(*args: str, quiet: bool = True) -> Iterator[dict[str, Any]]:
    """The fallback running; its run state, and "log": the file of its output."""
    # At the gpu tier's nice already, a renice could not be seen.
    assert OWN_NICE > fallback.GPU_NICE, OWN_NICE
    with tempfile.NamedTemporaryFile("w") as log:
        out = Path(log.name)
        # faulthandler: SIGABRT prints where every thread of a loader that is slow to start is.
        proc = subprocess.Popen([*sc.SCX_GPU, "load", "--fallback", "mainline",
                                 *(["--quiet"] if quiet else []), "--cuda-lib", STUB, *args],
                                stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        try:
            try:
                took = sc.wait_for(lambda: runstate.run_state().get("mode") == FALLBACK
                                   or proc.poll() is not None, START_TIMEOUT_S,
                                   "the fallback to start")
            except AssertionError as exc:
                proc.send_signal(signal.SIGABRT)
                proc.wait(timeout=30)
                raise AssertionError(f"{exc}; the loader's output:\n{out.read_text()}") from None
            assert proc.poll() is None, out.read_text()
            print(f"the fallback started in {took:.1f} s")
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) == fallback.GPU_NICE  # level
            yield {**runstate.run_state(), "log": out}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        output = out.read_text()
    assert proc.returncode == 0, output
    assert "weaker guarantee" in output and "undone" in output, output


def busy_launcher(seconds: float) -> float:
    report = launcher("--warmup", "1", "--duration", str(seconds), "--threads", str(NPROC),
                      *SYNTHETIC_SHAPE)
    return float(report["tokens_per_s"])


def root_cpu_controller(on: bool) -> None:
    SUBTREE_CONTROL.write_text("+cpu" if on else "-cpu")


def root_has_cpu_controller() -> bool:
    return "cpu" in SUBTREE_CONTROL.read_text().split()


@BOTH
def test_fallback_idles_batch_raises_launchers_and_undoes_everything(hierarchy):
    if hierarchy == "v2-vm":
        root_cpu_controller(False)  # so that the fallback turns it on, and must turn it off
    alone = busy_launcher(4)
    running = None
    try:
        with cpu_hogs(2 * NPROC) as hogs_cgroup:
            hogs = [int(p) for p in (hogs_cgroup / "cgroup.procs").read_text().split()]
            with fallback_loaded("--batch-comm", "stress-ng*") as state:
                group = Path(state["batch_group"])
                assert (group / "cpu.idle").read_text().strip() == "1"
                sc.wait_for(lambda: set(hogs) <= {int(p) for p in
                                                  (group / "cgroup.procs").read_text().split()},
                            10, "the hogs to join the idle group")
                beside = busy_launcher(4)
                running = subprocess.Popen([LAUNCHER, "--cuda-lib", STUB, "--duration", "60",
                                            "--work-us", "100"], stdout=subprocess.DEVNULL)
                time.sleep(0.5)
                (tid,) = launching_threads(running.pid)
                sc.wait_for(lambda: nice_of(running.pid, tid) == fallback.GPU_NICE, 10,
                            "the launching thread to be reniced")
                assert nice_of(running.pid, running.pid) == OWN_NICE  # it never launched
            # SIGTERM: all undone while the hogs and the (still tagged) launcher run.
            assert nice_of(running.pid, tid) == OWN_NICE
            assert not group.exists()
            for pid in hogs:
                assert f"/{fallback.GROUP_NAME}" not in Path(f"/proc/{pid}/cgroup").read_text()
            if hierarchy == "v2-vm":
                assert not root_has_cpu_controller(), SUBTREE_CONTROL.read_text()
    finally:
        if running is not None:
            running.kill()
            running.wait()
    print({"alone": alone, "beside_idle_hogs": beside})
    # Under emulation (v2-vm) the ratio spread 0.84-0.92 over runs; stock
    # beside the same hogs keeps about 0.42: the large effect is what counts.
    assert beside >= (0.85 if hierarchy == "v1-host" else 0.75) * alone, (alone, beside)


@BOTH
def test_run_places_commands_under_the_fallback(hierarchy):
    with fallback_loaded() as state:
        group = Path(state["batch_group"])
        batch = scx_gpu("run", "--tier", "batch", "--", "sh", "-c", "cat /proc/self/cgroup")
        assert batch.returncode == 0 and f"/{fallback.GROUP_NAME}" in batch.stdout, batch
        gpu = scx_gpu("run", "--tier", "gpu", "--", "sh", "-c", "nice")
        assert gpu.returncode == 0 and gpu.stdout.strip() == str(fallback.GPU_NICE), gpu
        status = json.loads(scx_gpu("status", "--json").stdout)["fallback"]
        assert status["batch_group"] == str(group) and "weaker" in status["guarantee"], status
        assert "weaker guarantee" in scx_gpu("status").stdout


@BOTH
def test_the_fallback_prints_statistics_as_the_scheduler_does(hierarchy):
    """The one loop of both loaders: a line every --stats-interval, here of
    the renice and of the batch group held to its quota."""
    quota = 30
    with cpu_hogs(NPROC), fallback_loaded(
            "--batch-comm", "stress-ng*", "--quota", str(quota), "--json",
            "--stats-interval", "0.5", quiet=False) as state:
        launcher = subprocess.Popen([LAUNCHER, "--cuda-lib", STUB, "--duration", "60",
                                     "--work-us", "100"], stdout=subprocess.DEVNULL)
        try:
            def seen() -> list[dict[str, Any]]:
                return [line for line in json_lines(state["log"])
                        if line["gpu_threads_reniced"] >= 1 and line["detector_hits"] > 0
                        and line["batch_processes"] >= NPROC and line["batch_throttled_ms"] > 0]
            sc.wait_for(lambda: bool(seen()), 30,
                        "a statistics line: the launcher reniced, the hogs held to the quota")
            line = seen()[-1]
        finally:
            launcher.kill()
            launcher.wait()
    print(line)
    assert line["batch_quota_pct"] == quota and 0.4 <= line["interval_s"] < 5, line
    if hierarchy == "v1-host":
        assert line["batch_cpu_pct"] is None, line  # the v1 cpu controller does not count it
    else:
        assert 0 < line["batch_cpu_pct"] <= 1.5 * quota * NPROC, line


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@BOTH
def test_gpu_allow_limits_whom_the_fallback_renices(hierarchy):
    # The detector itself refuses to tag others, so the renice follows.
    with fallback_loaded("--gpu-allow", "65534"):
        runs = {who: subprocess.Popen([*prefix, LAUNCHER, "--cuda-lib", STUB, "--duration", "30",
                                       "--work-us", "100"], stdout=subprocess.DEVNULL)
                for who, prefix in (("root", []), ("nobody", NOBODY))}
        try:
            time.sleep(0.5)
            (allowed,) = launching_threads(runs["nobody"].pid)
            (other,) = launching_threads(runs["root"].pid)
            sc.wait_for(lambda: nice_of(runs["nobody"].pid, allowed) == fallback.GPU_NICE, 10,
                        "the allowed user's launching thread to be reniced")
            for _ in range(3):  # detector windows come and go: look through a few
                assert nice_of(runs["root"].pid, other) == OWN_NICE
                time.sleep(1)
        finally:
            for proc in runs.values():
                proc.kill()
                proc.wait()


@BOTH
def test_the_gpu_budget_holds_a_spinner_back_and_not_a_launcher(hierarchy):
    # A process launching on every CPU without pause goes over a 40% budget
    # (on a loaded host it gets at least one of the CPUs); a launcher that
    # waits for its GPU 10 ms a token (10% of a CPU) stays within it. The tier
    # is left unmetered, so that only the process budget acts. The spinner's
    # time at GPU_NICE lasts as long as the 0.5 s bank: too short for this
    # process, starved meanwhile, to see, so the statistics count it.
    with fallback_loaded("--gpu-proc-budget", "40", "--gpu-budget", "100", "--json",
                         "--stats-interval", "0.5", quiet=False) as state:
        runs = {name: subprocess.Popen([LAUNCHER, "--cuda-lib", STUB, "--duration", "600",
                                        "--threads", str(threads), "--launches", launches,
                                        "--work-us", "100", "--gpu-wait-us", wait],
                                       stdout=subprocess.DEVNULL)
                for name, threads, launches, wait in (("spinner", NPROC, "1000", "0"),
                                                      ("launcher", 1, "10", "10000"))}
        try:
            sc.wait_for(lambda: all(len(launching_threads(p.pid)) == n for p, n in
                                    ((runs["spinner"], NPROC), (runs["launcher"], 1))),
                        10, "the launching threads")
            spinning = launching_threads(runs["spinner"].pid)
            (launching,) = launching_threads(runs["launcher"].pid)

            def held_back() -> bool:
                demoted = sum(line["budget_demotions"] for line in json_lines(state["log"]))
                return (demoted >= NPROC and {nice_of(runs["spinner"].pid, tid)
                                              for tid in spinning} == {OWN_NICE}
                        and nice_of(runs["launcher"].pid, launching) == fallback.GPU_NICE)
            sc.wait_for(held_back, 30, "the spinner's threads reniced then held back by the "
                        "budget, the launcher reniced")
            assert all(proc.poll() is None for proc in runs.values())
        finally:
            for proc in runs.values():
                proc.kill()
                proc.wait()


def test_the_renicer_counts_budget_demotions_and_not_expired_tags(monkeypatch):
    # Two threads of this process, tagged and reniced; one runs past a 40%
    # budget (demoted, counted), the other's tag expires (restored, not counted).
    done = threading.Event()
    threads = [threading.Thread(target=done.wait) for _ in range(2)]
    for thread in threads:
        thread.start()
    over, expired = (t.native_id for t in threads)
    assert over is not None and expired is not None
    ran = {over: 0.0, expired: 0.0}
    now = [0.0]
    budget = GpuBudget(40, 100, 2, 0.1, 0.5, runtime=ran.get, tgid=lambda tid: tid,
                       clock=lambda: now[0])
    renicer = fallback.Renicer(-1, lambda: 0, False, budget)
    tagged = {over, expired}
    monkeypatch.setattr(renicer, "live", lambda: tagged)
    try:
        renicer.tick()
        assert set(renicer.raised) == tagged and renicer.demotions == 0
        now[0], ran[over] = 0.1, 1.0
        tagged = {over, expired}
        renicer.tick()
        assert set(renicer.raised) == {expired} and renicer.demotions == 1
        tagged = set()
        renicer.tick()
        assert not renicer.raised and renicer.demotions == 1
        assert {nice_of(os.getpid(), tid) for tid in (over, expired)} == {OWN_NICE}
    finally:
        renicer.restore_all()
        done.set()
        for thread in threads:
            thread.join()


def test_fallback_bad_input():
    assert_one_line_error(scx_gpu("load", "--fallback", "maybe"), 2,
                          ["unknown fallback 'maybe'", "refuse, auto, mainline"])
    assert_one_line_error(scx_gpu("load", "--fallback", "mainline", "--policy", "fair"), 2,
                          ["gpu-first policy only"])
    assert_one_line_error(scx_gpu("load"), 1, ["has no sched_ext", "--fallback mainline"])
    assert_one_line_error(scx_gpu("load", "--fallback", "mainline", "--batch-cgroup", "/nope"),
                          2, ["--batch-cgroup"])
    assert not list(Path("/sys/fs/cgroup").rglob(fallback.GROUP_NAME))


@pytest.mark.vm
def test_declared_cgroup_is_idled_and_limited_in_place_then_restored():
    quota = 30
    # Already on (as on a systemd host): the fallback must leave it on.
    root_cpu_controller(True)
    try:
        share, before, after = _declared_hogs_share(quota)
        assert root_has_cpu_controller()
    finally:
        root_cpu_controller(False)
    print({"quota_pct": quota, "hogs_share_pct": 100 * share})
    assert 0.5 * quota < 100 * share < 1.5 * quota, share
    assert after == before


def _declared_hogs_share(quota: int) -> tuple[float, dict[str, str], dict[str, str]]:
    """The hogs' CPU share with their cgroup declared batch; its settings before and after."""
    with cpu_hogs(2 * NPROC) as hogs_cgroup:
        before = {name: (hogs_cgroup / name).read_text() for name in ("cpu.idle", "cpu.max")}
        with fallback_loaded("--batch-cgroup", str(hogs_cgroup), "--quota", str(quota)) as state:
            assert Path(state["batch_group"]).is_dir()
            assert (hogs_cgroup / "cpu.idle").read_text().strip() == "1"
            period_us = 1000 * Config().period_ms
            assert (hogs_cgroup / "cpu.max").read_text().split() == [
                str(period_us * NPROC * quota // 100), str(period_us)]
            cpu0, t0 = cpu_seconds(hogs_cgroup), time.monotonic()
            time.sleep(3)
            share = (cpu_seconds(hogs_cgroup) - cpu0) / (time.monotonic() - t0) / NPROC
        after = {name: (hogs_cgroup / name).read_text() for name in ("cpu.idle", "cpu.max")}
    return share, before, after


def test_a_failed_setup_undoes_what_came_before_in_reverse(monkeypatch):
    """The libcuda scanner fails to start, last of the fallback's resources:
    each one set up before it is undone, the last first."""
    undone: list[str] = []

    def recording(cls: type, method: str) -> None:
        original = getattr(cls, method)

        def wrapper(self: object, *args: object) -> object:
            undone.append(f"{cls.__name__}.{method}")
            return original(self, *args)
        monkeypatch.setattr(cls, method, wrapper)

    for cls, method in ((fallback.Renicer, "restore_all"), (fallback.BatchMembers, "undo"),
                        (Detector, "close"), (BpfScheduler, "close"),
                        (fallback.CpuGroup, "remove")):
        recording(cls, method)

    class Failing:
        def __init__(self, *args: object) -> None:
            pass

        def start(self) -> None:
            raise RuntimeError("the scanner failed")

    monkeypatch.setattr("scx_gpu.bpf.libcuda.Rescanner", Failing)
    monkeypatch.setattr(loader, "_keep_up_under_load", lambda nice: None)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    cfg = Config(fallback="mainline", cuda_libs=[STUB]).validate()
    with pytest.raises(RuntimeError, match="the scanner failed"):
        loader.FallbackLoader(cfg, lambda line: None).run()
    assert undone == ["Renicer.restore_all", "BatchMembers.undo", "Detector.close",
                      "BpfScheduler.close", "CpuGroup.remove"]
    assert not runstate.RUN_STATE.exists()
    assert not fallback.CpuGroup().path.exists()
