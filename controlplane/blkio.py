"""Block I/O for the batch tier (cgroup v2 io controller): low weight, optional limits.

io.weight ranks the batch tier's I/O below the rest (default weight 100)
where the device's I/O controller is weight-based (BFQ, or blk-iocost
enabled in the root's io.cost.qos); io.max caps its bandwidth and IOPS on
a device whatever the controller, writeback included (cgroup writeback
charges dirty pages to the cgroup that dirtied them).
"""

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from scx_gpu.controlplane.cgknobs import Knob
from scx_gpu.errors import UsageError

SYS_DEV_BLOCK = Path("/sys/dev/block")
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 10000
LIMIT_KEYS = ("rbps", "wbps", "riops", "wiops")
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
LIMIT_RE = re.compile(r"(rbps|wbps|riops|wiops)=(\d+)([kmg]?)", re.IGNORECASE)


def weight_knob(cgroup: Path, weight: int) -> Knob:
    if not 1 <= weight <= MAX_WEIGHT:
        raise UsageError(f"batch_io_weight {weight}: 1-{MAX_WEIGHT} (the rest has "
                         f"{DEFAULT_WEIGHT})")
    return Knob(cgroup, "io.weight", f"default {weight}",
                lambda old: [old.splitlines()[0]])  # "default N"; per-device lines untouched


def device_number(spec: str, sys_block: Path = SYS_DEV_BLOCK) -> str:
    """'MAJ:MIN' of the disk of a block device given as /dev path or MAJ:MIN (io.max
    takes whole disks: a partition stands for its disk)."""
    if re.fullmatch(r"\d+:\d+", spec):
        number = spec
    else:
        try:
            st = os.stat(spec)
        except OSError as exc:
            raise UsageError(f"block device {spec}: {exc.strerror}") from exc
        if not stat.S_ISBLK(st.st_mode):
            raise UsageError(f"{spec} is not a block device: give /dev/NAME or MAJ:MIN")
        number = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    node = sys_block / number
    if (node / "partition").is_file():
        return (node.resolve().parent / "dev").read_text().strip()
    return number


def parse_limit(spec: str) -> str:
    """'/dev/nvme0n1 wbps=50m riops=1000' -> '259:0 wbps=52428800 riops=1000'."""
    dev, *limits = spec.split()
    if not limits:
        raise UsageError(f"batch_io_max {spec!r}: a device and limits, e.g. "
                         "'/dev/nvme0n1 wbps=50m wiops=2000'")
    values = []
    for limit in limits:
        match = LIMIT_RE.fullmatch(limit)
        if not match:
            raise UsageError(f"batch_io_max {limit!r}: one of {', '.join(LIMIT_KEYS)}=N[k|m|g]")
        value = int(match.group(2)) * SIZE_UNITS[match.group(3).lower()]
        if value <= 0:
            raise UsageError(f"batch_io_max {limit!r}: a limit of 0 stops all I/O; give a "
                             "positive one")
        values.append(f"{match.group(1).lower()}={value}")
    return f"{device_number(dev)} " + " ".join(values)


def _restore_device(device: str) -> Callable[[str], list[str]]:
    def restore(old: str) -> list[str]:
        for line in old.splitlines():
            if line.split(" ", 1)[0] == device:
                return [line]
        return [f"{device} " + " ".join(f"{k}=max" for k in LIMIT_KEYS)]
    return restore


def limit_knob(cgroup: Path, spec: str) -> Knob:
    line = parse_limit(spec)
    return Knob(cgroup, "io.max", line, _restore_device(line.split(" ", 1)[0]))


def knobs(cgroups: list[Path], weight: int, limits: list[str]) -> list[Knob]:
    """The batch tier's I/O settings on each of its cgroups (weight 0: left alone)."""
    out = []
    for cgroup in cgroups:
        if weight:
            out.append(weight_knob(cgroup, weight))
        out.extend(limit_knob(cgroup, spec) for spec in limits)
    return out
