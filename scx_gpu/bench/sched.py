"""The scheduler against the mainline knobs, side by side in one boot.

Runs the synthetic launcher alone and beside 2 x nCPU hogs under: the stock
scheduler; hogs at nice 19; hogs SCHED_IDLE; the launcher at nice -20; and
scx-gpu gpu-first with the hogs declared batch and left undeclared. Reports
throughput relative to the launcher alone, p99 token time, the hogs' share of
all CPUs, the scheduler's own overhead (policy fair, launcher alone, vs stock)
and the detector's cost (gpu-first vs fair, launcher alone), and for a
launcher of about 10,000 launches a second the share of its launches the
probes hit and of its time it spent in the gpu tier.
Needs a sched_ext kernel: `make bench-sched` runs `scx-gpu bench sched` in the test VM.
"""

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from scx_gpu.bench import noise
from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.cgroups import cpu_seconds
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.workloads import SYNTHETIC_SHAPE


@dataclass(frozen=True)
class Cell:
    name: str
    hogs: bool
    scheduler: tuple[str, ...] | None = None  # `scx-gpu load` arguments
    hog_nice: int = 0
    hog_idle: bool = False
    launcher_nice: int = 0
    launcher: tuple[str, ...] = SYNTHETIC_SHAPE
    threads: int = NPROC


DECLARE_HOGS = ("--batch-cgroup", str(noise.NOISE_CGROUP))
CELLS = (
    Cell("alone (stock)", hogs=False),
    Cell("stock", hogs=True),
    Cell("hogs nice 19", hogs=True, hog_nice=19),
    Cell("hogs SCHED_IDLE", hogs=True, hog_idle=True),
    Cell("launcher nice -20", hogs=True, launcher_nice=-20),
    Cell("alone (scx-gpu fair)", hogs=False, scheduler=("--policy", "fair")),
    Cell("alone (scx-gpu)", hogs=False, scheduler=()),
    Cell("scx-gpu, hogs batch", hogs=True, scheduler=DECLARE_HOGS),
    Cell("scx-gpu, undeclared", hogs=True, scheduler=()),
    # One thread, busy: 50 launches of 100 us CPU work a token.
    Cell("detector, 10k launches/s", hogs=False, scheduler=(), threads=1,
         launcher=("--launches", "50", "--work-us", "100", "--gpu-wait-us", "0")),
)
DETECTOR_CELL = CELLS[-1].name
KNOBS = ("hogs nice 19", "hogs SCHED_IDLE", "launcher nice -20")


@contextmanager
def _hogs(cell: Cell) -> Iterator[Path | None]:
    if not cell.hogs:
        yield None
        return
    with noise.hogs(2 * NPROC, nice=cell.hog_nice, idle=cell.hog_idle) as cgroup:
        yield cgroup


def run_cell(cell: Cell, duration: float) -> dict[str, Any]:
    noise.NOISE_CGROUP.mkdir(exist_ok=True)  # --batch-cgroup needs it before load
    loaded: AbstractContextManager[Any] = (sc.loaded(*cell.scheduler) if cell.scheduler is not None
                                   else nullcontext())
    with ExitStack() as stack:
        stack.enter_context(loaded)
        cgroup = stack.enter_context(_hogs(cell))
        before, start = (cpu_seconds(cgroup) if cgroup else 0.0), time.monotonic()
        totals = _totals(cell)
        report = sc.launcher("--warmup", "1.5", "--duration", str(duration), "--threads",
                             str(cell.threads), *cell.launcher, nice=cell.launcher_nice)
        elapsed = time.monotonic() - start
        hog_share = (cpu_seconds(cgroup) - before) / (elapsed * NPROC) if cgroup else 0.0
        after = _totals(cell)
    row = {"cell": cell.name, "tokens_per_s": report["tokens_per_s"],
           "token_us_p99": report["token_us_p99"], "hog_cpu_share": hog_share}
    if totals and after:
        row.update(detector_figures(totals, after, report["launches"], elapsed))
    return row


