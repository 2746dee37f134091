"""`scx-gpu analyze --plots DIR`: the pictures a user would rather look at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from scx_gpu.tracer.analysis import (
    HARD_EXIT,
    LAUNCH_EVENTS,
    SOFT_EXIT,
    SWITCH,
    launch_pairs,
)

TIMELINE_MS = 200


def _busiest_thread(frame: pd.DataFrame) -> int:
    launches = frame[frame.event_type.isin(LAUNCH_EVENTS)]
    counts = launches.tid.value_counts()
    return int(counts.index[int(np.argmax(counts.to_numpy()))])


def gap_distribution(frame: pd.DataFrame, out: Path) -> Path:
    switches = frame[frame.event_type == SWITCH]
    with_sw, without = [], []
    launches = frame[frame.event_type.isin(LAUNCH_EVENTS)]
    for tid in launches.tid.unique():
        rows = launches[launches.tid == tid]
        outs = switches.timestamp_ns[switches.prev_tid == tid].to_numpy(np.int64)
        pairs = launch_pairs(rows.timestamp_ns.to_numpy(np.int64), outs)
        with_sw.append(pairs.gaps[pairs.switched])
        without.append(pairs.gaps[~pairs.switched])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = [float(b) for b in np.logspace(2, 10, 80)]
    for gaps, label in ((np.concatenate(without), "no context switch"),
                        (np.concatenate(with_sw), "with a context switch")):
        if len(gaps):
            ax.hist(np.maximum(gaps, 100), bins=bins, alpha=0.6, label=f"{label} ({len(gaps):,})")
    ax.set(xscale="log", yscale="log", xlabel="gap between consecutive launches (ns)",
           ylabel="launch pairs", title="Launch gaps of each thread")
    ax.legend()
    path = out / "launch_gaps.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def timeline(frame: pd.DataFrame, out: Path) -> Path:
    tid = _busiest_thread(frame)
    start = int(frame.timestamp_ns[frame.tid == tid].min())
    window = frame[(frame.timestamp_ns >= start)
                   & (frame.timestamp_ns < start + TIMELINE_MS * 1_000_000)]
    ms = (window.timestamp_ns - start) / 1e6
    fig, ax = plt.subplots(figsize=(10, 3.5))
    launches = window.event_type.isin(LAUNCH_EVENTS) & (window.tid == tid)
    ax.vlines(ms[launches], 2.6, 3.4, linewidth=0.5, label="launch")
    outs = window[(window.event_type == SWITCH) & (window.prev_tid == tid)].timestamp_ns
    ins = window[(window.event_type == SWITCH) & (window.next_tid == tid)].timestamp_ns
    ins_sorted = np.sort(ins.to_numpy(np.int64))
    for t in outs.to_numpy(np.int64):
        nxt = ins_sorted[np.searchsorted(ins_sorted, t):]
        end = nxt[0] if len(nxt) else start + TIMELINE_MS * 1_000_000
        ax.broken_barh([((t - start) / 1e6, (end - t) / 1e6)], (1.6, 0.8), color="tab:red")
    irqs = window.event_type.isin([HARD_EXIT, SOFT_EXIT])
    ax.scatter(ms[irqs], np.ones(int(irqs.sum())), s=4, color="tab:green", label="IRQ exit")
    ax.set(yticks=[1, 2, 3], yticklabels=["IRQs (all CPUs)", "off-CPU", "launches"],
           xlabel="ms", title=f"Thread {tid}: the first {TIMELINE_MS} ms")
    path = out / "timeline.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def irq_time(frame: pd.DataFrame, out: Path) -> Path:
    exits = frame[frame.event_type.isin([HARD_EXIT, SOFT_EXIT])]
    kind = np.where(exits.event_type == HARD_EXIT, "hard:" + exits.irq_name.astype(str),
                    exits.irq_name.astype(str))
    totals = exits.duration_ns.groupby(kind).sum().sort_values() / 1e6
    fig, ax = plt.subplots(figsize=(8, 0.4 * max(len(totals), 3) + 1))
    ax.barh(totals.index.astype(str), totals.to_numpy())
    ax.set(xlabel="ms", title="IRQ time by type")
    path = out / "irq_time.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_all(frame: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [gap_distribution(frame, out), timeline(frame, out), irq_time(frame, out)]
