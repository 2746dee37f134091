"""`scx-gpu bench run`: every noise x policy cell, repeated, interleaved (the
result directory's format: scx_gpu.bench.results). `bench sched` and `bench
tracer` run fixed plans of these cells.

A cell runs the workload traced (the tracer's view of it in the row) or
untraced (when tracing would change what is measured); a cell with a
workload of its own runs that instead of the run's. Under scx-gpu's sched_ext
scheduler a row also has the probe hits per launch and the gpu tier's share
of the CPUs, from the scheduler's counters before and after the workload.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import scx_gpu
from scx_gpu import status
from scx_gpu.bench import noise, policies, scenario
from scx_gpu.bench.noise import NOISE_CGROUP
from scx_gpu.bench.policies import Policy
from scx_gpu.bench.results import KIND, MARKER, TRACES, save
from scx_gpu.bench.workloads import Workload, metric
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.errors import EnvironmentProblem, UsageError
from scx_gpu.tracer import analysis, capture, tracefile

RING_MB = 64


@dataclass(frozen=True)
class Cell:
    noise: str
    policy: Policy
    rep: int
    cpu_hogs: int = 0  # the cpu noise's hogs; 0: one per CPU
    noise_cgroup: Path = NOISE_CGROUP  # where the noise runs (noise.cgroup_for)
    traced: bool = True
    workload: Workload | None = None  # its own; None: the run's

    @property
    def name(self) -> str:
        own = [self.workload.name] if self.workload else []
        untraced = [] if self.traced else ["untraced"]
        return "_".join([*own, self.noise, self.policy.name, *untraced, f"r{self.rep}"])


def repeat(cells: list[Cell], reps: int) -> list[Cell]:
    """Interleaved: each rep visits every cell once, so drift hits all alike."""
    return [replace(c, rep=r) for r in range(reps) for c in cells]


def plan(noises: list[str], policies: list[Policy], reps: int, cpu_hogs: int = 0,
         noise_cgroup: Path = NOISE_CGROUP) -> list[Cell]:
    """Every noise x policy, no noise first: the baseline every other cell is
    judged against."""
    if "none" not in noises:
        raise UsageError("--noise must include none: degradation is measured against it")
    ordered = sorted(noises, key=lambda n: n != "none")
    return repeat([Cell(n, p, 0, cpu_hogs, noise_cgroup) for n in ordered for p in policies],
                  reps)


def check_dir(out: Path) -> None:
    """A new or empty directory: results are never mixed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if (out / MARKER).is_file():
            raise UsageError(f"{out} already holds a bench result: remove it or choose another -o")
        raise UsageError(f"{out} exists and is not a bench result: choose another -o")


def write_marker(out: Path, workload: Workload, cells: list[Cell], duration: float) -> None:
    own = {c.workload.name: c.workload.argv for c in cells if c.workload}
    config = {
        "kind": KIND, "version": scx_gpu.__version__, "workload": workload.name,
        "command": workload.argv, "cell_workloads": own, "duration_s": duration,
        "noises": sorted({c.noise for c in cells}, key=noise.NOISES.index),
        "policies": list(dict.fromkeys(c.policy.name for c in cells)),
        "reps": max(c.rep for c in cells) + 1, "host": platform.node(),
        "kernel": platform.release(), "cpus": NPROC, "started": time.time(),
        "noise_commands": {n: noise.commands(n, cells[0].cpu_hogs) for n in noise.NOISES},
        "noise_cgroup": str(cells[0].noise_cgroup),
    }
    (out / MARKER).write_text(json.dumps(config, indent=2))


@contextmanager
def scheduled(policy: Policy, cuda_libs: Sequence[str],
              noise_cgroup: Path = noise.NOISE_CGROUP) -> Iterator[None]:
    """The policy's scheduler (if any) loaded for the body's duration,
    probing cuda_libs beyond the libraries it discovers."""
    if policy.scheduler is None:
        yield
        return
    args = [*policy.scheduler, *(a for lib in cuda_libs for a in ("--cuda-lib", lib))]
    if policy.declare_noise:
        args += ["--batch-cgroup", str(noise_cgroup)]
    if policy.isolate:
        args += policies.isolation_args()
    with scenario.loaded(*args, cuda_lib=False):
        yield


def _launching_thread(proc: dict[str, Any]) -> dict[str, Any]:
    thread: dict[str, Any] = max(proc["threads"], key=lambda t: t["launches"])
    return thread


def _trace_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The tracer's view of the workload's process (the one that launched most)."""
    irq = result["irq"]
    row = {"launches": result["launches"], "drops": result["drops"],
           "irq_per_1k": irq["softirq_per_1k_launches"] + irq["hardirq_per_1k_launches"],
           "sched_per_1k": 0.0, "preemption_penalty_us": 0.0, "rq_wait_p99_us": 0.0}
    if result["processes"]:
        proc = max(result["processes"], key=lambda p: p["launches"])
        row.update(sched_per_1k=proc["sched_per_1k_launches"],
                   preemption_penalty_us=proc["launch_pairs"]["preemption_penalty_us"],
                   rq_wait_p99_us=_launching_thread(proc)["runqueue_wait_us"]["p99"])
    return row


def counters(policy: Policy) -> dict[str, Any] | None:
    """scx-gpu's counters since load, as `scx-gpu status` reports them, under
    the policy's sched_ext scheduler; None under any other."""
    if not policy.loads_sched_ext:
        return None
    report = status.collect()
    if "scx_gpu" not in report:
        raise EnvironmentProblem(f"policy {policy.name}: scx-gpu is loaded but its counters "
                                 f"cannot be read ({report.get('error', 'no statistics')})")
    totals: dict[str, Any] = report["scx_gpu"]["totals"]
    return totals