def detector_figures(before: dict[str, Any], after: dict[str, Any], launches: int,
                     elapsed_s: float) -> dict[str, float]:
    """Between two of `status`'s totals: probe hits per launch (warm-up included on
    both sides: every launch and every hit of the run) and the gpu tier's CPU share."""
    gpu_s = after["tiers"]["gpu"]["runtime_s"] - before["tiers"]["gpu"]["runtime_s"]
    return {"probe_hits_per_launch": (after["detector_hits"] - before["detector_hits"])
            / max(1, launches), "gpu_tier_cpu_share": gpu_s / elapsed_s}


def _totals(cell: Cell) -> dict[str, Any] | None:
    """The loaded scheduler's counters since load (None under stock)."""
    if cell.scheduler is None:
        return None
    totals: dict[str, Any] = sc.status()["scx_gpu"]["totals"]
    return totals


def run_matrix(reps: int, duration: float,
               progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every cell `reps` times, interleaved so that drift hits all cells alike."""
    results = []
    for rep in range(reps):
        for cell in CELLS:
            progress(f"rep {rep + 1}/{reps}: {cell.name}")
            results.append({"rep": rep, **run_cell(cell, duration)})
    return results


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per cell: mean tokens/s, relative to alone (stock), p99 token ms, hog share."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_cell.setdefault(r["cell"], []).append(r)
    alone = statistics.mean(r["tokens_per_s"] for r in by_cell["alone (stock)"])
    return {
        name: {
            "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rows),
            "relative": statistics.mean(r["tokens_per_s"] for r in rows) / alone,
            "token_ms_p99": statistics.mean(r["token_us_p99"] for r in rows) / 1000,
            "hog_cpu_pct": 100 * statistics.mean(r["hog_cpu_share"] for r in rows),
            **{k: statistics.mean(r[k] for r in rows)
               for k in ("probe_hits_per_launch", "gpu_tier_cpu_share") if k in rows[0]},
        }
        for name, rows in by_cell.items()
    }


def verdict(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    best_knob = max(summary[k]["relative"] for k in KNOBS)
    return {
        "best_mainline_knob_relative": best_knob,
        "gpu_first_undeclared_vs_best_knob_pts": 100 * (
            summary["scx-gpu, undeclared"]["relative"] - best_knob),
        "gpu_first_declared_vs_best_knob_pts": 100 * (
            summary["scx-gpu, hogs batch"]["relative"] - best_knob),
        "batch_cpu_vs_sched_idle_pts": summary["scx-gpu, hogs batch"]["hog_cpu_pct"]
        - summary["hogs SCHED_IDLE"]["hog_cpu_pct"],
        # The fair policy has no detector: the difference is the detector's.
        "detector_cost_pct": 100 * (1 - summary["alone (scx-gpu)"]["tokens_per_s"]
                                    / summary["alone (scx-gpu fair)"]["tokens_per_s"]),
        "scheduler_overhead_pct": 100 * (1 - summary["alone (scx-gpu fair)"]["relative"]),
        "probe_hits_per_launch_pct": 100 * summary[DETECTOR_CELL]["probe_hits_per_launch"],
        "gpu_tier_cpu_share": summary[DETECTOR_CELL]["gpu_tier_cpu_share"],
    }


def render(summary: dict[str, dict[str, float]], checks: dict[str, float]) -> Table:
    table = Table(title=f"launcher ({NPROC} threads, ~70% busy) beside {2 * NPROC} CPU hogs")
    for column in ("cell", "tokens/s", "vs alone", "p99 token", "hogs' CPU"):
        table.add_column(column, justify="left" if column == "cell" else "right")
    for name, row in summary.items():
        table.add_row(name, f"{row['tokens_per_s']:.1f}", f"{100 * row['relative']:.1f}%",
                      f"{row['token_ms_p99']:.2f} ms", f"{row['hog_cpu_pct']:.1f}%")
    table.caption = ", ".join(f"{k} {v:+.1f}" if "pts" in k else f"{k} {v:.2f}"
                              for k, v in checks.items())
    return table


def run(reps: int, duration: float, log: Callable[[str], None]) -> dict[str, Any]:
    """The matrix, its summary and checks: `scx-gpu bench sched`."""
    results = run_matrix(reps, duration, log)
    summary = summarise(results)
    return {"results": results, "summary": summary, "checks": verdict(summary)}
