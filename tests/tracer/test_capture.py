"""The tracer on the host kernel: real BPF, real uprobes on the stub libcuda."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scx_gpu.tracer import analysis, tracefile
from scx_gpu.tracer.events import EVENT_DTYPE
from scx_gpu.workloads import program
from tests.helpers import assert_one_line_error, scx_gpu

pytestmark = pytest.mark.root
LAUNCHER, STUB = program("launcher"), program("libcuda.so.1")
PER_TOKEN = 9  # --api all: kernel, Ex, graph, three times a token
SCX_GPU = [sys.executable, "-m", "scx_gpu"]


@pytest.fixture(scope="module")
def launcher_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "t"
    proc = scx_gpu("trace", "-o", str(out), "--cuda-lib", str(STUB), "--",
                   str(LAUNCHER), "--cuda-lib", str(STUB), "--threads", "2", "--api", "all",
                   "--launches", str(PER_TOKEN), "--duration", "1", "--work-us", "100",
                   "--gpu-wait-us", "2000")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    frame, meta = tracefile.read(out)
    return report, frame, meta, out


def test_every_launch_per_thread_with_its_arguments(launcher_trace):
    report, frame, _, _ = launcher_trace
    launches = frame[frame.event_type.isin(["cuLaunchKernel", "cuLaunchKernelEx",
                                            "cuGraphLaunch"])]
    for tid, count in zip(report["tids"], report["thread_launches"], strict=True):
        mine = launches[launches.tid == tid]
        assert len(mine) == count, (tid, len(mine), count)
        assert (mine.event_type.value_counts() == count // 3).all()
    assert report["pid"] not in set(launches.tid)  # the main thread never launches
    expected = {
        "cuLaunchKernel": (128, 2, 3, 256, 4, 5, 4096, 5),
        "cuLaunchKernelEx": (64, 7, 1, 32, 8, 2, 2048, 6),
        "cuGraphLaunch": (0, 0, 0, 0, 0, 0, 0, 7),
    }
    columns = ["grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem",
               "stream"]
    for name, values in expected.items():
        rows = launches[launches.event_type == name][columns].drop_duplicates()
        assert [tuple(r) for r in rows.itertuples(index=False)] == [values], name


def test_switches_of_both_launching_threads_and_syncs(launcher_trace):
    report, frame, meta, _ = launcher_trace
    switches = frame[frame.event_type == "schedSwitch"]
    for tid in report["tids"]:
        assert (switches.prev_tid == tid).sum() > 100, tid  # blocks in every sync
    syncs = frame[frame.event_type == "syncExit"]
    assert len(syncs) == report["tokens"]  # one stream sync a token
    assert syncs.duration_ns.median() >= 1_900_000  # the 2 ms "GPU" wait
    assert meta["drops"] == 0 and meta["exit_status"] == 0
    assert meta["libraries"][0]["path"] == str(STUB)
    offsets = meta["libraries"][0]["probe_offsets"]  # past endbr64 and the state compare
    assert offsets["cuLaunchKernel"] == offsets["cuStreamSynchronize"] == 14


def _blast_loopback(seconds: float) -> None:
    """Loopback TCP traffic: NET_RX/NET_TX softirqs."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def sink() -> None:
        conn, _ = server.accept()
        while conn.recv(1 << 16):
            pass

    threading.Thread(target=sink, daemon=True).start()
    client = socket.create_connection(("127.0.0.1", port))
    end, chunk = time.monotonic() + seconds, b"x" * (1 << 16)
    while time.monotonic() < end:
        client.sendall(chunk)
    client.close()


