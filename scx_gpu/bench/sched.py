"""The scheduler against the mainline knobs, side by side in one boot.

A fixed plan of the matrix's cells (scx_gpu.bench.matrix), untraced (the
tracer would add to what is measured), into a standard result directory
(`scx-gpu bench compare DIR` reads it). The synthetic launcher alone and
beside 2 x nCPU hogs (the spin noise: they time their own CPU, which this
VM's kernel over-counts under sched_ext) under: the stock scheduler; hogs
at nice 19; hogs SCHED_IDLE; the launcher at nice -20; and scx-gpu
gpu-first with the hogs declared batch and left undeclared; and a launcher
of about 10,000 launches a second under gpu-first, alone and beside the
hogs undeclared. The verdict: throughput relative to the launcher alone,
the hogs' share of all CPUs, the scheduler's own overhead (policy fair,
launcher alone, vs stock), the detector's cost (gpu-first vs fair,
launcher alone), and for the fast launcher the share of its launches the
probes hit, of a CPU it spent in the gpu tier, and of its alone throughput
it keeps beside the hogs.
Needs a sched_ext kernel: `make bench-sched` runs `scx-gpu bench sched` in the test VM.
"""

import pandas as pd
from rich.table import Table

from scx_gpu.bench import matrix, workloads
from scx_gpu.bench.policies import POLICIES
from scx_gpu.bench.workloads import Workload
from scx_gpu.controlplane.topology import NPROC

CHECKS = "checks.json"  # the verdict, beside the result directory's files
HOGS = 2 * NPROC  # the cpu noise's
LAUNCHER = "synthetic"
# One thread, busy: 50 launches of 100 us CPU work a token.
FAST = "launcher-10k"
FAST_SHAPE = ("--launches", "50", "--work-us", "100", "--gpu-wait-us", "0")
DETECTOR_CELL = "detector, 10k launches/s"
FAST_HOGS_CELL = "10k launches/s, undeclared"
CELLS = {  # label: (workload, noise, policy)
    "alone (stock)": (LAUNCHER, "none", "stock"),
    "stock": (LAUNCHER, "spin", "stock"),
    "hogs nice 19": (LAUNCHER, "spin", "batch-nice"),
    "hogs SCHED_IDLE": (LAUNCHER, "spin", "batch-idle"),
    "launcher nice -20": (LAUNCHER, "spin", "gpu-nice"),
    "alone (scx-gpu fair)": (LAUNCHER, "none", "fair"),
    "alone (scx-gpu)": (LAUNCHER, "none", "scx-gpu-undeclared"),
    "scx-gpu, hogs batch": (LAUNCHER, "spin", "scx-gpu"),
    "scx-gpu, undeclared": (LAUNCHER, "spin", "scx-gpu-undeclared"),
    DETECTOR_CELL: (FAST, "none", "scx-gpu-undeclared"),
    FAST_HOGS_CELL: (FAST, "spin", "scx-gpu-undeclared"),
}
KNOBS = ("hogs nice 19", "hogs SCHED_IDLE", "launcher nice -20")


def workload(duration: float) -> Workload:
    """The run's: the launcher, a thread per CPU."""
    return workloads.synthetic(duration)


def plan(reps: int, duration: float) -> list[matrix.Cell]:
    own = {FAST: workloads.synthetic(duration, threads=1, shape=FAST_SHAPE, name=FAST)}
    return matrix.repeat([matrix.Cell(noise, POLICIES[policy], 0, HOGS, traced=False,
                                      workload=own.get(name))
                          for name, noise, policy in CELLS.values()], reps)


def by_label(summary: pd.DataFrame) -> dict[str, pd.Series]:
    """The summary's rows of the cells above, by label."""
    rows = dict(summary.iterrows())
    return {label: rows[(name, False, noise, policy)]
            for label, (name, noise, policy) in CELLS.items()}


def verdict(summary: pd.DataFrame) -> dict[str, float]:
    cells = by_label(summary)

    def relative(label: str) -> float:
        return float(1 - cells[label].degradation_pct / 100)

    best_knob = max(relative(k) for k in KNOBS)
    detector = cells[DETECTOR_CELL]
    return {
        "best_mainline_knob_relative": best_knob,
        "gpu_first_undeclared_vs_best_knob_pts": 100 * (relative("scx-gpu, undeclared")
                                                         - best_knob),
        "gpu_first_declared_vs_best_knob_pts": 100 * (relative("scx-gpu, hogs batch")
                                                       - best_knob),
        "batch_cpu_vs_sched_idle_pts": float(cells["scx-gpu, hogs batch"].noise_cpu_pct
                                             - cells["hogs SCHED_IDLE"].noise_cpu_pct),
        # The fair policy has no detector: the difference is the detector's.
        "detector_cost_pct": 100 * (1 - relative("alone (scx-gpu)")
                                    / relative("alone (scx-gpu fair)")),
        "scheduler_overhead_pct": 100 * (1 - relative("alone (scx-gpu fair)")),
        "probe_hits_per_launch_pct": float(100 * detector.probe_hits_per_launch),
        "gpu_tier_cpu_share": float(detector.gpu_tier_cpu_share),
        # Issue 13's "keeps 85% of its alone throughput beside undeclared hogs".
        "fast_launcher_undeclared_relative": float(cells[FAST_HOGS_CELL].tokens_per_s
                                                   / detector.tokens_per_s),
    }


def render(summary: pd.DataFrame, checks: dict[str, float]) -> Table:
    table = Table(title=f"launcher ({NPROC} threads, ~70% busy) beside {HOGS} CPU hogs")
    for column in ("cell", "tokens/s", "vs alone", "p99 token", "hogs' CPU"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for label, row in by_label(summary).items():
        relative = f"{100 - row.degradation_pct:.1f}%" if CELLS[label][0] == LAUNCHER else ""
        table.add_row(label, f"{row.tokens_per_s:.1f}", relative,
                      f"{row.token_ms_p99:.2f} ms", f"{row.noise_cpu_pct:.1f}%")
    table.caption = ", ".join(f"{k} {v:+.1f}" if "pts" in k else f"{k} {v:.2f}"
                              for k, v in checks.items())
    return table
