"""Synthetic GPU workloads shipped with scx-gpu (built by `make programs`)."""

from pathlib import Path

from scx_gpu.errors import EnvironmentProblem

BIN_DIR = Path(__file__).resolve().parent / "bin"


def program(name: str) -> Path:
    """Path of a built workload program or library (launcher, libcuda.so.1)."""
    path = BIN_DIR / name
    if not path.is_file():
        raise EnvironmentProblem(f"{path} is missing: run `make programs` in a source checkout")
    return path