def test_irqs_and_softirqs_have_names_and_sane_durations(tmp_path):
    out = tmp_path / "t"
    blaster = threading.Thread(target=_blast_loopback, args=(1.5,))
    tracer = subprocess.Popen([*SCX_GPU, "trace", "-o", str(out), "--duration", "2",
                               "--pid", str(os.getpid())], stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None
    said = []  # probing ... lines, then the one that says the window starts
    while (line := tracer.stderr.readline()) not in ("", "scx-gpu trace: tracing for 2s\n"):
        said.append(line)
    assert line, said
    blaster.start()
    end = time.monotonic() + 1.5
    with open(tmp_path / "io", "wb") as f:  # disk I/O: hard IRQs of the block device
        while time.monotonic() < end:
            f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    blaster.join()
    assert tracer.wait(timeout=60) == 0, tracer.stderr.read()
    frame, _ = tracefile.read(out)
    soft = frame[frame.event_type == "softirqExit"]
    assert {"NET_RX", "TIMER"} <= set(soft.irq_name), set(soft.irq_name)
    hard = frame[frame.event_type == "hardirqExit"]
    assert len(hard) > 0 and (hard.irq_name != "").all()
    for exits in (soft, hard):
        assert (exits.duration_ns >= 0).all()
        assert exits.duration_ns.max() < 1_000_000_000  # nothing absurd, nesting included


def test_csv_has_the_spec_header_and_parses_back(tmp_path, launcher_trace):
    _, frame, meta, _ = launcher_trace
    out = tmp_path / "t.csv"
    tracefile.write(out, frame, meta, "csv")
    assert out.read_text().splitlines()[0].split(",")[:19] == tracefile.CSV_COLUMNS
    back = tracefile.read_csv(out)
    assert len(back) == len(frame)
    assert (back.event_type.values == frame.event_type.values).all()


def test_reads_the_original_tools_ragged_csv(tmp_path):
    ragged = tmp_path / "orig.csv"
    ragged.write_text(",".join(tracefile.CSV_COLUMNS) + "\n"
                      "100,cuLaunchKernel,10,11,python,0,128,1,1,256,1,1,0,7\n"
                      "200,schedSwitch,11,11,python,0,,,,,,,,,50,0\n"
                      "300,softirqExit,10,11,python,1,,,,,,,,,,,3,NET_RX,1500\n")
    frame = tracefile.read_csv(ragged)
    assert list(frame.event_type) == ["cuLaunchKernel", "schedSwitch", "softirqExit"]
    assert frame.loc[0, "grid_x"] == 128 and frame.loc[2, "duration_ns"] == 1500
    assert frame.loc[1, "last_offcpu_ns"] == 50
    assert (frame.loc[1, "pid"], frame.loc[1, "prev_tid"]) == (10, 11)  # thread 11 of 10


def test_bad_input(tmp_path):
    assert_one_line_error(scx_gpu("trace", "-o", str(tmp_path / "a"), "--", "/no/such/cmd"),
                          2, ["command not found"])
    assert_one_line_error(scx_gpu("trace", "-o", str(tmp_path / "b"), "--pid", "999999999"),
                          2, ["no such process"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    truncated = tmp_path / "trunc"
    truncated.mkdir()
    (truncated / "events.parquet").write_bytes(b"PAR1 not really")
    (truncated / "meta.json").write_text("{}")
    with pytest.raises(Exception, match="not a readable trace"):
        tracefile.read(truncated)
    unknown = tmp_path / "u.csv"
    unknown.write_text("when,what\n1,2\n")
    with pytest.raises(Exception, match="not a trace CSV"):
        tracefile.read_csv(unknown)


def test_not_root_is_an_environment_error(tmp_path):
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *SCX_GPU, "trace", "-o", str(tmp_path / "x"), "--duration", "1"],
                          capture_output=True, text=True, env={**os.environ, "HOME": "/tmp"})
    assert_one_line_error(proc, 1, ["needs root"])


def test_frame_keeps_spec_columns_first():
    frame = tracefile.to_frame(np.empty(0, EVENT_DTYPE))
    assert list(frame.columns[:19]) == tracefile.CSV_COLUMNS


def test_plots_html_and_perfetto(tmp_path, launcher_trace):
    report, _, _, path = launcher_trace
    proc = scx_gpu("analyze", str(path), "--format", "html", "--plots", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<!DOCTYPE html>") and "launches/s" in proc.stdout
    for name in ("launch_gaps.png", "timeline.png", "irq_time.png"):
        assert (tmp_path / "p" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    out = tmp_path / "t.json"
    assert scx_gpu("export-perfetto", str(path), str(out)).returncode == 0
    trace_events = json.loads(out.read_text())["traceEvents"]
    instants = [e for e in trace_events if e["ph"] == "i"]
    assert len(instants) == sum(report["thread_launches"])
    assert {e["tid"] for e in instants} == set(report["tids"])
    slices = [e for e in trace_events if e["ph"] == "X"]
    assert any(e["name"] == "off-CPU" and e["dur"] > 0 for e in slices)
    assert any(e["pid"] == 0 and e.get("cat") == "softirq" for e in slices)


def test_overhead_runs_untraced_and_traced(tmp_path):
    out = tmp_path / "t"
    proc = scx_gpu("trace", "--overhead", "-o", str(out), "--cuda-lib", str(STUB), "--",
                   str(LAUNCHER), "--cuda-lib", str(STUB), "--duration", "1")
    assert proc.returncode == 0, proc.stderr
    overhead = tracefile.read(out)[1]["overhead"]
    assert overhead["untraced_tokens_per_s"] > 0 and overhead["traced_tokens_per_s"] > 0
    assert abs(overhead["throughput_overhead_pct"]) < 20  # large effects only in tests
    assert "overhead:" in proc.stderr


def _launch_in_background(seconds: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(LAUNCHER), "--cuda-lib", str(STUB), "--duration", seconds,
                             "--work-us", "100"], stdout=subprocess.PIPE, text=True)


def test_comm_selection_traces_only_that_process(tmp_path):
    # The launchers outlive the trace however long it takes to start under load.
    launcher = _launch_in_background("60")
    other = _launch_in_background("60")
    (tmp_path / "launcher-copy").symlink_to(LAUNCHER)
    copy = subprocess.Popen([str(tmp_path / "launcher-copy"), "--cuda-lib", str(STUB),
                             "--duration", "60", "--work-us", "100"], stdout=subprocess.PIPE)
    out = tmp_path / "t"
    proc = scx_gpu("trace", "-o", str(out), "--cuda-lib", str(STUB), "--comm",
                   "launcher-copy", "--duration", "1.5")
    for p in (launcher, other, copy):
        p.kill()
        p.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    frame, meta = tracefile.read(out)
    launching = set(frame[frame.event_type.str.startswith("cu")].pid)
    assert launching == {copy.pid}, (launching, copy.pid, launcher.pid, other.pid)
    assert meta["selection"]["comms"] == ["launcher-copy"]


def test_ctrl_c_stops_and_still_writes_everything(tmp_path):
    out = tmp_path / "t"
    tracer = subprocess.Popen([*SCX_GPU, "trace", "-o", str(out), "--cuda-lib", str(STUB)],
                              stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None
    said = []  # probing ... lines, then the one that says tracing starts
    while (line := tracer.stderr.readline()) not in ("", "scx-gpu trace: tracing\n"):
        said.append(line)
    assert line, said
    launcher = _launch_in_background("1")
    launcher.wait(timeout=30)
    tracer.send_signal(signal.SIGINT)
    assert tracer.wait(timeout=30) == 0
    frame, meta = tracefile.read(out)
    launches = frame[frame.event_type.str.startswith("cu")]
    launcher_out, _ = launcher.communicate()
    assert len(launches) == json.loads(launcher_out)["launches"]
    assert not out.with_name("t.partial").exists() and meta["drops"] == 0


def test_runtime_layer_is_tagged_and_not_counted_twice(tmp_path):
    cudart = program("libcudart.so.13")
    out = tmp_path / "t"
    proc = scx_gpu("trace", "-o", str(out), "--cuda-lib", str(STUB), "--cudart-lib",
                   str(cudart), "--", str(LAUNCHER), "--cuda-lib", str(STUB), "--cudart-lib",
                   str(cudart), "--api", "runtime", "--duration", "1", "--work-us", "100")
    assert proc.returncode == 0, proc.stderr
    launched = json.loads(proc.stdout)["launches"]
    frame, _ = tracefile.read(out)
    runtime = frame[frame.event_type == "cudaLaunchKernel"]
    driver = frame[frame.event_type == "cuLaunchKernel"]
    assert len(runtime) == len(driver) == launched
    assert set(runtime.layer) == {"runtime"} and set(driver.layer) == {"driver"}
    columns = ["grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem",
               "stream"]
    for rows in (runtime, driver):
        assert [tuple(r) for r in rows[columns].drop_duplicates().itertuples(index=False)] \
            == [(16, 2, 1, 512, 1, 1, 1024, 8)]
    assert analysis.analyse(frame)["launches"] == launched  # the driver layer counts
    assert f"({launched} launches)" in proc.stderr


def _cgroup2_root() -> str:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return fields[1]
    raise AssertionError("no cgroup2 mount on this host")


def test_cgroup_selection(tmp_path):
    group = f"{_cgroup2_root()}/scx-gpu-test-{os.getpid()}"
    os.mkdir(group)
    try:
        inside = subprocess.Popen(["sh", "-c", f"echo $$ > {group}/cgroup.procs && exec \"$@\"",
                                   "sh", str(LAUNCHER), "--cuda-lib", str(STUB), "--duration",
                                   "60", "--work-us", "100"], stdout=subprocess.PIPE)
        outside = _launch_in_background("60")
        out = tmp_path / "t"
        proc = scx_gpu("trace", "-o", str(out), "--cuda-lib", str(STUB), "--cgroup", group,
                       "--duration", "1.5")
        for launcher in (inside, outside):
            launcher.kill()
            launcher.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr
        frame, _ = tracefile.read(out)
        assert set(frame[frame.event_type.str.startswith("cu")].pid) == {inside.pid}
    finally:
        os.rmdir(group)


def _file_offset(lib: Path, symbol: str) -> int:
    """Where symbol's code sits in lib's file (its value, less .text's load bias)."""
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                          text=True, check=True).stdout
    value = next(int(v, 16) for v, _, name in (line.split() for line in syms.splitlines())
                 if name == symbol)
    sections = subprocess.run(["readelf", "-SW", str(lib)], capture_output=True, text=True,
                              check=True).stdout
    text = next(line.split("]", 1)[1].split() for line in sections.splitlines()
                if " .text " in line)
    return value - int(text[2], 16) + int(text[3], 16)


def _uprobe_events(tracing: Path, line: str) -> None:
    """Add or remove a tracefs uprobe (appended without a seek: tracefs refuses one)."""
    fd = os.open(tracing / "uprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def test_a_probe_the_kernel_refuses_is_said_not_swallowed(tmp_path):
    """Another tool's uprobe at the same place with another reference counter
    (bookworm's bcc passes garbage there) makes the kernel refuse ours."""
    tracing = Path("/sys/kernel/tracing")
    if not (tracing / "uprobe_events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracing)], check=True)
    event = f"scxgpu_refuse_{os.getpid()}"
    offset = _file_offset(STUB, "cuLaunchKernel")
    _uprobe_events(tracing, f"p:uprobes/{event} {STUB}:{offset:#x}(0x6)")
    enable = tracing / "events" / "uprobes" / event / "enable"
    enable.write_text("1")
    try:
        out = tmp_path / "t"
        proc = scx_gpu("trace", "-o", str(out), "--cuda-lib", str(STUB), "--", str(LAUNCHER),
                       "--cuda-lib", str(STUB), "--api", "mixed", "--duration", "1",
                       env={"SCX_GPU_UPROBE_AT_ENTRY": "1"})
    finally:
        enable.write_text("0")
        _uprobe_events(tracing, f"-:uprobes/{event}")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "NOT PROBED" in line]
    assert len(said) == 1 and "cuLaunchKernel: uprobe" in said[0], proc.stderr
    library = tracefile.read(out)[1]["libraries"][0]
    assert list(library["refused"]) == ["cuLaunchKernel"]
    assert "cuLaunchKernelEx" in library["symbols"]
