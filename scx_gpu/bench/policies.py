"""Scheduling policies the benchmark compares.

stock               the kernel's default scheduler, nothing changed.
pin-nice            the study's fix: the workload pinned (taskset, the first
                    half of the CPUs) at nice -10.
gpu-nice            the workload at nice -20.
batch-nice          the noise at nice 19.
batch-idle          the noise as SCHED_IDLE (its cgroup cpu.idle=1 where the
                    cpu controller runs).
scx-gpu             gpu-first, the noise declared batch (its cgroup).
scx-gpu-undeclared  gpu-first, the noise left normal: nothing declared.
fair                scx-gpu's fair policy (no tiers, no detector): what
                    sched_ext and the scheduler cost by themselves.
fallback            `scx-gpu load --fallback mainline` (no sched_ext needed),
                    the noise's cgroup declared batch (cgroup v2).
fallback-undeclared the same, nothing declared.
scx-gpu-isolated    scx-gpu, plus every co-location mechanism of `scx-gpu
                    load` aimed at the bench's noises (isolation_args).
"""

import os
from dataclasses import dataclass

from scx_gpu.bench.noise import DISK_DIR
from scx_gpu.controlplane import netshape
from scx_gpu.controlplane.runstate import sched_ext_state
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.errors import EnvironmentProblem, UsageError

PIN_CPUS = f"0-{max(1, NPROC // 2) - 1}"
MAINLINE = ("--fallback", "mainline")


@dataclass(frozen=True)
class Policy:
    name: str
    prefix: tuple[str, ...] = ()           # put before the workload's command
    noise_idle: bool = False
    noise_nice: int = 0
    scheduler: tuple[str, ...] | None = None  # `scx-gpu load` arguments; None: no scx
    declare_noise: bool = False             # --batch-cgroup NOISE_CGROUP
    isolate: bool = False                   # and isolation_args()

    @property
    def loads_sched_ext(self) -> bool:
        """Whether it loads scx-gpu's sched_ext scheduler (not the mainline fallback)."""
        return self.scheduler is not None and self.scheduler[:len(MAINLINE)] != MAINLINE


POLICIES = {p.name: p for p in (
    Policy("stock"),
    Policy("pin-nice", prefix=("taskset", "-c", PIN_CPUS, "nice", "-n", "-10")),
    Policy("gpu-nice", prefix=("nice", "-n", "-20")),
    Policy("batch-nice", noise_nice=19),
    Policy("batch-idle", noise_idle=True),
    Policy("scx-gpu", scheduler=(), declare_noise=True),
    Policy("scx-gpu-undeclared", scheduler=()),
    Policy("scx-gpu-isolated", scheduler=(), declare_noise=True, isolate=True),
    Policy("fair", scheduler=("--policy", "fair")),
    Policy("fallback", scheduler=MAINLINE, declare_noise=True),
    Policy("fallback-undeclared", scheduler=MAINLINE),
)}


# What the isolated policy gives the batch tier (the declared noise): the net
# noise talks over loopback, which has no speed of its own to shape below.
LOOPBACK_RATE = "1gbit"
BATCH_NET_RATE = "100mbit"
BATCH_IO_WEIGHT = 10
BATCH_IO_MAX = "wbps=16m wiops=500"
BATCH_MEM_HIGH = "25%"


def isolation_args(htb: bool | None = None) -> list[str]:
    """`scx-gpu load` flags for scx-gpu-isolated on this machine: net (loopback, where
    the net noise runs; where the kernel has HTB, built in or as a module), disk (the
    disk noise's disk), memory, and interrupts off the CPUs pin-nice gives the
    workload."""
    disk = os.stat(DISK_DIR.parent).st_dev
    net = ["--net-isolate", "--net-dev", "lo", "--net-link-rate", LOOPBACK_RATE,
           "--batch-net-rate", BATCH_NET_RATE]
    return [*(net if (netshape.htb_available() if htb is None else htb) else []),
            "--batch-io-weight", str(BATCH_IO_WEIGHT),
            "--batch-io-max", f"{os.major(disk)}:{os.minor(disk)} {BATCH_IO_MAX}",
            "--batch-mem-high", BATCH_MEM_HIGH, "--gpu-mem-low", "max",
            "--irq-steer", "--irq-avoid-cpus", PIN_CPUS]


def parse(names: str) -> list[Policy]:
    """Comma-separated policy names."""
    chosen = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in POLICIES:
            raise UsageError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")
        chosen.append(POLICIES[name])
    if not chosen:
        raise UsageError("--policy: name at least one policy")
    return chosen


def check_noise_layout(chosen: list[Policy], layout: str) -> None:
    """The mainline fallback declares the noise by its cgroup's cpu settings,
    which a shared layout's cgroup lacks (the cpu controller cannot run there)."""
    declaring = [p.name for p in chosen if p.declare_noise and p.scheduler == MAINLINE]
    if layout == "shared" and declaring:
        raise UsageError(f"policy {', '.join(declaring)} declares the noise's cgroup, which "
                         "--noise-cgroup shared puts where the cpu controller cannot run: drop "
                         "it or use --noise-cgroup own")


def check_kernel(chosen: list[Policy]) -> None:
    """Policies that load scx-gpu need sched_ext."""
    needs_scx = [p.name for p in chosen if p.loads_sched_ext]
    if needs_scx and sched_ext_state()[0] is None:
        raise EnvironmentProblem(
            f"policy {', '.join(needs_scx)} needs a kernel with sched_ext, and this one has none:"
            " run the benchmark in the test VM (`scx-gpu vm run -- scx-gpu bench run ...`)")
