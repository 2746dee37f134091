"""Malformed traces through the CLI: exit 0, or exit 2 with one line naming the file.

The fixed cases run the CLI as a user would (a subprocess); the generated
ones call the same entry point in this process (a subprocess each would
take minutes), with stdout and stderr captured.
"""

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scx_gpu import cli
from scx_gpu.tracer import tracefile
from tests.helpers import assert_one_line_error, scx_gpu

HEADER = tracefile.CSV_COLUMNS
EVENT_TYPES = ["cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch", "cudaLaunchKernel",
               "schedSwitch", "schedWakeup", "syncEnter", "syncExit", "hardirqEntry",
               "hardirqExit", "softirqEntry", "softirqExit", "bogus", ""]
FIELDS = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.integers(0, 10**6).map(str),
    st.sampled_from(["", "0", "-1", "1e3", "nan", "inf", "True", "x", '"', '"a,b"', " 7",
                     "0x10", "\u00e9"]),
    st.sampled_from(EVENT_TYPES),
    st.text(max_size=6))


def _run_cli(*args: str) -> tuple[int, str, str]:
    """scx-gpu ARGS through main(): (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["scx-gpu", *args]
    status = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return status, out.getvalue(), err.getvalue()


def _check(path: Path) -> None:
    for args in (["analyze", str(path), "--format", "json"],
                 ["export-perfetto", str(path), str(path.parent / "out.json")]):
        status, _, err = _run_cli(*args)
        lines = err.strip().splitlines()
        if status == 0:
            continue
        assert status == 2, (status, err)
        assert len(lines) == 1 and lines[0].startswith("scx-gpu: error:"), err
        assert str(path) in lines[0], lines[0]


SMALL = st.integers(0, 4).map(str)  # few ids and times: pairs, switches, ties
MOSTLY_SMALL = st.integers(0, 19).flatmap(lambda k: FIELDS if k == 0 else SMALL)


@st.composite
def rows(draw: st.DrawFn, width: int) -> list[str]:
    """Mostly a plausible row (small numbers where numbers go), sometimes anything."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.lists(FIELDS, max_size=width + 2))
    length = draw(st.sampled_from([16, 19, width, draw(st.integers(0, width + 1))]))
    row = [draw(st.integers(0, 10**4).map(str)), draw(st.sampled_from(EVENT_TYPES)),
           draw(SMALL), draw(SMALL), draw(st.sampled_from(["gpu", "", "a b"]))]
    row += [draw(MOSTLY_SMALL) for _ in range(width - len(row))]
    if row[1] == "schedSwitch" and draw(st.booleans()):  # as the original writes them
        row[14], row[15] = draw(st.sampled_from([("5", "0"), ("0", "5"), ("0", "0"),
                                                 ("5", "5")]))
    return row[:length]


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    extras = draw(st.lists(st.sampled_from(tracefile.EXTRA_COLUMNS), unique=True))
    header = draw(st.sampled_from([HEADER + extras] * 4 + [HEADER[:-1], [*HEADER, "x"]]))
    lines = [header, *draw(st.lists(rows(len(header)), max_size=12))]
    return "\n".join(",".join(r) for r in lines) + draw(st.sampled_from(["", "\n"]))


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(csv_texts())
def test_any_csv(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t.csv")
        path.write_text(text)
        _check(path)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t.csv")
        path.write_bytes(data)
        _check(path)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    """Mostly our columns with plausible values; some missing, some of another type."""
    n = draw(st.integers(0, 6))

    def column(values: st.SearchStrategy[object]) -> list[object]:
        return draw(st.lists(values, min_size=n, max_size=n))

    columns: dict[str, list[object]] = {}
    for name in HEADER + tracefile.EXTRA_COLUMNS:
        kind = draw(st.integers(0, 49))
        if kind == 0:
            continue
        if kind == 1:
            columns[name] = column(st.text(max_size=4))
        elif kind == 2:
            columns[name] = column(st.floats(allow_nan=True, allow_infinity=True))
        elif kind == 3:
            columns[name] = column(st.integers(0, 2**64 - 1))
        elif name == "event_type":
            columns[name] = column(st.sampled_from(EVENT_TYPES))
        elif name in tracefile.TEXT_COLUMNS:
            columns[name] = column(st.sampled_from(["gpu", "", "TIMER"]))
        else:
            columns[name] = column(st.integers(0, 4))
    return pd.DataFrame(columns)


@FUZZ
@given(frames(), st.sampled_from([None, "{}", json.dumps({"drops": 3}), '{"drops": "many"}',
                                  '{"drops": -1}', "[1]", "not json", "\xff"]))
def test_any_trace_directory(frame, meta):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t")
        path.mkdir()
        frame.to_parquet(path / tracefile.EVENTS)
        if meta is not None:
            (path / tracefile.META).write_text(meta)
        _check(path)


def _header_only(path: Path) -> None:
    path.write_text("timestamp_ns,event_type,pid\n1,cuLaunchKernel,3\n")


def _fake_parquet(path: Path) -> None:
    path.write_bytes(b"PAR1" + bytes(range(256)) + b"PAR1")


def _dir_without_meta(path: Path) -> None:
    path.mkdir()
    pd.DataFrame({"timestamp_ns": [0, 1], "event_type": ["cuLaunchKernel"] * 2}).to_parquet(
        path / tracefile.EVENTS)


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(bytes(range(255, 0, -1))), "cannot read"),
    (_header_only, "not a trace CSV"),
    (_fake_parquet, "a Parquet file, not a trace"),
    (_dir_without_meta, "no meta.json"),
])
def test_malformed_traces_are_one_line_errors(tmp_path, make, problem):
    path = tmp_path / "trace"
    make(path)
    assert_one_line_error(scx_gpu("analyze", str(path)), 2, [str(path), problem])
