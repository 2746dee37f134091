"""Trace files: a directory with events.parquet and meta.json, or the CSV.

Written to DIR.partial and renamed when complete, so a path that exists is
a whole trace. The CSV's first columns are exactly the original study's.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scx_gpu.errors import UsageError
from scx_gpu.tracer.events import (
    API_NAMES,
    EV_LAUNCH,
    EV_SOFTIRQ_ENTRY,
    EV_SOFTIRQ_EXIT,
    FLAG_PREEMPT,
    RUNTIME_APIS,
    SOFTIRQ_NAMES,
    TYPE_NAMES,
)

CSV_COLUMNS = [
    "timestamp_ns", "event_type", "pid", "tid", "comm", "cpu", "grid_x", "grid_y", "grid_z",
    "block_x", "block_y", "block_z", "shared_mem", "stream", "last_offcpu_ns", "last_oncpu_ns",
    "irq_num", "irq_name", "duration_ns",
]
EXTRA_COLUMNS = ["layer", "prev_tid", "next_tid", "prev_state", "preempt"]
EVENTS, META = "events.parquet", "meta.json"
TEXT_COLUMNS = ("event_type", "comm", "irq_name", "layer")
INT64_LIMIT = 2**63


def _lookup(names: dict[int, str], codes: np.ndarray) -> np.ndarray:
    """names[code] for each code, vectorised; "unknown" for codes it lacks."""
    table = np.array([names.get(c, "unknown") for c in range(max(names) + 2)], dtype=object)
    return np.asarray(table[np.clip(codes, 0, len(table) - 1)])


def _event_names(types: np.ndarray, apis: np.ndarray) -> np.ndarray:
    out = _lookup(TYPE_NAMES, types)
    launch = types == EV_LAUNCH
    out[launch] = _lookup(API_NAMES, apis[launch])
    return out


def to_frame(events: np.ndarray) -> pd.DataFrame:
    """The spec's columns (timestamps relative to the first event), then ours."""
    t0 = int(events["ts_ns"].min()) if len(events) else 0
    types, apis = events["type"].astype(np.int64), events["api"].astype(np.int64)
    soft = (types == EV_SOFTIRQ_ENTRY) | (types == EV_SOFTIRQ_EXIT)
    irq_names = np.char.decode(events["irq_name"], errors="replace").astype(object)
    soft_names = np.array(SOFTIRQ_NAMES, dtype=object)
    irq_names[soft] = soft_names[np.clip(events["irq"][soft], 0, len(SOFTIRQ_NAMES) - 1)]
    event_type = _event_names(types, apis)
    frame = pd.DataFrame({
        "timestamp_ns": (events["ts_ns"] - t0).astype(np.int64),
        "event_type": event_type,
        "pid": events["pid"], "tid": events["tid"],
        "comm": np.char.decode(events["comm"], errors="replace"),
        "cpu": events["cpu"],
        "grid_x": events["grid"][:, 0], "grid_y": events["grid"][:, 1],
        "grid_z": events["grid"][:, 2],
        "block_x": events["block"][:, 0], "block_y": events["block"][:, 1],
        "block_z": events["block"][:, 2],
        "shared_mem": events["shared_mem"], "stream": events["stream"],
        "last_offcpu_ns": events["last_offcpu_ns"], "last_oncpu_ns": events["last_oncpu_ns"],
        "irq_num": events["irq"], "irq_name": irq_names,
        "duration_ns": events["duration_ns"],
        "layer": np.where(np.isin(event_type, list(RUNTIME_APIS)), "runtime", "driver"),
        "prev_tid": events["prev_tid"], "next_tid": events["next_tid"],
        "prev_state": events["prev_state"],
        "preempt": (events["flags"] & FLAG_PREEMPT) != 0,
    })
    return frame


