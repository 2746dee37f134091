"""Prometheus text exposition of the running scheduler, on --metrics-addr.

Off unless asked; a bare port binds to loopback. Served from a daemon
thread that reads the scheduler's maps at each scrape, so the numbers are
as fresh as the request. What co-location applied (controlplane.colocation's
state) follows the scheduler's families: fixed while the loader runs.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scx_gpu.controlplane.intf import WAIT_BUCKETS, Stats, Tier
from scx_gpu.errors import EnvironmentProblem, UsageError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOPBACK = "127.0.0.1"


@dataclass
class Snapshot:
    stats: Stats
    quota_pct: int
    duty_cycle: float
    enabled: bool
    colocation: dict[str, Any] = field(default_factory=dict)  # colocation.applied()'s state
    tiers: bool = True  # the tiers' counters mean something: not under the mainline fallback


def parse_addr(spec: str) -> tuple[str, int]:
    """HOST:PORT or PORT (loopback)."""
    host, _, port = spec.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise UsageError(f"--metrics-addr {spec!r}: give PORT or HOST:PORT (port 1-65535)")
    return (host.strip("[]") or LOOPBACK), number


def _label(value: object) -> str:
    """A label value, escaped as the text format asks."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def render(snap: Snapshot) -> str:
    """The exposition text for one snapshot."""
    lines = _tier_lines(snap.stats) if snap.tiers else []
    scalars = [
        ("scx_gpu_batch_quota_ratio", "gauge", "Batch quota, share of all CPUs",
         snap.quota_pct / 100),
        ("scx_gpu_detector_hits_total", "counter", "Launch-probe hits",
         snap.stats.detector_hits),
        ("scx_gpu_detector_duty_cycle_ratio", "gauge",
         "Share of time a detection window was open (not probes standing unused)",
         snap.duty_cycle),
        ("scx_gpu_enabled", "gauge", "1 while sched_ext runs scx_gpu", int(snap.enabled)),
    ]
    if snap.tiers:
        scalars += [
            ("scx_gpu_batch_throttled_seconds_total", "counter",
             "CPU time left idle while batch waited on the quota",
             snap.stats.batch_throttled_ns / 1e9),
            ("scx_gpu_floor_dispatches_total", "counter", "Starving tasks the floor served",
             snap.stats.floor_dispatches),
        ]
    for name, kind, text, value in scalars:
        _family(lines, name, kind, text)
        lines.append(f"{name} {value}")
    lines += colocation_lines(snap.colocation)
    return "\n".join(lines) + "\n"


def _tier_lines(stats: Stats) -> list[str]:
    """The sched_ext scheduler's counters, by tier."""
    lines: list[str] = []
    tiers = [(t.name.lower(), stats.tier[t]) for t in Tier]
    _family(lines, "scx_gpu_tier_runtime_seconds_total", "counter", "CPU time run, by tier")
    lines += [f'scx_gpu_tier_runtime_seconds_total{{tier="{n}"}} {t.runtime_ns / 1e9}'
              for n, t in tiers]
    _family(lines, "scx_gpu_tier_runs_total", "counter", "Times a task of the tier ran")
    lines += [f'scx_gpu_tier_runs_total{{tier="{n}"}} {t.runs}' for n, t in tiers]
    _family(lines, "scx_gpu_tier_preemptions_total", "counter", "CPUs preempted for the tier")
    lines += [f'scx_gpu_tier_preemptions_total{{tier="{n}"}} {t.preemptions}' for n, t in tiers]
    _family(lines, "scx_gpu_wait_seconds", "histogram",
            "Run-queue wait, enqueue to running (log2 buckets; no sum is kept)")
    for n, t in tiers:
        seen = 0
        for bucket in range(WAIT_BUCKETS):
            seen += t.wait_hist[bucket]
            lines.append(f'scx_gpu_wait_seconds_bucket{{tier="{n}",le="{(2 << bucket) / 1e9}"}}'
                         f" {seen}")
        lines.append(f'scx_gpu_wait_seconds_bucket{{tier="{n}",le="+Inf"}} {seen}')
        lines.append(f'scx_gpu_wait_seconds_count{{tier="{n}"}} {seen}')
    return lines


def _gauges(lines: list[str], name: str, text: str,
            samples: list[tuple[dict[str, object], object]]) -> None:
    """One family, when it has samples (a mechanism not applied has none)."""
    if samples:
        _family(lines, name, "gauge", text)
        lines += [f"{name}{_labels(**labels)} {value}" for labels, value in samples]


def _bytes(value: str) -> str:
    """memory.high/low as written: bytes, or max (no limit)."""
    return "+Inf" if value == "max" else value


def colocation_lines(applied: dict[str, Any]) -> list[str]:
    """The families of what co-location applied: network shaping, cgroup settings, IRQs."""
    lines: list[str] = []
    nets = applied.get("network", [])
    for key, what in (("link_bps", "The shaped link's rate"),
                      ("rest_guaranteed_bps", "Rate guaranteed to the tiers other than batch"),
                      ("batch_ceil_bps", "Ceiling of the batch tier's egress")):
        name = "scx_gpu_net_" + key.removesuffix("_bps") + "_bits_per_second"
        _gauges(lines, name, f"{what}, by shaped device",
                [({"dev": n["dev"]}, n[key]) for n in nets])
    settings = applied.get("cgroup_settings", [])
    _gauges(lines, "scx_gpu_cgroup_setting_info", "A cgroup interface file scx-gpu set",
            [({"cgroup": s["cgroup"], "file": s["file"], "value": s["value"]}, 1)
             for s in settings])
    _gauges(lines, "scx_gpu_batch_io_weight", "io.weight of a batch cgroup",
            [({"cgroup": s["cgroup"]}, s["value"].split()[-1]) for s in settings
             if s["file"] == "io.weight"])
    for file, what in (("memory.high", "memory.high of a batch cgroup"),
                       ("memory.low", "memory.low of a gpu cgroup or its ancestor")):
        _gauges(lines, f"scx_gpu_{file.replace('.', '_')}_bytes", what,
                [({"cgroup": s["cgroup"]}, _bytes(s["value"])) for s in settings
                 if s["file"] == file])
    if "irqs" in applied:
        irqs = applied["irqs"]
        moved = [m for m in irqs if m["after"] is not None]
        _gauges(lines, "scx_gpu_irqs_moved", "Interrupts moved off the avoided CPUs",
                [({}, len(moved))])
        _gauges(lines, "scx_gpu_irqs_left", "Matching interrupts left where they were",
                [({}, len(irqs) - len(moved))])
        _gauges(lines, "scx_gpu_irq_steered_info", "A matching interrupt: its CPUs before and "
                "while scx-gpu runs (after empty: left, see why)",
                [({"irq": m["irq"], "handlers": ",".join(m["names"]), "before": m["before"],
                   "after": m["after"] or "", "why": m["why"]}, 1) for m in irqs])
    return lines


class MetricsServer:
    """The HTTP endpoint: GET /metrics renders a fresh snapshot."""

    def __init__(self, addr: tuple[str, int], snapshot: Callable[[], Snapshot]) -> None:
        # Here, not at the top: http.server and what it pulls in cost every
        # CLI start about 0.7 s under emulation, and most never serve metrics.
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = render(snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes are not worth a line each

        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        try:
            self.server = server_class(addr, Handler)
        except OSError as exc:
            raise EnvironmentProblem(f"--metrics-addr {addr[0]}:{addr[1]}: {exc.strerror}") from exc
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
