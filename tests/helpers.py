"""Helpers shared by the tests: run the CLI as a user would, check errors, read
sched_ext's state, `scx-gpu load --json`'s lines and the scheduler's dump, run
the synthetic launcher and CPU hogs, and read a task's run-queue waits from
the tracer's events."""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from scx_gpu.bench import noise
from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.loader import DUMP_MARK
from scx_gpu.controlplane.runstate import sched_ext_state
from scx_gpu.controlplane.tiers import OWN_ROOT
from scx_gpu.tracer import analysis
from scx_gpu.tracer.events import EV_SCHED_SWITCH, EV_SCHED_WAKEUP, FLAG_PREEMPT
from scx_gpu.workloads import program

TOKEN_VAR = "SCX_GPU_TEST_TOKEN"
TRACING = Path("/sys/kernel/tracing")
DUMP_EVENT = TRACING / "events/sched_ext/sched_ext_dump/enable"
HOGS = "hogs"  # a tier's CPU hogs' group, below the tier's cgroup


def scx_gpu(*args: str, timeout: float = 900, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run the scx-gpu CLI in a subprocess, capturing its output.

    Every process it starts inherits a fresh token in its environment, so
    leftovers(proc) can tell whether any of them outlived it.
    """
    token = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "scx_gpu", *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {}), TOKEN_VAR: token})
    proc.token = token  # type: ignore[attr-defined]
    return proc


def leftovers(proc: subprocess.CompletedProcess[str]) -> list[int]:
    """Pids of processes started by that scx-gpu run that are still alive."""
    needle = f"{TOKEN_VAR}={proc.token}".encode()  # type: ignore[attr-defined]
    alive = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes():
                alive.append(int(environ.parent.name))
        except OSError:
            continue
    return alive


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int,
                          needles: Sequence[str] = ()) -> None:
    """Bad input: exit `code`, exactly one line on stderr, naming the problem."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("scx-gpu: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def enabled() -> bool:
    """sched_ext runs scx_gpu."""
    return sched_ext_state() == ("enabled", "scx_gpu")


EJECTION_WORDS = ("sched_ext", "scx_gpu", "rcu:", "task:")
LOADED_LINE = 'BPF scheduler "scx_gpu" enabled'


def ejection() -> str:
    """Why the kernel ejected the scheduler, as its log says since the last load:
    sched_ext's lines, and RCU's stall reports with the tasks they name."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
    loads = [i for i, line in enumerate(log) if LOADED_LINE in line]
    said = "\n".join(line for line in log[loads[-1] if loads else 0:]
                     if any(word in line for word in EJECTION_WORDS))
    return f"the kernel ejected the scheduler:\n{said[-3000:]}"


def disabled() -> bool:
    return sched_ext_state()[0] == "disabled"


def json_lines(log: Path) -> list[dict[str, Any]]:
    """The complete JSON lines written to log so far (`scx-gpu load --json`)."""
    lines = log.read_text().split("\n")[:-1]  # the last one may be half written
    return [json.loads(line) for line in lines if line.startswith("{")]


def launcher(*args: str, tier: str | None = None, nice: int = 0, cpus: str = "",
             timeout: float = 300) -> dict[str, Any]:
    """Run the synthetic launcher to completion, on the CPU list cpus
    (default: any); its JSON report."""
    cmd = [str(program("launcher")), "--cuda-lib", str(program("libcuda.so.1")), *args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    if tier:
        cmd = [sys.executable, "-m", "scx_gpu", "run", "--tier", tier, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@contextmanager
def in_tier(tier: str) -> Iterator[None]:
    """This test process in tier for the body, then back in its own cgroup.

    Beside gpu hogs on every CPU, a normal-tier process runs by floor
    service alone, a short slice per floor wait: the test's own steps
    (starting the hogs, waiting for them, reading a report) took minutes
    that way. In the gpu tier they take turns with the hogs.
    """
    home = noise.own_cgroup()
    (OWN_ROOT / tier / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield
    finally:
        (home / "cgroup.procs").write_text(str(os.getpid()))


@contextmanager
def cpu_hogs(count: int, tier: str | None = None, nice: int = 0,
             idle: bool = False, cpus: str = "") -> Iterator[Path]:
    """count CPU hogs (stress-ng) for the body's duration, on the CPU list
    cpus (default: any); yields their cgroup.

    The hogs stay in the caller's session: a new session would be a new
    autogroup, which EEVDF weighs as a whole, hiding their nice and policy.
    They are stopped by killing their cgroup. A tier's hogs join a group of
    their own below its cgroup (the tier's subtree) as `scx-gpu run --tier`
    would, without its Python start-up (seconds beside busy threads under
    emulation); the kill spares the rest of the tier (in_tier).
    """
    cgroup = OWN_ROOT / tier / HOGS if tier else noise.NOISE_CGROUP
    assert not tier or cgroup.parent.is_dir(), f"{cgroup.parent} is missing: is scx-gpu loaded?"
    cmd = noise.stress_cpu(count)
    if cpus:  # born there: moved later, they would crowd every CPU meanwhile
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.Popen(sc.in_cgroup(cgroup, noise.lowered(cmd, nice, idle)), text=True)
    try:
        sc.joined(cgroup, proc, members=count + 1)  # stress-ng and each of its hogs
        yield cgroup
    finally:
        (cgroup / "cgroup.kill").write_text("1")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"the hogs outlived cgroup.kill of {cgroup}") from None
        if tier:
            sc.wait_for(lambda: "populated 0" in (cgroup / "cgroup.events").read_text(), 30,
                        f"the hogs of {cgroup} to be gone")
            cgroup.rmdir()


def arm_dump() -> None:
    """Trace sched_ext's dumps only, from now on. Slow among saturating gpu
    threads (it waits for normal-tier kernel threads): done before them."""
    DUMP_EVENT.write_text("1")
    (TRACING / "trace").write_text("")


def dump() -> None:
    """SysRq-D: sched_ext dumps the scheduler's state (ours: ops.dump) to the trace."""
    Path("/proc/sysrq-trigger").write_text("D")


def dump_lines() -> list[str]:
    """The tier lines ("tier NAME: ...") the last dump() left in the trace,
    once its last (batch's per-CPU queues) is there."""
    lines: list[str] = []

    def dumped() -> bool:
        lines[:] = ["tier" + line.split(DUMP_MARK, 1)[1]
                    for line in (TRACING / "trace").read_text().splitlines() if DUMP_MARK in line]
        return bool(lines) and lines[-1].startswith("tier batch: per-CPU:")
    sc.wait_for(dumped, 30, "the dump of every tier")
    DUMP_EVENT.write_text("0")
    return lines


def runnable_waits_s(events: np.ndarray, tid: int) -> np.ndarray:
    """Each time tid was ready (woken or preempted) until it ran, from the tracer."""
    switches = events[events["type"] == EV_SCHED_SWITCH]
    outs = switches[switches["prev_tid"] == tid]
    woken = events["ts_ns"][(events["type"] == EV_SCHED_WAKEUP) & (events["tid"] == tid)]
    ready = np.concatenate([woken, outs["ts_ns"][analysis.still_runnable(
        outs["prev_state"], (outs["flags"] & FLAG_PREEMPT) != 0)]])
    ins = switches["ts_ns"][switches["next_tid"] == tid]
    return analysis.runqueue_waits(ready.astype(np.int64), ins.astype(np.int64)) / 1e9
