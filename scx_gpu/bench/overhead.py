"""`scx-gpu trace --overhead`: the command untraced, then traced, compared.

The command's own throughput is used when its last output line is JSON
with tokens_per_s (as the synthetic launcher prints); wall time otherwise.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from scx_gpu.tracer.capture import Capture, CaptureSpec, capture
from scx_gpu.workloads import json_report


def _metric(output: str) -> float | None:
    report = json_report(output)
    return float(report["tokens_per_s"]) if report else None


def measure(spec: CaptureSpec, log: Callable[[str], None]) -> tuple[Capture, dict[str, Any]]:
    """Run spec.cmd without and with tracing; the traced capture and the comparison."""
    with tempfile.TemporaryDirectory() as tmp:
        plain_out, traced_out = Path(tmp, "plain"), Path(tmp, "traced")
        start = time.monotonic()
        with plain_out.open("w") as out:
            subprocess.run(spec.cmd, stdout=out, check=False)
        plain_s = time.monotonic() - start
        with traced_out.open("w") as out:
            result = capture(replace(spec, stdout=out), log)
        traced_s = float(result.meta["command_wall_s"])  # the command alone, not BPF load
        plain, traced = _metric(plain_out.read_text()), _metric(traced_out.read_text())
        print(traced_out.read_text(), end="")
    report: dict[str, Any] = {"untraced_wall_s": plain_s, "traced_wall_s": traced_s,
                              "wall_overhead_pct": 100 * (traced_s - plain_s) / plain_s}
    if plain is not None and traced is not None:
        report.update(untraced_tokens_per_s=plain, traced_tokens_per_s=traced,
                      throughput_overhead_pct=100 * (plain - traced) / plain)
    return result, report
