"""`scx-gpu trace`: capture a trace of chosen processes, or of a command."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from scx_gpu.bpf import libcuda
from scx_gpu.errors import EnvironmentProblem, UsageError
from scx_gpu.tracer.events import EVENT_DTYPE
from scx_gpu.tracer.libwatch import LibraryWatch
from scx_gpu.tracer.session import TraceSession

POLL_S = 0.02
RESCAN_S = 0.5


@dataclass
class CaptureSpec:
    pids: list[int] = field(default_factory=list)
    comms: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    duration: float | None = None
    cuda_libs: list[str] = field(default_factory=list)
    cudart_libs: list[str] = field(default_factory=list)
    ring_mb: int = 64
    stdout: Any = None  # where the traced command's output goes (inherited by default)

    @property
    def selective(self) -> bool:
        """Trace only what was named (else every process that launches)."""
        return bool(self.pids or self.comms or self.cgroups or self.cmd)


@dataclass
class Capture:
    events: np.ndarray
    meta: dict[str, Any]
    exit_status: int | None
    interrupted: bool = False  # stopped by SIGINT/SIGTERM, not by its end


def check(spec: CaptureSpec) -> None:
    """Environment and input checks, before anything is loaded or written."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("scx-gpu trace needs root (it loads BPF programs)")
    for pid in spec.pids:
        if not Path(f"/proc/{pid}").is_dir():
            raise UsageError(f"--pid {pid}: no such process")
    for cgroup in spec.cgroups:
        if not (Path(cgroup) / "cgroup.procs").is_file():
            raise UsageError(f"--cgroup {cgroup}: not a cgroup v2 directory")
    if spec.cmd and not shutil.which(spec.cmd[0]):
        raise UsageError(f"command not found: {spec.cmd[0]}")


def _matching_tgids(spec: CaptureSpec) -> set[int]:
    """Processes named by --comm or --cgroup, now."""
    found: set[int] = set()
    for cgroup in spec.cgroups:
        found.update(int(p) for p in (Path(cgroup) / "cgroup.procs").read_text().split())
    if spec.comms:
        for comm_file in Path("/proc").glob("[0-9]*/comm"):
            try:
                if comm_file.read_text().strip() in spec.comms:
                    found.add(int(comm_file.parent.name))
            except OSError:
                continue
    return found


# Runs in the child: wait for the gate, then become the command (same pid).
_GATE = "import os, sys; os.read(int(sys.argv[1]), 1); os.execvp(sys.argv[2], sys.argv[2:])"


def _start_command(session: TraceSession, cmd: list[str],
                   stdout: Any = None) -> subprocess.Popen[bytes]:
    """Start cmd held before exec until its pid is traced, so no launch is missed
    (and held at each new libcuda it maps until that is probed)."""
    gate_r, gate_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _GATE, str(gate_r), *cmd],
                            pass_fds=(gate_r,), stdout=stdout)
    os.close(gate_r)
    session.add_process(proc.pid, hold=True)
    os.write(gate_w, b"g")
    os.close(gate_w)
    return proc


def _probe_runtime(session: TraceSession, spec: CaptureSpec,
                   log: Callable[[str], None]) -> None:
    for path in spec.cudart_libs:
        probed = session.probe_runtime(Path(path))
        log(f"probing {path} (runtime layer): {probed.describe()}")


def capture(spec: CaptureSpec, log: Callable[[str], None]) -> Capture:
    check(spec)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal), signal.signal(signal.SIGTERM, on_signal)
    session = TraceSession(spec.ring_mb, all_launchers=not spec.selective)
    watch = LibraryWatch(session, log)
    chunks: list[np.ndarray] = []
    proc = None
    try:
        session.attach_tracepoints()
        watch.start(libcuda.discover(spec.cuda_libs))
        _probe_runtime(session, spec, log)
        for pid in spec.pids:
            session.add_process(pid)
        # --duration counts from here: loading and probing can take seconds.
        start_wall, start = time.time(), time.monotonic()
        cmd_start = start
        log("tracing" + (f" for {spec.duration:g}s" if spec.duration is not None else ""))
        if spec.cmd:
            proc = _start_command(session, spec.cmd, spec.stdout)
            cmd_start = time.monotonic()
        last_scan = 0.0
        while not stop.is_set():
            now = time.monotonic()
            watch.poll()
            if now - last_scan >= RESCAN_S:
                for tgid in _matching_tgids(spec):
                    session.add_process(tgid)
                watch.rescan()  # what the watch cannot see (an mmap at a given address)
                last_scan = now
            chunks.append(session.drain())
            if spec.duration is not None and now - start >= spec.duration:
                break
            if proc is not None and proc.poll() is not None:
                break
            stop.wait(POLL_S)
        mapping_watch = watch.watching
        watch.report()
        watch.close()  # nothing polls from here on: hold no process
        if proc is not None and proc.poll() is None and stop.is_set():
            proc.send_signal(signal.SIGINT)
        status = proc.wait() if proc is not None else None
        cmd_wall = time.monotonic() - cmd_start if proc is not None else None
        chunks.append(session.drain())
        drops = session.drops()
        meta = _meta(spec, session, start_wall, time.monotonic() - start, drops, status)
        meta["command_wall_s"] = cmd_wall
        meta["mapping_watch"] = mapping_watch
        meta["unprobed_libraries"] = watch.unprobed
    finally:
        watch.close()
        session.close()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    events = np.concatenate(chunks) if chunks else np.empty(0, EVENT_DTYPE)
    events.sort(order="ts_ns", kind="stable")
    return Capture(events, meta, status, stop.is_set())


def _meta(spec: CaptureSpec, session: TraceSession, start_wall: float, seconds: float,
          drops: int, status: int | None) -> dict[str, Any]:
    return {
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "start_time": start_wall, "duration_s": seconds, "drops": drops,
        "ring_mb": spec.ring_mb, "command": spec.cmd, "exit_status": status,
        "selection": {"pids": spec.pids, "comms": spec.comms, "cgroups": spec.cgroups,
                      "all_launchers": not spec.selective},
        "libraries": [{"path": str(p.path), "layer": p.layer, "symbols": p.symbols,
                       "probe_offsets": p.offsets, "refused": p.refused}
                      for p in session.probed],
        "tool": f"scx-gpu trace (python {sys.version.split()[0]})",
    }
