"""`scx-gpu export-perfetto`: Chrome/Perfetto trace-event JSON.

Thread tracks carry launches as instants and off-CPU time as slices; a
"CPUs" process has one track per CPU with its IRQ slices. Opens in
ui.perfetto.dev and chrome://tracing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scx_gpu.tracer.analysis import HARD_EXIT, LAUNCH_EVENTS, SOFT_EXIT, SWITCH

CPU_PID = 0  # the synthetic process holding one track per CPU


def _us(ns: Any) -> float:
    return float(ns) / 1000


def events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": CPU_PID, "args": {"name": "CPUs (IRQs)"}}]
    launches = frame[frame.event_type.isin(LAUNCH_EVENTS)]
    threads = launches[["pid", "tid"]].drop_duplicates().to_numpy(np.int64)
    for pid, tid in threads:
        rows = launches[launches.tid == tid]
        out.append({"ph": "M", "name": "thread_name", "pid": int(pid), "tid": int(tid),
                    "args": {"name": f"{rows.comm.iloc[0]} {tid}"}})
        out += [{"ph": "i", "s": "t", "name": name, "pid": int(pid), "tid": int(tid),
                 "ts": _us(ts), "args": {"grid": [int(gx), int(gy), int(gz)]}}
                for name, ts, gx, gy, gz in zip(rows.event_type, rows.timestamp_ns, rows.grid_x,
                                                rows.grid_y, rows.grid_z, strict=True)]
    switches = frame[frame.event_type == SWITCH]
    for pid, tid in threads:
        outs = np.sort(switches.timestamp_ns[switches.prev_tid == tid].to_numpy(np.int64))
        ins = np.sort(switches.timestamp_ns[switches.next_tid == tid].to_numpy(np.int64))
        nxt = np.searchsorted(ins, outs)
        for t, i in zip(outs, nxt, strict=True):
            if i < len(ins):
                out.append({"ph": "X", "name": "off-CPU", "pid": int(pid), "tid": int(tid),
                            "ts": _us(t), "dur": _us(ins[i] - t)})
    irqs = frame[frame.event_type.isin([HARD_EXIT, SOFT_EXIT])]
    out += [{"ph": "X", "name": str(name), "cat": "hardirq" if kind == HARD_EXIT else "softirq",
             "pid": CPU_PID, "tid": int(cpu), "ts": _us(ts - dur), "dur": _us(dur)}
            for kind, name, cpu, ts, dur in zip(irqs.event_type, irqs.irq_name, irqs.cpu,
                                                irqs.timestamp_ns, irqs.duration_ns, strict=True)]
    return out


def export(frame: pd.DataFrame) -> dict[str, Any]:
    return {"traceEvents": events(frame), "displayTimeUnit": "ns"}
