"""A bench result directory: its files, loading it, and the per-cell summary.

DIR/bench.json says what ran and where; DIR/results.parquet holds one row
per completed cell run (rewritten after each, so an interrupted run keeps
its cells); DIR/summary.json is the summary below, rewritten alongside;
DIR/traces/<noise>_<policy>_r<rep>/ hold the tracer's files.

Degradation is against the stock scheduler without noise when the run has
it (what the job gets on a quiet node), else against the same policy
without noise.
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
    return Run(path, config, pd.read_parquet(path / RESULTS))


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (noise, policy): means over reps, spread, degradation vs the baseline."""
    grouped = rows.groupby(["noise", "policy"], sort=False)
    table = grouped.mean(numeric_only=True).drop(columns=["rep"])
    table["tokens_sd"] = grouped.tokens_per_s.std(ddof=0)
    table["drops"] = grouped.drops.sum()
    table["reps"] = grouped.size()
    rates = table.tokens_per_s
    if ("none", "stock") in rates.index:
        base = pd.Series(rates[("none", "stock")], index=rates.index)
    else:
        quiet = {p: rates[("none", p)] for n, p in rates.index if n == "none"}
        missing = sorted({p for _, p in rates.index} - set(quiet))
        if missing:
            raise UsageError("no baseline: run with --noise none "
                             f"(missing for {', '.join(missing)})")
        base = pd.Series([quiet[p] for _, p in rates.index], index=rates.index)
    table["degradation_pct"] = 100 * (base - rates) / base
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