def detector_figures(before: dict[str, Any], after: dict[str, Any], launches: int | None,
                     elapsed_s: float) -> dict[str, float]:
    """Between two of counters(): the gpu tier's share of a CPU and, when the
    workload counts its launches, probe hits per launch (warm-up included on
    both sides: every launch and every hit of the run)."""
    gpu_s = after["tiers"]["gpu"]["runtime_s"] - before["tiers"]["gpu"]["runtime_s"]
    figures = {"gpu_tier_cpu_share": gpu_s / elapsed_s}
    if launches is not None:
        hits = after["detector_hits"] - before["detector_hits"]
        figures["probe_hits_per_launch"] = hits / max(1, launches)
    return figures


@dataclass
class _Ran:
    exit_status: int | None
    wall_s: float  # the command's, without the tracer's setup
    elapsed_s: float  # the measured window: the noise's CPU time is over this
    capture: capture.Capture | None  # traced only


def _run_workload(cell: Cell, workload: Workload, stdout: IO[str],
                  log: Callable[[str], None]) -> _Ran:
    cmd = [*cell.policy.prefix, *workload.argv]
    start = time.monotonic()
    if not cell.traced:
        exit_status = subprocess.run(cmd, stdout=stdout, check=False).returncode
        wall = time.monotonic() - start
        return _Ran(exit_status, wall, wall, None)
    cap = capture.capture(capture.CaptureSpec(cmd=cmd, cuda_libs=list(workload.cuda_libs),
                                              ring_mb=RING_MB, stdout=stdout), log)
    if cap.interrupted:
        raise KeyboardInterrupt
    return _Ran(cap.exit_status, float(cap.meta["command_wall_s"]),
                time.monotonic() - start, cap)


def _trace_row(cap: capture.Capture, out: Path, name: str) -> dict[str, Any]:
    """The trace, written to the result directory, and its figures."""
    frame = tracefile.to_frame(cap.events)
    trace = out / TRACES / name
    tracefile.write(trace, frame, cap.meta, "parquet")
    return {**_trace_metrics(analysis.analyse(frame, cap.meta)),
            "trace": str(trace.relative_to(out))}


def run_cell(cell: Cell, workload: Workload, out: Path,
             log: Callable[[str], None]) -> dict[str, Any]:
    workload = cell.workload or workload
    noise.prepare(cell.noise_cgroup)  # --batch-cgroup needs it before the scheduler loads
    with ExitStack() as stack, tempfile.TemporaryFile("w+") as stdout:
        stack.enter_context(scheduled(cell.policy, workload.cuda_libs, cell.noise_cgroup))
        stack.enter_context(noise.running(cell.noise, cell.policy.noise_idle, cell.cpu_hogs,
                                          cell.noise_cgroup, cell.policy.noise_nice))
        before = counters(cell.policy)
        cpu_before = noise.cpu_seconds(cell.noise, cell.noise_cgroup)
        ran = _run_workload(cell, workload, stdout, log)
        noise_cpu = noise.cpu_seconds(cell.noise, cell.noise_cgroup) - cpu_before
        after = counters(cell.policy)
        stdout.seek(0)
        printed = stdout.read()
    if ran.exit_status != 0:
        raise EnvironmentProblem(f"{cell.name}: the workload exited with status "
                                 f"{ran.exit_status}: {printed.strip()[-300:]}")
    row = {"workload": workload.name, "traced": cell.traced, "noise": cell.noise,
           "policy": cell.policy.name, "rep": cell.rep, **metric(printed, ran.wall_s)}
    if before is not None and after is not None:
        row.update(detector_figures(before, after, row.get("launches"), ran.elapsed_s))
    if ran.capture is not None:
        row.update(_trace_row(ran.capture, out, cell.name))
    return {**row, "noise_cpu_s": noise_cpu,
            "noise_cpu_pct": 100 * noise_cpu / (ran.elapsed_s * NPROC), "wall_s": ran.wall_s}


def run(cells: list[Cell], workload: Workload, out: Path, duration: float,
        progress: Callable[[int, str], None],
        log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run every cell, saving after each; Ctrl-C keeps the completed ones."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("scx-gpu bench needs root (tracer, cgroups, scheduler)")
    check_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, workload, cells, duration)
    rows: list[dict[str, Any]] = []
    try:
        for cell in cells:
            progress(len(rows), cell.name)
            rows.append(run_cell(cell, workload, out, log))
            save(out, rows)
    finally:
        for cgroup in {c.noise_cgroup for c in cells}:
            noise.release(cgroup)
    return rows
