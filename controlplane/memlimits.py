"""Memory for the tiers (cgroup v2 memory controller).

The batch tier gets memory.high: above it the kernel reclaims the tier's
own pages first and throttles its allocations, so it gives memory back
before anything else is touched. The gpu tier's cgroups get memory.low:
below it their pages are reclaimed only when nothing unprotected is left.
memory.low protects only as far as every ancestor's allows, so it is set
on each ancestor below the root as well (and restored on exit).
"""

import re
from pathlib import Path

from scx_gpu.controlplane.cgknobs import Knob
from scx_gpu.errors import UsageError

MEMINFO = Path("/proc/meminfo")
SIZE_RE = re.compile(r"(\d+)([kmg]?)|(\d+)%", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def total_bytes(meminfo: Path = MEMINFO) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise UsageError(f"{meminfo} has no MemTotal")


def parse_size(text: str, what: str, meminfo: Path = MEMINFO) -> str:
    """'2G', '512m', '25%' (of the machine's memory), or 'max' -> memory.* syntax."""
    if text == "max":
        return text
    match = SIZE_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what} {text!r}: a size such as 512M or 4G, a percentage of the "
                         "machine's memory such as 25%, or max")
    if match.group(3) is not None:
        pct = int(match.group(3))
        if not 0 < pct <= 100:
            raise UsageError(f"{what} {text!r}: a percentage 1-100")
        return str(total_bytes(meminfo) * pct // 100)
    value = int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if value <= 0:
        raise UsageError(f"{what} {text!r}: 0 bytes would leave the tier no memory at all")
    return str(value)


def batch_knobs(cgroups: list[Path], high: str) -> list[Knob]:
    value = parse_size(high, "batch_mem_high")
    return [Knob(c, "memory.high", value, lambda old: [old.strip()]) for c in cgroups]


def gpu_knobs(cgroups: list[Path], low: str, root: Path) -> list[Knob]:
    """memory.low on each gpu cgroup and its ancestors below root (outermost first)."""
    value = parse_size(low, "gpu_mem_low")
    chain: list[Path] = []
    for cgroup in cgroups:
        levels = [cgroup, *cgroup.parents]
        if root not in levels:
            raise UsageError(f"cgroup {cgroup} is not under {root}")
        for level in reversed(levels[: levels.index(root)]):
            if level not in chain:
                chain.append(level)
    return [Knob(c, "memory.low", value, lambda old: [old.strip()]) for c in chain]
