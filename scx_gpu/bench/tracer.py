"""The tracer's own numbers: reader throughput, overhead, analysis time.

1. Throughput: the launcher with no CPU work or GPU wait launches as fast as
   the uprobes let it; events per second consumed, and drops. Uprobes cap
   that producer far below the reader, so the reader's own capacity is
   measured too: the ring fills undrained, then one drain is timed.
2. Overhead: the launcher (one thread) at its normal rate, untraced and
   traced, interleaved `reps` times: cells of the matrix (policy stock, no
   noise) into a standard result directory.
3. Probe cost: the CPU time one launch uprobe hit adds, with every probe on
   its function's entry and with probes where probesite puts them,
   interleaved untraced/entry/placed `reps` times in one run (medians, and
   their ratio).
4. Analysis: `analyse()` on 10M synthetic events.
Only the overhead is a comparison of a workload's throughput across cells;
the others measure the tracer itself (its reader, its probes, its analysis),
so they run as they are and their report goes beside the cells' as
tracer.json. Needs root (BPF); runs on the host kernel.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from scx_gpu.bench import workloads
from scx_gpu.bench.matrix import Cell, repeat
from scx_gpu.bench.policies import POLICIES
from scx_gpu.bench.workloads import Workload
from scx_gpu.bpf import probesite
from scx_gpu.tracer import analysis
from scx_gpu.tracer.capture import CaptureSpec, capture
from scx_gpu.tracer.session import TraceSession
from scx_gpu.workloads import json_report, program

REPORT = "tracer.json"


def _launcher(*args: str) -> list[str]:
    return [str(program("launcher")), "--cuda-lib", str(program("libcuda.so.1")), *args]


def throughput(seconds: float, ring_mb: int) -> dict[str, Any]:
    spec = CaptureSpec(cmd=_launcher("--duration", str(seconds), "--work-us", "0",
                                     "--gpu-wait-us", "0", "--launches", "1000"),
                       cuda_libs=[str(program("libcuda.so.1"))], ring_mb=ring_mb,
                       stdout=subprocess.DEVNULL)
    result = capture(spec, lambda _: None)
    seconds_run = float(result.meta["command_wall_s"])
    return {"events": len(result.events), "seconds": seconds_run,
            "events_per_s": len(result.events) / seconds_run, "drops": result.meta["drops"]}


def reader_capacity(seconds: float, ring_mb: int = 512) -> dict[str, Any]:
    session = TraceSession(ring_mb)
    try:
        session.probe_driver(program("libcuda.so.1"))
        subprocess.run(_launcher("--duration", str(seconds), "--work-us", "0", "--gpu-wait-us",
                                 "0", "--launches", "1000", "--threads", "2"),
                       stdout=subprocess.DEVNULL, check=True)
        start = time.perf_counter()
        events = session.drain()
        drain_s = time.perf_counter() - start
        return {"events": len(events), "drain_s": drain_s,
                "events_per_s": len(events) / drain_s, "drops": session.drops()}
    finally:
        session.close()


def workload(seconds: float) -> Workload:
    """The overhead's: the launcher, one thread at its normal rate."""
    return workloads.synthetic(seconds, threads=1)


def overhead_cells(reps: int) -> list[Cell]:
    return repeat([Cell("none", POLICIES["stock"], 0, traced=traced)
                   for traced in (False, True)], reps)


def overhead(summary: pd.DataFrame) -> dict[str, Any]:
    """The launcher's throughput, untraced and traced, from the cells' summary."""
    rows = dict(summary.iterrows())
    untraced, traced = (float(rows[("synthetic", t, "none", "stock")].tokens_per_s)
                        for t in (False, True))
    return {"untraced_tokens_per_s": untraced, "traced_tokens_per_s": traced,
            "throughput_overhead_pct": 100 * (untraced - traced) / untraced}


PROBE_COST_LAUNCHES = 1000  # a token's launches; its one sync is noise beside them


def _cpu_ns_per_launch(seconds: float, traced: TraceSession | None) -> float:
    """CPU time (user + system, the probes' traps and programs included) per launch
    of one launcher thread that only launches: unlike its rate, not skewed by
    whatever else the host runs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(_launcher("--duration", str(seconds), "--work-us", "0",
                                   "--gpu-wait-us", "0", "--launches", str(PROBE_COST_LAUNCHES)),
                         capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if traced is not None:
        traced.drain()
    report = json_report(out)
    if report is None:
        raise RuntimeError(f"launcher printed no report: {out!r}")
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return 1e9 * cpu_s / float(sum(report["thread_launches"]))


def _traced_cpu_ns(seconds: float, at_entry: bool) -> tuple[float, int]:
    """CPU ns per launch under the tracer's driver probes, and the events dropped."""
    previous = os.environ.pop(probesite.AT_ENTRY_ENV, None)
    if at_entry:
        os.environ[probesite.AT_ENTRY_ENV] = "1"
    session = TraceSession(ring_mb=512)
    try:
        session.probe_driver(program("libcuda.so.1"))
        return _cpu_ns_per_launch(seconds, session), session.drops()
    finally:
        session.close()
        os.environ.pop(probesite.AT_ENTRY_ENV, None)
        if previous is not None:
            os.environ[probesite.AT_ENTRY_ENV] = previous


