"""Synthetic GPU workloads shipped with scx-gpu (built by `make programs`)."""

import json
from pathlib import Path
from typing import Any

from scx_gpu.errors import EnvironmentProblem

BIN_DIR = Path(__file__).resolve().parent / "bin"
# The synthetic launcher about 70% busy: 10 launches x 500 us of CPU, then a 2 ms "GPU" wait.
SYNTHETIC_SHAPE = ("--launches", "10", "--work-us", "500", "--gpu-wait-us", "2000")


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
