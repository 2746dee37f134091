"""`scx-gpu bench compare`: the side-by-side report of one or two bench runs."""

from __future__ import annotations

import base64
import io
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

from scx_gpu.bench.results import KEYS, Run, summarise
from scx_gpu.errors import UsageError

# (column, heading, format): the summary's columns in the order shown.
COLUMNS = (
    ("tokens_per_s", "tokens/s", "{:.1f}"), ("tokens_sd", "sd", "{:.1f}"),
    ("degradation_pct", "degradation", "{:.1f}%"), ("token_ms_p50", "p50 token", "{:.2f} ms"),
    ("token_ms_p99", "p99 token", "{:.2f} ms"),
    ("noise_cpu_pct", "noise CPU", "{:.1f}%"), ("sched_per_1k", "Sched/1K", "{:.1f}"),
    ("irq_per_1k", "IRQ/1K", "{:.1f}"), ("preemption_penalty_us", "penalty", "{:.0f} us"),
    ("rq_wait_p99_us", "rq wait p99", "{:.0f} us"), ("drops", "drops", "{:.0f}"),
)
# --metric: (summary column, "up" when a larger value is a regression)
METRICS = {"degradation": ("degradation_pct", True), "p99": ("token_ms_p99", True),
           "batch-cpu": ("noise_cpu_pct", False)}


def check_compatible(a: Run, b: Run) -> None:
    for key in ("workload", "command"):
        if a.config.get(key) != b.config.get(key):
            raise UsageError(f"{a.path} and {b.path} ran different {key}s "
                             f"({a.config.get(key)} vs {b.config.get(key)}): not comparable")
    if not set(summarise(a.rows).index) & set(summarise(b.rows).index):
        raise UsageError(f"{a.path} and {b.path} share no cell (workload, tracing, noise, "
                         "policy)")


def differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """b - a for every cell both have."""
    common = a.index.intersection(b.index)
    cols = [c for c, _, _ in COLUMNS if c in a.columns and c in b.columns]
    return b.loc[common, cols] - a.loc[common, cols]


def regressions(diff: pd.DataFrame, metric: str, threshold: float) -> list[str]:
    """Cells where the metric got worse by more than threshold."""
    column, up_is_bad = METRICS[metric]
    change = diff[column]
    worse = change if up_is_bad else -change
    labels = ["/".join(cell) for cell in _keys(diff)[1]]
    return [f"{label}: {column} {delta:+.2f}"
            for label, delta, bad in zip(labels, change, worse, strict=True)
            if bad > threshold]


def _keys(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The keys shown (noise and policy, and any other the cells differ in),
    and each cell's values of them."""
    keys = [k for k in KEYS if k in ("noise", "policy")
            or table.index.get_level_values(k).nunique() > 1]
    values = table.reset_index()[keys].astype(str).values.tolist()
    return keys, values


def _columns(table: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(heading, justify, cells) of every key shown and every column the table has
    (an untraced run has no tracer's figures)."""
    keys, values = _keys(table)
    shown = [(k, "left", [v[i] for v in values]) for i, k in enumerate(keys)]
    return shown + [(heading, "right", [fmt.format(v) if pd.notna(v) else "-"
                                         for v in table[column]])
                    for column, heading, fmt in COLUMNS if column in table]


def console() -> Console:
    """The terminal's width, or one wide enough for the whole table in a pipe."""
    return Console(width=None if sys.stdout.isatty() else 180)


def rich_table(table: pd.DataFrame, title: str) -> Table:
    out = Table(title=title)
    columns = _columns(table)
    for heading, justify, _ in columns:
        out.add_column(heading, justify="left" if justify == "left" else "right")
    for row in zip(*(cells for _, _, cells in columns), strict=True):
        out.add_row(*row)
    return out


def markdown(table: pd.DataFrame, title: str) -> str:
    columns = _columns(table)
    lines = [f"### {title}", "", "| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "".join("---|" if j == "left" else "---:|" for _, j, _ in columns)]
    lines += ["| " + " | ".join(row) + " |"
              for row in zip(*(cells for _, _, cells in columns), strict=True)]
    return "\n".join(lines) + "\n"


def plot_png(tables: dict[str, pd.DataFrame]) -> bytes:
    """Degradation per noise and policy, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    for ax, (label, table) in zip(axes[0], tables.items(), strict=True):
        keys, _ = _keys(table)
        lost = table.degradation_pct.droplevel([k for k in KEYS if k not in keys])
        lost.unstack("policy").plot.bar(ax=ax, rot=0)
        ax.set_title(label)
        ax.set_ylabel("throughput lost vs quiet stock (%)")
        ax.axhline(0, color="black", linewidth=0.5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def html(sections: dict[str, pd.DataFrame], png: bytes, notes: list[str]) -> str:
    body = [f"<h2>{title}</h2>"
            + table.reset_index().to_html(index=False, float_format=lambda v: f"{v:.2f}")
            for title, table in sections.items()]
    image = base64.b64encode(png).decode()
    return ("<!doctype html><meta charset=utf-8><title>scx-gpu bench compare</title>"
            "<h1>scx-gpu bench compare</h1>" + "".join(body)
            + f'<img alt="degradation" src="data:image/png;base64,{image}">'
            + "".join(f"<p>{n}</p>" for n in notes))