def probe_cost(reps: int, seconds: float) -> dict[str, Any]:
    """ns a launch probe hit adds: probes on the entries vs where probesite puts them."""
    stub = program("libcuda.so.1")
    runs: dict[str, list[float]] = {"untraced": [], "entry": [], "placed": []}
    drops = 0
    for _ in range(reps):
        runs["untraced"].append(_cpu_ns_per_launch(seconds, None))
        for mode in ("entry", "placed"):
            ns, dropped = _traced_cpu_ns(seconds, at_entry=mode == "entry")
            runs[mode].append(ns)
            drops += dropped
    base = statistics.median(runs["untraced"])
    cost = {mode: statistics.median(runs[mode]) - base for mode in ("entry", "placed")}
    return {"cpu_ns_per_launch": runs, "drops": drops, "untraced_ns_per_launch": base,
            "entry_ns_per_hit": cost["entry"], "placed_ns_per_hit": cost["placed"],
            "entry_over_placed": cost["entry"] / cost["placed"],
            "placed_offsets": {s: probesite.symbol_probe_offset(stub, s)
                               for s in ("cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch")}}


def synthetic_frame(n: int, threads: int = 4) -> pd.DataFrame:
    """n events: per thread, launches every 10 us with a switch-out/in every 100 launches."""
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, n * 1000, n))
    kinds = np.array(["cuLaunchKernel", "schedSwitch", "softirqExit"], dtype=object)
    kind = kinds[np.where(rng.random(n) < 0.9, 0, np.where(rng.random(n) < 0.7, 1, 2))]
    tid = 100 + rng.integers(0, threads, n)
    return pd.DataFrame({
        "timestamp_ns": ts, "event_type": kind, "pid": 100, "tid": tid, "comm": "synthetic",
        "cpu": rng.integers(0, 16, n), "prev_tid": np.where(rng.random(n) < 0.5, tid, 0),
        "next_tid": tid, "irq_name": "NET_RX", "duration_ns": rng.integers(100, 5000, n)})


def analysis_time(n: int) -> dict[str, Any]:
    frame = synthetic_frame(n)
    start = time.process_time()
    analysis.analyse(frame)
    return {"events": n, "cpu_seconds": time.process_time() - start}


def run(reps: int, seconds: float, events: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every measure above but the overhead (its cells run by `scx-gpu bench tracer`)."""
    log("throughput")
    results = {"throughput": throughput(seconds, 64), "reader": reader_capacity(seconds)}
    log("probe cost")
    results["probe_cost"] = probe_cost(reps, seconds)
    log("analysis")
    results["analysis"] = analysis_time(events)
    return results


def render(results: dict[str, Any]) -> Table:
    table = Table(title="scx-gpu tracer benchmark")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    t, o, a = results["throughput"], results["overhead"], results["analysis"]
    c = results["probe_cost"]
    table.add_row("events consumed/s (launch-bound producer)", f"{t['events_per_s']:,.0f}",
                  ">= 1,000,000")
    r = results["reader"]
    table.add_row(f"reader: one drain of {r['events']:,} queued events",
                  f"{r['events_per_s']:,.0f}/s", ">= 1,000,000/s")
    table.add_row("dropped events", f"{t['drops'] + r['drops'] + c['drops']:,}", "0")
    table.add_row("tracer overhead on the launcher", f"{o['throughput_overhead_pct']:.2f}%",
                  "< 2%")
    table.add_row("CPU per launch probe hit, probe on the entry",
                  f"{c['entry_ns_per_hit']:,.0f} ns", "")
    table.add_row("CPU per launch probe hit, probe placed (probesite)",
                  f"{c['placed_ns_per_hit']:,.0f} ns", "")
    table.add_row("entry / placed", f"{c['entry_over_placed']:.2f}x", "> 1")
    table.add_row(f"analysis of {a['events']:,} events", f"{a['cpu_seconds']:.1f} s", "< 20 s")
    return table
