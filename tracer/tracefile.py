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
PARQUET_MAGIC = b"PAR1"
SHOW_UNKNOWN = 5  # unknown header names quoted in an error


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
        return _read_dir(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such trace")
    if _starts_with(path, PARQUET_MAGIC):
        raise UsageError(f"{path}: a Parquet file, not a trace: give the trace directory "
                         f"(with {EVENTS} and {META})")
    side = path.with_name(path.name + ".meta.json")
    return read_csv(path), _meta(side) if side.is_file() else {"source": "csv"}


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(magic)) == magic
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from exc


def _read_dir(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    for name in (EVENTS, META):
        if not (path / name).is_file():
            raise UsageError(f"{path}: not a trace directory (no {name})")
    try:
        frame = pd.read_parquet(path / EVENTS)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable trace ({exc})") from exc
    missing = [c for c in CSV_COLUMNS if c not in frame]
    if missing:
        raise UsageError(f"{path}: not a trace ({EVENTS} lacks the columns {','.join(missing)})")
    for column in TEXT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype(str)
    return _normalise(path, frame, EVENTS), _meta(path / META)


def _meta(path: Path) -> dict[str, Any]:
    """meta.json: an object; drops, when there, a count."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable trace description ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(drops := meta.get("drops", 0), int) \
            or drops < 0:
        raise UsageError(f"{path}: not a trace description (an object whose drops, if "
                         "given, is a count)")
    return meta


def read_csv(path: Path) -> pd.DataFrame:
    """Ours, or the original tool's: rows may be short (each event type fills its own
    fields), and its switch rows lack our prev/next columns (derived here)."""
    try:
        header = path.open().readline().strip().split(",")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from exc
    if header == [""]:
        raise UsageError(f"{path}: not a trace CSV (empty file)")
    if header[: len(CSV_COLUMNS)] != CSV_COLUMNS:
        unknown = [c for c in header if c not in CSV_COLUMNS + EXTRA_COLUMNS]
        shown = ",".join(ascii(c)[:40] for c in unknown[:SHOW_UNKNOWN])
        raise UsageError(f"{path}: not a trace CSV (expected the columns {','.join(CSV_COLUMNS)}"
                         + (f"; unknown columns {shown})" if unknown else ")"))
    try:
        frame = pd.read_csv(path, names=header, header=0, engine="python", dtype=str,
                            on_bad_lines="error", keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise UsageError(f"{path}: corrupt trace CSV ({exc})") from exc
    return _normalise(path, frame.fillna(""), "CSV")


def _normalise(path: Path, frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Numbers checked and made int64; the original tool's switch rows given ours.
    kind: "CSV" or EVENTS, to name the place of a problem."""
    if "preempt" in frame:
        frame["preempt"] = frame["preempt"].astype(str).isin(["True", "true", "1"])
    frame = _numbers(path, frame, kind)
    if not {"prev_tid", "next_tid"} <= set(frame.columns):
        frame = _from_original(path, frame, kind)
    return frame


def _corrupt(path: Path, kind: str, bad: pd.Series, problem: str) -> UsageError:
    """The error for the first bad row: its line in a CSV, its row in Parquet."""
    first = int(np.flatnonzero(bad)[0])
    place = f"line {first + 2}" if kind == "CSV" else f"row {first + 1}"
    return UsageError(f"{path}: corrupt trace {kind} ({place}: {problem})")


def _numbers(path: Path, frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Every column but the names and preempt as int64 (empty is 0)."""
    for column in frame.columns:
        if column in TEXT_COLUMNS or column == "preempt":
            continue
        raw = frame[column]
        numeric = pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw)
        values = pd.to_numeric(raw if numeric else raw.astype(str).replace("", "0"),
                               errors="coerce")
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values) | (values.abs() >= INT64_LIMIT)
        else:  # integers (uint64 may exceed int64) or bools
            bad = values.astype(object) >= INT64_LIMIT
        if bad.any():
            value = ascii(raw[bad].iloc[0])[:40]
            raise _corrupt(path, kind, bad, f"{column} {value} is not an integer")
        frame[column] = values.astype(np.int64)
    return frame


def _from_original(path: Path, frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The original tool's schedSwitch rows: the thread id in both pid and tid, the
    direction in which of last_offcpu_ns (out) and last_oncpu_ns (in) is non-zero.
    Give them our prev_tid/next_tid (-1: not this side) and their process id, taken
    from the thread's other rows (launches, syncs, IRQs carry pid and tid)."""
    switch = frame["event_type"] == "schedSwitch"
    out, back = frame["last_offcpu_ns"] != 0, frame["last_oncpu_ns"] != 0
    bad = switch & (out == back)
    if bad.any():
        raise _corrupt(path, kind, bad, "a schedSwitch row needs exactly one of "
                       "last_offcpu_ns and last_oncpu_ns non-zero")
    frame["prev_tid"] = frame["tid"].where(switch & out, -1)
    frame["next_tid"] = frame["tid"].where(switch & back, -1)
    owners = frame[~switch].drop_duplicates("tid").set_index("tid")["pid"]
    own = frame.loc[switch, "tid"].map(owners)
    frame.loc[switch, "pid"] = own.fillna(frame.loc[switch, "pid"]).astype(np.int64)
    return frame
