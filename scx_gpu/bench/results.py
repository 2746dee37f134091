"""A bench result directory: its files, loading it, and the per-cell summary.

DIR/bench.json says what ran and where; DIR/results.parquet holds one row
per completed cell run (rewritten after each, so an interrupted run keeps
its cells); DIR/summary.json is the summary below, rewritten alongside;
DIR/traces/<cell name>/ hold the tracer's files (traced cells only).

A cell of the summary is a workload, traced or not, under a noise and a
policy (KEYS). Degradation is against the stock scheduler without noise,
with the same workload and tracing, when the run has it (what the job gets
on a quiet node), else against the same policy without noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scx_gpu.errors import UsageError

MARKER, RESULTS, SUMMARY, TRACES = "bench.json", "results.parquet", "summary.json", "traces"
KIND = "scx-gpu-bench"
KEYS = ["workload", "traced", "noise", "policy"]


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    rows: pd.DataFrame


def load(path: Path) -> Run:
    marker = path / MARKER
    try:
        config = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a bench result (no readable {MARKER})") from exc
    if config.get("kind") != KIND:
        raise UsageError(f"{path} is not a bench result ({MARKER} is not ours)")
    if not (path / RESULTS).is_file():
        raise UsageError(f"{path}: no completed cells yet ({RESULTS} is missing)")
    rows = pd.read_parquet(path / RESULTS)
    # Runs that predate several workloads or untraced cells in one run.
    if "workload" not in rows:
        rows.insert(0, "workload", config.get("workload", "synthetic"))
    if "traced" not in rows:
        rows.insert(1, "traced", True)
    return Run(path, config, rows)


def _baseline(rates: pd.Series) -> pd.Series:
    """Each cell's quiet rate to judge it against (see above)."""
    base, missing = [], []
    for *setting, _, policy in rates.index:
        quiet = [k for k in ((*setting, "none", "stock"), (*setting, "none", policy))
                 if k in rates.index]
        if not quiet:
            missing.append(policy)
        base.append(rates[quiet[0]] if quiet else float("nan"))
    if missing:
        raise UsageError("no baseline: run with --noise none "
                         f"(missing for {', '.join(sorted(set(missing)))})")
    return pd.Series(base, index=rates.index)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell (KEYS): means over reps, spread, degradation vs the baseline."""
    grouped = rows.groupby(KEYS, sort=False)
    table = grouped.mean(numeric_only=True).drop(columns=["rep"])
    table["tokens_sd"] = grouped.tokens_per_s.std(ddof=0)
    if "drops" in rows:
        table["drops"] = grouped.drops.sum(min_count=1)
    table["reps"] = grouped.size()
    base = _baseline(table.tokens_per_s)
    table["degradation_pct"] = 100 * (base - table.tokens_per_s) / base
    return table


def save(out: Path, rows: list[dict[str, Any]]) -> None:
    """The rows and their summary, each replaced whole (a reader never sees half)."""
    frame = pd.DataFrame(rows)
    partial = out / (RESULTS + ".partial")
    frame.to_parquet(partial, index=False)
    partial.rename(out / RESULTS)
    partial = out / (SUMMARY + ".partial")
    partial.write_text(summarise(frame).reset_index().to_json(orient="records", indent=2))
    partial.rename(out / SUMMARY)
