"""`scx-gpu bench run`: every noise x policy cell, traced, repeated,
interleaved (the result directory's format: scx_gpu.bench.results)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scx_gpu
from scx_gpu.bench import noise, scenario
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

    @property
    def name(self) -> str:
        return f"{self.noise}_{self.policy.name}_r{self.rep}"


def plan(noises: list[str], policies: list[Policy], reps: int, cpu_hogs: int = 0,
         noise_cgroup: Path = NOISE_CGROUP) -> list[Cell]:
    """Interleaved: each rep visits every cell once, so drift hits all alike;
    no noise first: the baseline every other cell is judged against."""
    if "none" not in noises:
        raise UsageError("--noise must include none: degradation is measured against it")
    ordered = sorted(noises, key=lambda n: n != "none")
    return [Cell(n, p, r, cpu_hogs, noise_cgroup)
            for r in range(reps) for n in ordered for p in policies]


def check_dir(out: Path) -> None:
    """A new or empty directory: results are never mixed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if (out / MARKER).is_file():
            raise UsageError(f"{out} already holds a bench result: remove it or choose another -o")
        raise UsageError(f"{out} exists and is not a bench result: choose another -o")


def write_marker(out: Path, workload: Workload, cells: list[Cell], duration: float) -> None:
    config = {
        "kind": KIND, "version": scx_gpu.__version__, "workload": workload.name,
        "command": workload.argv, "duration_s": duration,
        "noises": sorted({c.noise for c in cells}, key=noise.NOISES.index),
        "policies": list(dict.fromkeys(c.policy.name for c in cells)),
        "reps": max(c.rep for c in cells) + 1, "host": platform.node(),
        "kernel": platform.release(), "cpus": NPROC, "started": time.time(),
        "noise_commands": {n: noise.commands(n, cells[0].cpu_hogs) for n in noise.NOISES},
        "noise_cgroup": str(cells[0].noise_cgroup),
    }
    (out / MARKER).write_text(json.dumps(config, indent=2))


@contextmanager
def scheduled(policy: Policy, cuda_libs: list[str],
              noise_cgroup: Path = noise.NOISE_CGROUP) -> Iterator[None]:
    """The policy's scheduler (if any) loaded for the body's duration,
    probing cuda_libs beyond the libraries it discovers."""
    if policy.scheduler is None:
        yield
        return
    args = [*policy.scheduler, *(a for lib in cuda_libs for a in ("--cuda-lib", lib))]
    if policy.declare_noise:
        args += ["--batch-cgroup", str(noise_cgroup)]
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


def run_cell(cell: Cell, workload: Workload, out: Path,
             log: Callable[[str], None]) -> dict[str, Any]:
    noise.prepare(cell.noise_cgroup)  # --batch-cgroup needs it before the scheduler loads
    spec = capture.CaptureSpec(cmd=[*cell.policy.prefix, *workload.argv],
                               cuda_libs=workload.cuda_libs, ring_mb=RING_MB)
    with ExitStack() as stack, tempfile.TemporaryFile("w+") as stdout:
        stack.enter_context(scheduled(cell.policy, workload.cuda_libs, cell.noise_cgroup))
        stack.enter_context(noise.running(cell.noise, cell.policy.noise_idle, cell.cpu_hogs,
                                          cell.noise_cgroup))
        spec.stdout = stdout
        cpu_before, start = noise.cpu_seconds(cell.noise_cgroup), time.monotonic()
        cap = capture.capture(spec, log)
        if cap.interrupted:
            raise KeyboardInterrupt
        noise_cpu = noise.cpu_seconds(cell.noise_cgroup) - cpu_before
        elapsed = time.monotonic() - start
        stdout.seek(0)
        printed = stdout.read()
    if cap.exit_status != 0:
        raise EnvironmentProblem(f"{cell.name}: the workload exited with status "
                                 f"{cap.exit_status}: {printed.strip()[-300:]}")
    wall = float(cap.meta["command_wall_s"])
    frame = tracefile.to_frame(cap.events)
    trace = out / TRACES / cell.name
    tracefile.write(trace, frame, cap.meta, "parquet")
    return {
        "noise": cell.noise, "policy": cell.policy.name, "rep": cell.rep,
        **metric(printed, wall), **_trace_metrics(analysis.analyse(frame, cap.meta)),
        "noise_cpu_s": noise_cpu,
        "noise_cpu_pct": 100 * noise_cpu / (elapsed * NPROC),
        "wall_s": wall, "trace": str(trace.relative_to(out)),
    }


def run(cells: list[Cell], workload: Workload, out: Path, duration: float,
        progress: Callable[[int, str], None],
        log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run every cell, saving after each; Ctrl-C keeps the completed ones."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("scx-gpu bench run needs root (tracer, cgroups, scheduler)")
    check_dir(out)
    (out / TRACES).mkdir(parents=True, exist_ok=True)
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
