"""`scx-gpu analyze` output: the key metrics as a table, Markdown or JSON."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from scx_gpu.tracer.analysis import degradation_pct

# (label, getter) for the per-process summary rows.
ROWS: list[tuple[str, Any]] = [
    ("runtime (s)", lambda p, r: p["runtime_s"]),
    ("kernel launches", lambda p, r: p["launches"]),
    ("launches/s", lambda p, r: p["launches_per_s"]),
    ("context switches", lambda p, r: p["context_switches"]),
    ("switch rate (Hz)", lambda p, r: p["switch_rate_hz"]),
    ("off-CPU (% of runtime)", lambda p, r: p["off_cpu_pct"]),
    ("Sched/1K", lambda p, r: p["sched_per_1k_launches"]),
    ("SoftIRQ/1K", lambda p, r: r["irq"]["softirq_per_1k_launches"]),
    ("HardIRQ/1K", lambda p, r: r["irq"]["hardirq_per_1k_launches"]),
    ("pairs with switch (%)", lambda p, r: p["launch_pairs"]["with_switch"]["share_pct"]),
    ("gap P50 no switch (us)", lambda p, r: p["launch_pairs"]["without_switch"]["p50_us"]),
    ("gap P50 with switch (us)", lambda p, r: p["launch_pairs"]["with_switch"]["p50_us"]),
    ("preemption penalty (us)", lambda p, r: p["launch_pairs"]["preemption_penalty_us"]),
    ("scheduler impact (%)", lambda p, r: p["launch_pairs"]["scheduler_impact_pct"]),
    ("P95 tail with switch (%)", lambda p, r: p["launch_pairs"]["tail_p95"]["with_switch_pct"]),
    ("P99 tail with switch (%)", lambda p, r: p["launch_pairs"]["tail_p99"]["with_switch_pct"]),
    ("run-queue wait P99 (us)",
     lambda p, r: max((t["runqueue_wait_us"]["p99"] for t in p["threads"]), default=0.0)),
    ("IRQ time (% of runtime)", lambda p, r: r["irq"]["irq_time_pct_of_runtime"]),
    ("dropped events", lambda p, r: r["drops"]),
]


def _fmt(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def rows(result: dict[str, Any], baseline: dict[str, Any] | None) -> tuple[list[str],
                                                                           list[list[str]]]:
    header = ["metric"]
    table: list[list[str]] = [[label] for label, _ in ROWS]
    for proc in result["processes"]:
        base = _match(proc, baseline)
        if base is not None:
            header.append(f"baseline {base['comm']} ({base['pid']})")
            for row, (_, get) in zip(table, ROWS, strict=True):
                row.append(_fmt(get(base, baseline)))
        header.append(f"{proc['comm']} ({proc['pid']})")
        for row, (_, get) in zip(table, ROWS, strict=True):
            row.append(_fmt(get(proc, result)))
        if base is not None:
            header.append("degradation (%)")
            deg = degradation_pct(base["launches_per_s"], proc["launches_per_s"])
            for row in table:
                row.append(_fmt(deg) if row[0] == "launches/s" else "")
    return header, table


def _match(proc: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """The baseline's process with the same name (else its busiest)."""
    if not baseline or not baseline["processes"]:
        return None
    same = [p for p in baseline["processes"] if p["comm"] == proc["comm"]]
    best: dict[str, Any] = max(same or baseline["processes"], key=lambda p: p["launches"])
    return best


def render(result: dict[str, Any], baseline: dict[str, Any] | None, fmt: str) -> str:
    if fmt == "json":
        out = {"trace": result, "baseline": baseline}
        return json.dumps(out, indent=2, default=float)
    header, table = rows(result, baseline)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines)
    rich_table = Table(title=f"scx-gpu analyze ({result['launches']:,} launches, "
                             f"{result['drops']} dropped events)")
    for i, column in enumerate(header):
        rich_table.add_column(column, justify="left" if i == 0 else "right")
    for row in table:
        rich_table.add_row(*row)
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(rich_table)
    return console.export_html() if fmt == "html" else console.export_text()
