"""`scx-gpu bench wakeup`: wake-up and context-switch throughput per policy.

The shipped wakebench program (hackbench-like: groups of senders and
receivers passing messages over pipes, every message a possible wake-up)
runs under each policy, loaded as `bench run` loads it; the cells are
`bench run`'s without noise, interleaved over the reps. The report holds
every run and, per policy, the mean messages/s, its spread and its ratio to
stock (when stock ran): the figure that must not fall as CPUs are added;
and the tasks' context switches, voluntary (blocked on a pipe) and
involuntary (preempted).
"""

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import scx_gpu
from scx_gpu.bench import matrix, noise
from scx_gpu.bench.policies import Policy
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.errors import EnvironmentProblem
from scx_gpu.workloads import program

KIND = "scx-gpu-bench-wakeup"
MAX_TASKS = 4096  # wakebench.c's
RUN_TIMEOUT_S = 600
REPORTED = ("messages", "seconds", "messages_per_s", "voluntary_switches",
            "involuntary_switches")


@dataclass(frozen=True)
class Shape:
    groups: int = 4
    pairs: int = 10    # receivers, and senders, per group
    loops: int = 200   # messages from each sender to each receiver of its group
    size: int = 100    # bytes a message
    mode: str = "process"

    def argv(self) -> list[str]:
        return [str(program("wakebench")), "--groups", str(self.groups), "--pairs",
                str(self.pairs), "--loops", str(self.loops), "--size", str(self.size),
                "--mode", self.mode]


def run_cell(cell: matrix.Cell, shape: Shape) -> dict[str, Any]:
    """One run of wakebench under the cell's policy."""
    if cell.policy.declare_noise:
        noise.prepare()  # the scheduler declares its (empty) cgroup batch
    with matrix.scheduled(cell.policy, []):
        proc = subprocess.run([*cell.policy.prefix, *shape.argv()], capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"wakebench under {cell.policy.name} exited with status "
                                 f"{proc.returncode}: {proc.stderr.strip()[-300:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"policy": cell.policy.name, "rep": cell.rep,
            **{key: report[key] for key in REPORTED}}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per policy, in the order run: mean messages/s, its standard deviation,
    mean seconds and context switches, reps, and the ratio to stock's mean
    (when stock ran)."""
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_policy.setdefault(run["policy"], []).append(run)
    rates = {p: [r["messages_per_s"] for r in rows] for p, rows in by_policy.items()}
    stock = statistics.mean(rates["stock"]) if "stock" in rates else None
    summary = {}
    for policy, rows in by_policy.items():
        mean = statistics.mean(rates[policy])
        row = {"messages_per_s": mean, "messages_per_s_sd": statistics.pstdev(rates[policy]),
               **{key: statistics.mean(r[key] for r in rows)
                  for key in ("seconds", "voluntary_switches", "involuntary_switches")},
               "reps": len(rows)}
        if stock:
            row["vs_stock"] = mean / stock
        summary[policy] = row
    return summary


def run(policies: list[Policy], shape: Shape, reps: int,
        progress: Callable[[int, int, str], None]) -> dict[str, Any]:
    """Every policy reps times, interleaved; the report (see the module's doc)."""
    if os.geteuid() != 0 and any(p.scheduler is not None for p in policies):
        raise EnvironmentProblem("loading a scheduler needs root: run scx-gpu bench wakeup as "
                                 "root, or with --policy stock alone")
    cells = matrix.plan(["none"], policies, reps)
    runs = []
    for i, cell in enumerate(cells):
        progress(i, len(cells), f"{cell.policy.name} r{cell.rep}")
        runs.append(run_cell(cell, shape))
    return {"kind": KIND, "version": scx_gpu.__version__, "kernel": platform.release(),
            "cpus": NPROC, "shape": asdict(shape), "runs": runs,
            "summary": summarise(runs)}
