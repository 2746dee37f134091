"""`scx-gpu trace -- ./app` where app finds libcuda through its own RPATH only
(not the linker cache, not a driver path): the tracer must find the file the
process maps and count every launch, from threads other than the main one."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scx_gpu.tracer import tracefile
from scx_gpu.tracer.libwatch import LibraryWatch, stopped
from scx_gpu.tracer.session import DRIVER_LAUNCHES, TraceSession
from scx_gpu.workloads import program

pytestmark = pytest.mark.root
SOURCE = Path(__file__).parents[2] / "scx_gpu" / "workloads" / "launcher.c"
NO_PROBE = "no launch probe was attached"
LAUNCH_SYMBOLS = {symbol for symbol, _ in DRIVER_LAUNCHES}


def _build_app(tmp: Path, link: str) -> Path:
    """app with an RPATH to tmp/lib, holding a copy of the stub driver; link
    'dlopen': the app dlopens libcuda.so.1 itself; 'needed': the dynamic
    linker maps it before main (a DT_NEEDED entry)."""
    lib = tmp / "lib"
    lib.mkdir()
    shutil.copy(program("libcuda.so.1"), lib / "libcuda.so.1")
    needed = ["-Wl,--no-as-needed", str(lib / "libcuda.so.1")] if link == "needed" else []
    app = tmp / "app"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(app), str(SOURCE), "-ldl", *needed,
                    f"-Wl,-rpath,{lib}"], check=True)
    return app


def _trace(tmp: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """scx-gpu trace --format csv -o trace.csv -- CMD, run in tmp as a user would."""
    return subprocess.run([sys.executable, "-m", "scx_gpu", "trace", "--format", "csv", "-o",
                           "trace.csv", "--", *cmd], cwd=tmp, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize(("link", "api", "work_us", "shell"), [
    ("dlopen", "all", "20", False),    # kernel, Ex and graph launches, ~35k launches/s
    ("needed", "graph", "200", False),  # a graph-launch-only app, mapped before main
    ("dlopen", "kernel", "100", True),  # a child of the traced command (a shell) maps it
])
def test_every_launch_of_an_rpath_libcuda_is_counted(tmp_path, link, api, work_us, shell):
    _build_app(tmp_path, link)
    cmd = ["./app", "--threads", "2", "--api", api, "--launches", "9", "--duration", "1",
           "--work-us", work_us, "--gpu-wait-us", "200"]
    # "; true" keeps the shell from exec-ing the app: the app is its child.
    proc = _trace(tmp_path, *(["sh", "-c", " ".join(cmd) + "; true"] if shell else cmd))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    frame, meta = tracefile.read(tmp_path / "trace.csv")
    launches = frame[frame.event_type.str.startswith("cu") & frame.event_type.str.contains(
        "Launch")]
    assert report["pid"] not in set(launches.tid)  # the main thread never launches
    for tid, count in zip(report["tids"], report["thread_launches"], strict=True):
        assert (launches.tid == tid).sum() == count, (tid, count, proc.stderr)
    assert len(launches) == report["launches"] > 1000
    assert f"({report['launches']} launches)" in proc.stderr  # the closing summary
    if api == "graph":
        assert set(launches.event_type) == {"cuGraphLaunch"}
    mapped = str(tmp_path / "lib" / "libcuda.so.1")
    assert f"probing {mapped} (mapped by pid {report['pid']}, held until probed)" in proc.stderr
    assert mapped in [lib["path"] for lib in meta["libraries"]]
    assert meta["unprobed_libraries"] == [] and NO_PROBE not in proc.stderr


def test_a_mapped_libcuda_without_launch_entry_points_is_said_plainly(tmp_path):
    """A libcuda-named file the probes cannot attach to: the trace says so, once."""
    lib = tmp_path / "lib" / "libcuda.so.1"
    lib.parent.mkdir()
    src = tmp_path / "empty.c"
    src.write_text("int cuInit(unsigned int flags) { return (int)flags; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    proc = _trace(tmp_path, sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(lib)!r})")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if str(lib) in line and "NOT" in line]
    assert len(said) == 1 and "no launch entry point" in said[0], proc.stderr
    meta = json.loads((tmp_path / "trace.csv.meta.json").read_text())
    assert [u["library"] for u in meta["unprobed_libraries"]] == [str(lib)]
    launch_probes = [s for probed in meta["libraries"] for s in probed["symbols"]
                     if s in LAUNCH_SYMBOLS]
    assert (NO_PROBE in proc.stderr) == (not launch_probes), proc.stderr


def test_a_traced_pid_is_probed_on_notice_and_never_stopped(tmp_path):
    """--pid: the process was not started by the trace, so it is not held; its
    libcuda is probed as soon as it is reported, and launches count from then."""
    _build_app(tmp_path, "dlopen")
    waiting = subprocess.Popen(["sh", "-c", "read go; exec ./app --threads 2 --duration 2 "
                                "--work-us 20 --gpu-wait-us 200"], cwd=tmp_path,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tracer = subprocess.Popen([sys.executable, "-m", "scx_gpu", "trace", "--format", "csv",
                               "-o", "trace.csv", "--pid", str(waiting.pid), "--duration", "5"],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None and waiting.stdin is not None
    said = []
    while (line := tracer.stderr.readline()) not in ("", "scx-gpu trace: tracing for 5s\n"):
        said.append(line)
    assert line, said
    report = json.loads(waiting.communicate("go\n", timeout=60)[0])
    rest = tracer.stderr.read()
    assert tracer.wait(timeout=60) == 0, rest
    mapped = tmp_path / "lib" / "libcuda.so.1"
    assert f"probing {mapped} (mapped by pid {waiting.pid}):" in rest, rest
    frame, _ = tracefile.read(tmp_path / "trace.csv")
    counted = frame.event_type.str.startswith("cuLaunch").sum()
    # Launches before the probe (one poll, ~20 ms of 2 s) are not counted.
    assert 0.8 * report["launches"] <= counted <= report["launches"], (counted, report)


def test_closing_the_watch_continues_a_held_process(tmp_path):
    """A process held at its libcuda mmap is continued when the watch closes, even
    if the report was never handled (the trace stopping at that moment)."""
    lib = tmp_path / "libcuda.so.1"
    shutil.copy(program("libcuda.so.1"), lib)
    child = subprocess.Popen([sys.executable, "-c", "import ctypes, sys; sys.stdin.read(1); "
                              f"ctypes.CDLL({str(lib)!r})"], stdin=subprocess.PIPE)
    session = TraceSession(ring_mb=1, all_launchers=False)
    watch = LibraryWatch(session, lambda line: None)
    try:
        watch.start([])
        session.add_process(child.pid, hold=True)
        assert child.stdin is not None
        child.stdin.write(b"g")
        child.stdin.close()
        deadline = time.monotonic() + 30
        while not stopped(child.pid):
            assert child.poll() is None and time.monotonic() < deadline, "never held"
            time.sleep(0.01)
    finally:
        watch.close()
        session.close()
    try:
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()  # never leave it stopped, whatever failed
