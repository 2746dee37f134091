"""`scx-gpu load`'s options for co-location beyond the CPU (controlplane.colocation)."""

from collections.abc import Callable
from typing import Any

import click

from scx_gpu.controlplane.config import Config

LIST_OPTIONS = ("net_devs", "batch_io_max", "irq_patterns")

_OPTIONS = (
    click.option("--net-isolate/--no-net-isolate", default=None,
                 help="Shape egress so that the batch tier's packets yield the link to the "
                      "other tiers (HTB; batch cgroups' packets marked by a cgroup BPF "
                      "program)."),
    click.option("--net-dev", "net_devs", multiple=True,
                 help="Device to shape (repeat) [the default route's device]."),
    click.option("--net-link-rate", help="The link's usable rate, e.g. 10gbit [95% of the "
                                         "device's reported speed]."),
    click.option("--net-share-pct", type=int,
                 help="Share of the link guaranteed to the tiers other than batch "
                      f"[{Config().net_share_pct}]."),
    click.option("--batch-net-rate", help="Ceiling of the batch tier's egress, e.g. 1gbit "
                                          "[the link rate]."),
    click.option("--batch-io-weight", type=int,
                 help="io.weight of the batch tier's cgroups, 1-10000 (the rest: 100)."),
    click.option("--batch-io-max", multiple=True, metavar="'DEV KEY=N ...'",
                 help="io.max limit of the batch tier on a device, e.g. "
                      "'/dev/nvme0n1 wbps=50m wiops=2000' (repeat)."),
    click.option("--batch-mem-high", help="memory.high of the batch tier's cgroups: 4G, 25% "
                                          "(of the machine's memory)."),
    click.option("--gpu-mem-low", help="memory.low of the gpu tier's cgroups: max, 8G."),
    click.option("--irq-steer/--no-irq-steer", default=None,
                 help="Move device interrupts off the CPUs of --irq-avoid-cpus; restored on "
                      "exit."),
    click.option("--irq-pattern", "irq_patterns", multiple=True,
                 help="Interrupt handler name glob to steer (repeat) [NIC and NVMe queues]."),
    click.option("--irq-avoid-cpus", help="CPUs to keep interrupts off, e.g. 0-7 [the NVIDIA "
                                          "GPUs' local CPUs]."),
)


def colocation_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def as_settings(flags: dict[str, Any]) -> None:
    """Repeatable options arrive as tuples; an empty one is not given."""
    for name in LIST_OPTIONS:
        flags[name] = list(flags[name]) or None