def write(path: Path, frame: pd.DataFrame, meta: dict[str, Any], fmt: str) -> None:
    """Write the whole trace at once; path appears only when complete."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.unlink(missing_ok=True)
    if fmt == "csv":
        frame[CSV_COLUMNS + EXTRA_COLUMNS].to_csv(partial, index=False)
        path.with_name(path.name + ".meta.json").write_text(json.dumps(meta, indent=2))
    else:
        partial.mkdir(parents=True)
        frame.to_parquet(partial / EVENTS, index=False)
        (partial / META).write_text(json.dumps(meta, indent=2))
    partial.rename(path)


def read(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A trace directory, our CSV, or the original tool's (ragged) CSV."""
    if path.is_dir():
        try:
            frame = pd.read_parquet(path / EVENTS)
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable trace ({exc})") from exc
        return frame, meta
    if not path.is_file():
        raise UsageError(f"{path}: no such trace")
    return read_csv(path), _csv_meta(path)


def _csv_meta(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + ".meta.json")
    return json.loads(side.read_text()) if side.is_file() else {"source": "csv"}


def read_csv(path: Path) -> pd.DataFrame:
    """Ours, or the original tool's: rows may be short (each event type fills its own
    fields), and its switch rows lack our prev/next columns (derived here)."""
    try:
        header = path.open().readline().strip().split(",")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from exc
    if header[: len(CSV_COLUMNS)] != CSV_COLUMNS:
        unknown = [c for c in header if c not in CSV_COLUMNS + EXTRA_COLUMNS]
        raise UsageError(f"{path}: not a trace CSV (expected the columns {','.join(CSV_COLUMNS)}"
                         + (f"; unknown columns {','.join(unknown)})" if unknown else ")"))
    try:
        frame = pd.read_csv(path, names=header, header=0, engine="python", dtype=str,
                            on_bad_lines="error", keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UsageError(f"{path}: corrupt trace CSV ({exc})") from exc
    frame = _numbers(path, frame.fillna(""))
    if not {"prev_tid", "next_tid"} <= set(frame.columns):
        frame = _from_original(path, frame)
    return frame


def _numbers(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Every column but the names as int64 (empty is 0); preempt as a bool."""
    if "preempt" in frame:
        frame["preempt"] = frame["preempt"].isin(["True", "true", "1"])
    for column in frame.columns:
        if column in TEXT_COLUMNS or column == "preempt":
            continue
        values = pd.to_numeric(frame[column].replace("", "0"), errors="coerce")
        bad = ~np.isfinite(values) | (values.abs() >= INT64_LIMIT)
        if bad.any():
            line = int(np.flatnonzero(bad)[0]) + 2
            raise UsageError(f"{path}: corrupt trace CSV (line {line}: {column} "
                             f"{frame[column].iloc[line - 2]!r} is not an integer)")
        frame[column] = values.astype(np.int64)
    return frame


def _from_original(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The original tool's schedSwitch rows: the thread id in both pid and tid, the
    direction in which of last_offcpu_ns (out) and last_oncpu_ns (in) is non-zero.
    Give them our prev_tid/next_tid (-1: not this side) and their process id, taken
    from the thread's other rows (launches, syncs, IRQs carry pid and tid)."""
    switch = frame["event_type"] == "schedSwitch"
    out, back = frame["last_offcpu_ns"] != 0, frame["last_oncpu_ns"] != 0
    bad = switch & (out == back)
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        raise UsageError(f"{path}: corrupt trace CSV (line {line}: a schedSwitch row needs "
                         "exactly one of last_offcpu_ns and last_oncpu_ns non-zero)")
    frame["prev_tid"] = frame["tid"].where(switch & out, -1)
    frame["next_tid"] = frame["tid"].where(switch & back, -1)
    owners = frame[~switch].drop_duplicates("tid").set_index("tid")["pid"]
    own = frame.loc[switch, "tid"].map(owners)
    frame.loc[switch, "pid"] = own.fillna(frame.loc[switch, "pid"]).astype(np.int64)
    return frame
