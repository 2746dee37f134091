"""The scx_stats protocol on a Unix socket, for scx's monitoring clients.

At the conventional path (/var/run/scx/root/stats), root only (mode 0600):
one JSON request a line, {"req": "stats" | "stats_meta", "args": {...}};
one JSON reply a line, {"errno": 0, "args": {"resp": ...}}. A request that is
too long, malformed or unknown gets errno EINVAL and a message, and changes
nothing (no request changes anything: this endpoint only reads).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scx_gpu.controlplane.stats import line as stats_line
from scx_gpu.errors import EnvironmentProblem

SOCKET_PATH = Path("/var/run/scx/root/stats")
MAX_REQUEST = 4096
TOP = "scx_gpu"


def _field(kind: str, desc: str) -> dict[str, Any]:
    return {"datum": kind, "desc": desc}


# What `stats` returns, described the way scx_stats describes a statistics struct.
META: dict[str, Any] = {
    TOP: {"name": TOP, "top": "true", "desc": "scx-gpu gpu-first scheduler, totals since load",
          "fields": {
              "tiers": {"dict": {"key": "string", "datum": {"struct": "tier"}},
                        "desc": "per tier: gpu, normal, batch"},
              "batch_quota_pct": _field("u64", "batch share of all CPUs per period, %"),
              "batch_throttled_ms": _field("float", "CPU time idle while batch waited on quota"),
              "floor_dispatches": _field("u64", "starving tasks the floor served"),
              "slice_kicks": _field("u64", "slices shorter than the tick ended by the timer"),
              "detector_hits": _field("u64", "launch-probe hits"),
              "detector_hits_by_entry": {"dict": {"key": "string", "datum": "u64"},
                                         "desc": "launch-probe hits by CUDA entry point"},
              "cpu_mismatches": _field("u64", "per-CPU records found holding another task "
                                       "(a scheduler bug; stays 0)"),
              "classifications": _field("u64", "tiers looked up in the membership maps "
                                        "(a task's cached tier serves until it may change)"),
              "budget_demotions": _field("u64", "tagged threads moved to the normal tier by "
                                         "the gpu budgets"),
              "rcu_readers": _field("u64", "preemptions inside an RCU read-side section "
                                    "(each served as if it had waited the floor)"),
              "detector_duty_pct": _field("float", "share of time the probes are attached, %"),
          }},
    "tier": {"name": "tier", "desc": "one tier's counters",
             "fields": {
                 "cpu_pct": _field("float", "CPU used, % of one CPU, since load"),
                 "runs": _field("u64", "times a task of the tier ran"),
                 "preemptions": _field("u64", "CPUs preempted for the tier"),
                 "wait_p50_us": _field("float", "run-queue wait p50 (log2 bucket bound)"),
                 "wait_p99_us": _field("float", "run-queue wait p99 (log2 bucket bound)"),
                 "wait_hist": {"array": "u64", "desc": "run-queue wait, log2(ns) buckets"},
             }},
}


def _reply(code: int, resp: Any) -> bytes:
    return (json.dumps({"errno": code, "args": {"resp": resp}}) + "\n").encode()


def handle(line: bytes, stats: Callable[[], dict[str, Any]]) -> bytes:
    """The reply to one request line (never raises on bad input)."""
    if len(line) > MAX_REQUEST:
        return _reply(errno.EINVAL, f"request longer than {MAX_REQUEST} bytes")
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return _reply(errno.EINVAL, "malformed request: not JSON")
    if not isinstance(request, dict) or not isinstance(request.get("req"), str) or not (
            isinstance(request.get("args", {}), dict)):
        return _reply(errno.EINVAL, 'a request is {"req": "stats"|"stats_meta", "args": {}}')
    args = request.get("args", {})
    if request["req"] == "stats_meta":
        return _reply(0, META)
    if request["req"] == "stats":
        if args.get("target", "top") not in ("top", TOP):
            return _reply(errno.EINVAL, f"unknown stat target {args.get('target')!r}")
        return _reply(0, stats())
    return _reply(errno.EINVAL, f"unknown command {request['req']!r}")


class StatsSocket:
    """Serves handle() on the socket, one thread per client, until close()."""

    def __init__(self, stats: Callable[[], dict[str, Any]], path: Path = SOCKET_PATH) -> None:
        self.stats, self.path = stats, path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()  # a stale socket of a scheduler that is gone (load checked)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # never reachable by others, not even briefly
        try:
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        path.chmod(0o600)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            while line := lines.readline(MAX_REQUEST + 1):
                conn.sendall(handle(line, self.stats))
                if len(line) > MAX_REQUEST and not line.endswith(b"\n"):
                    return  # the rest of an oversized line is not a request

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def monitor(interval: float, emit: Callable[[str], None], as_json: bool = False,
            path: Path = SOCKET_PATH) -> None:
    """`scx-gpu load --monitor`: the running scheduler's totals every interval."""
    if not path.exists():
        raise EnvironmentProblem(f"no statistics socket at {path}: is `scx-gpu load` running?")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, \
            contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a monitor ends
        sock.connect(str(path))
        with sock.makefile("rb") as replies:
            while True:
                sock.sendall(b'{"req": "stats", "args": {"target": "top"}}\n')
                line = replies.readline()
                if not line:
                    emit("scx-gpu: the scheduler went away")
                    return
                resp = json.loads(line)["args"]["resp"]
                emit(json.dumps(resp) if as_json else stats_line(resp))
                time.sleep(interval)
