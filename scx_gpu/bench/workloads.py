"""Benchmark workloads: the command to run and how to read its metric.

synthetic: the shipped launcher (one launching thread per CPU, none of them
  the main thread; tokens of 10 launches through the stub or real libcuda,
  500 us of CPU work after each, then a 2 ms "GPU" wait).
torch: a random-weight transformer decode loop (PyTorch and a GPU).
cmd: any command; its tokens/s when it prints a JSON line with
  "tokens_per_s", else runs per second from its wall time.
"""

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scx_gpu.bpf import libcuda
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.errors import EnvironmentProblem, UsageError
from scx_gpu.workloads import SYNTHETIC_SHAPE, json_report, program

WORKLOADS = ("synthetic", "torch", "cmd")
WARMUP_S = 1.5


@dataclass(frozen=True)
class Workload:
    name: str
    argv: tuple[str, ...]
    cuda_libs: tuple[str, ...] = ()  # to probe beyond discovery


def synthetic(duration: float, cuda_lib: str | None = None, threads: int = NPROC,
              shape: tuple[str, ...] = SYNTHETIC_SHAPE, name: str = "synthetic") -> Workload:
    """The launcher: threads launching threads, each token of that shape."""
    lib = cuda_lib or str(program("libcuda.so.1"))
    return Workload(name, (str(program("launcher")), "--cuda-lib", lib, "--threads",
                           str(threads), "--warmup", str(WARMUP_S), "--duration",
                           str(duration), *shape), (lib,))


def torch(duration: float, mode: str = "eager") -> Workload:
    if importlib.util.find_spec("torch") is None:
        raise EnvironmentProblem("the torch workload needs PyTorch (and a CUDA GPU) here")
    script = Path(__file__).resolve().parent.parent / "workloads" / "torch_decode.py"
    if not libcuda.discover(scan_processes=False):
        raise EnvironmentProblem("the torch workload needs the CUDA driver: no libcuda found")
    return Workload("torch", (sys.executable, str(script), "--mode", mode, "--warmup",
                              str(WARMUP_S), "--duration", str(duration)))


def make(name: str, duration: float, cmd: list[str] | None = None,
         cuda_lib: str | None = None, torch_mode: str = "eager") -> Workload:
    if name == "synthetic":
        return synthetic(duration, cuda_lib)
    if name == "torch":
        return torch(duration, torch_mode)
    if name == "cmd":
        if not cmd:
            raise UsageError("--workload cmd needs the command after --: bench run ... -- CMD")
        return Workload("cmd", tuple(cmd), (cuda_lib,) if cuda_lib else ())
    raise UsageError(f"unknown workload {name!r}: choose from {', '.join(WORKLOADS)}")


def _launches(report: dict[str, Any]) -> dict[str, int]:
    """Every launch of the run, warm-up included as the probe hits beside it
    are (the launcher's "launches" counts the measured tokens' only)."""
    if "thread_launches" in report:
        return {"launches": sum(int(n) for n in report["thread_launches"])}
    return {"launches": int(report["launches"])} if "launches" in report else {}


def metric(stdout: str, wall_s: float) -> dict[str, Any]:
    """tokens/s and token time percentiles from the workload's JSON line (and its
    launches when it counts them), or runs/s from its wall time when it printed none."""
    report = json_report(stdout)
    if report is not None:
        return {"tokens_per_s": float(report["tokens_per_s"]),
                "token_ms_p50": float(report.get("token_us_p50", 0)) / 1e3,
                "token_ms_p99": float(report.get("token_us_p99", 0)) / 1e3,
                "metric": "tokens/s", **_launches(report)}
    return {"tokens_per_s": 1 / wall_s if wall_s > 0 else 0.0, "token_ms_p50": wall_s * 1e3,
            "token_ms_p99": wall_s * 1e3, "metric": "runs/s"}
