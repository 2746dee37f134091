"""Synthetic GPU workloads shipped with scx-gpu (built by `make programs`)."""

import json
from pathlib import Path
from typing import Any

from scx_gpu.errors import EnvironmentProblem

BIN_DIR = Path(__file__).resolve().parent / "bin"


def program(name: str) -> Path:
    """Path of a built workload program or library (launcher, libcuda.so.1)."""
    path = BIN_DIR / name
    if not path.is_file():
        raise EnvironmentProblem(f"{path} is missing: run `make programs` in a source checkout")
    return path


def json_report(stdout: str) -> dict[str, Any] | None:
    """The last line of a workload's output that is a JSON object with tokens_per_s
    (what the launcher and the torch decoder print), or None."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("tokens_per_s"), int | float):
            return report
    return None
