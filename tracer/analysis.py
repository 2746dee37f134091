"""The metrics of tracer-spec.md, per process and per launching thread.

Works on the frame tracefile.read() returns (ours or the original CSV).
All times are in nanoseconds inside, reported in the unit their name says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scx_gpu.tracer.events import API_NAMES, RUNTIME_APIS

LAUNCH_EVENTS = {name for name in API_NAMES.values()
                 if "Launch" in name and name not in RUNTIME_APIS}
SWITCH, WAKEUP = "schedSwitch", "schedWakeup"
HARD_EXIT, SOFT_EXIT = "hardirqExit", "softirqExit"


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


@dataclass
class ThreadPairs:
    gaps: np.ndarray          # ns between consecutive launches of one thread
    switched: np.ndarray      # bool: the thread went off-CPU in between


def launch_pairs(launches: np.ndarray, switch_outs: np.ndarray) -> ThreadPairs:
    """Consecutive launches of one thread, and whether it was switched out between."""
    launches = np.sort(launches)
    outs = np.sort(switch_outs)
    gaps = np.diff(launches)
    # Switch-outs strictly after the first launch of a pair and before the second.
    between = np.searchsorted(outs, launches[1:], "left") - np.searchsorted(
        outs, launches[:-1], "right")
    return ThreadPairs(gaps, between > 0)


def off_cpu_ns(outs: np.ndarray, ins: np.ndarray, end: int) -> int:
    """Total time off the CPU: each switch-out until the next switch-in (or the end)."""
    outs, ins = np.sort(outs), np.append(np.sort(ins), end)  # still off at the end
    back = ins[np.searchsorted(ins, outs, "left")]
    return int((back - outs).sum())


def runqueue_waits(ready: np.ndarray, ins: np.ndarray) -> np.ndarray:
    """Ready to running: each wakeup or preemption until the thread's next switch-in."""
    ins = np.sort(ins)
    nxt = np.searchsorted(ins, ready, "left")
    ok = nxt < len(ins)
    return np.asarray(ins[nxt[ok]] - ready[ok])


def still_runnable(prev_state: np.ndarray, preempt: np.ndarray) -> np.ndarray:
    """Switch-outs that left the thread runnable (TASK_RUNNING, or preempted)."""
    return np.asarray((prev_state == 0) | preempt)


def pair_metrics(pairs: ThreadPairs, runtime_ns: int) -> dict[str, Any]:
    gaps, switched = pairs.gaps, pairs.switched
    with_sw, without = gaps[switched], gaps[~switched]
    penalty = (float(np.median(with_sw)) - float(np.median(without))
               if len(with_sw) and len(without) else 0.0)
    out: dict[str, Any] = {
        "pairs": len(gaps),
        "with_switch": {"count": int(switched.sum()),
                        "share_pct": 100 * float(switched.mean()) if len(gaps) else 0.0,
                        **{f"p{q}_us": _pct(with_sw, q) / 1e3 for q in (50, 90, 99)}},
        "without_switch": {"count": int((~switched).sum()),
                           "share_pct": 100 * float((~switched).mean()) if len(gaps) else 0.0,
                           **{f"p{q}_us": _pct(without, q) / 1e3 for q in (50, 90, 99)}},
        "preemption_penalty_us": penalty / 1e3,
        "scheduler_impact_pct": (100 * int(switched.sum()) * penalty / runtime_ns
                                 if runtime_ns else 0.0),
    }
    for q in (95, 99):
        tail = gaps >= _pct(gaps, q) if len(gaps) else np.zeros(0, bool)
        share = 100 * float(switched[tail].mean()) if tail.any() else 0.0
        out[f"tail_p{q}"] = {"pairs": int(tail.sum()), "with_switch_pct": share,
                             "application_pct": 100 - share if tail.any() else 0.0}
    return out


def irq_metrics(frame: pd.DataFrame, runtime_ns: int, launches: int) -> dict[str, Any]:
    hard = frame[frame.event_type == HARD_EXIT]
    soft = frame[frame.event_type == SOFT_EXIT]
    total = int(hard.duration_ns.sum() + soft.duration_ns.sum())

    def summary(rows: pd.DataFrame) -> dict[str, Any]:
        time_ns = int(rows.duration_ns.sum())
        return {"count": len(rows), "total_us": time_ns / 1e3,
                "mean_us": float(rows.duration_ns.mean()) / 1e3 if len(rows) else 0.0,
                "max_us": float(rows.duration_ns.max()) / 1e3 if len(rows) else 0.0,
                "share_of_irq_pct": 100 * time_ns / total if total else 0.0}

    return {
        "hardirq": summary(hard), "softirq": summary(soft),
        "softirq_by_type": {str(name): summary(rows)
                            for name, rows in soft.groupby("irq_name", sort=True)},
        "irq_time_pct_of_runtime": 100 * total / runtime_ns if runtime_ns else 0.0,
        "softirq_per_1k_launches": 1000 * len(soft) / launches if launches else 0.0,
        "hardirq_per_1k_launches": 1000 * len(hard) / launches if launches else 0.0,
    }


def _thread(frame: pd.DataFrame, tid: int, launches: np.ndarray, end: int,
            runtime_ns: int) -> dict[str, Any]:
    switches = frame[frame.event_type == SWITCH]
    out_rows = switches[switches.prev_tid == tid]
    outs = out_rows.timestamp_ns.to_numpy(np.int64)
    ins = switches.timestamp_ns[switches.next_tid == tid].to_numpy(np.int64)
    ready = frame.timestamp_ns[(frame.event_type == WAKEUP) & (frame.tid == tid)].to_numpy(np.int64)
    if {"prev_state", "preempt"} <= set(out_rows):  # the original CSV lacks the state
        ready = np.concatenate([ready, outs[still_runnable(out_rows.prev_state.to_numpy(),
                                                           out_rows.preempt.to_numpy())]])
    waits = runqueue_waits(ready, ins)
    off = off_cpu_ns(outs, ins, end)
    return {
        "tid": int(tid), "launches": len(launches), "context_switches": len(outs),
        "off_cpu_ms": off / 1e6, "off_cpu_pct": 100 * off / runtime_ns if runtime_ns else 0.0,
        "runqueue_wait_us": {f"p{q}": _pct(waits, q) / 1e3 for q in (50, 90, 99)},
        "pairs": launch_pairs(launches, outs),
    }


def analyse(frame: pd.DataFrame, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every metric of the spec, for each process that launched and its threads."""
    meta = meta or {}
    start, end = int(frame.timestamp_ns.min()), int(frame.timestamp_ns.max())
    runtime = end - start
    is_launch = frame.event_type.isin(LAUNCH_EVENTS)
    processes = []
    for pid, launches in frame[is_launch].groupby("pid"):
        threads = [_thread(frame, int(str(tid)), rows.timestamp_ns.to_numpy(np.int64), end,
                           runtime)
                   for tid, rows in launches.groupby("tid")]
        pairs = ThreadPairs(np.concatenate([t["pairs"].gaps for t in threads]),
                            np.concatenate([t["pairs"].switched for t in threads]))
        n_launch, n_switch = len(launches), sum(t["context_switches"] for t in threads)
        off = sum(t["off_cpu_ms"] for t in threads) * 1e6
        processes.append({
            "pid": int(str(pid)), "comm": str(launches.comm.iloc[0]),
            "runtime_s": runtime / 1e9, "launches": n_launch,
            "launches_per_s": n_launch / (runtime / 1e9) if runtime else 0.0,
            "context_switches": n_switch,
            "switch_rate_hz": n_switch / (runtime / 1e9) if runtime else 0.0,
            "off_cpu_ms": off / 1e6,
            "off_cpu_pct": 100 * off / (runtime * len(threads)) if runtime else 0.0,
            "sched_per_1k_launches": 1000 * n_switch / n_launch if n_launch else 0.0,
            "launch_pairs": pair_metrics(pairs, runtime),
            "threads": [{**{k: v for k, v in t.items() if k != "pairs"},
                         "launch_pairs": pair_metrics(t["pairs"], runtime)} for t in threads],
        })
    total_launches = int(is_launch.sum())
    return {
        "runtime_s": runtime / 1e9, "launches": total_launches,
        "drops": int(meta.get("drops", 0)),
        "irq": irq_metrics(frame, runtime, total_launches),
        "processes": processes,
    }


def degradation_pct(baseline_rate: float, rate: float) -> float:
    """(baseline - scenario) / baseline x 100, on launches (or tokens) per second."""
    return 100 * (baseline_rate - rate) / baseline_rate if baseline_rate else 0.0
