"""IRQ steering: device interrupts off the CPUs the gpu threads run on.

A NET_RX or block completion interrupt preempts whatever runs on its CPU,
the thread feeding the GPU included. steer() gives every interrupt whose
handler name matches a pattern (NICs and NVMe by default) an affinity
without the avoided CPUs: its own online CPUs minus those, or, when that is
empty, every online CPU but those, so no interrupt is ever left without a
CPU. Interrupts the kernel keeps (NVMe's managed per-queue vectors) refuse
and are reported as left in place. The undo writes every original
affinity back; a failure midway undoes what was already moved.
"""

import errno
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scx_gpu.controlplane import topology
from scx_gpu.controlplane.topology import format_cpulist
from scx_gpu.errors import EnvironmentProblem, UsageError

IRQ_ROOT = Path("/proc/irq")
CPU_ONLINE = Path("/sys/devices/system/cpu/online")
PCI_DEVICES = Path("/sys/bus/pci/devices")
NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASS_PREFIX = "0x03"  # VGA and 3D controllers
AFFINITY = "smp_affinity_list"
# Handler names: NVMe queues, virtio and Mellanox/Intel/Broadcom NIC queues,
# and drivers that name vectors after the interface.
DEFAULT_PATTERNS = ("nvme*", "virtio*-input.*", "virtio*-output.*", "mlx5_comp*", "mlx4-*",
                    "*-TxRx-*", "*-rx-*", "*-tx-*", "bnxt_en*", "eth*", "en*")

# The kernel's answers for interrupts whose affinity it keeps: EPERM for managed
# ones (NVMe's per-queue vectors), EIO where the interrupt chip cannot move it.
REFUSED = (errno.EPERM, errno.EIO)

Writer = Callable[[Path, str], None]
Note = Callable[[Path, str], None]  # told (path, the value restoring it) before each move


def parse_cpulist(text: str) -> frozenset[int]:
    return frozenset(topology.parse_cpulist(text))


def online_cpus(path: Path = CPU_ONLINE) -> frozenset[int]:
    return parse_cpulist(path.read_text())


def gpu_local_cpus(pci: Path = PCI_DEVICES) -> frozenset[int]:
    """The CPUs local to the NVIDIA GPUs (their NUMA nodes' CPUs)."""
    cpus: frozenset[int] = frozenset()
    for dev in pci.iterdir() if pci.is_dir() else []:
        try:
            vendor, klass = (dev / "vendor").read_text().strip(), (dev / "class").read_text()
            if vendor == NVIDIA_VENDOR and klass.startswith(DISPLAY_CLASS_PREFIX):
                cpus |= parse_cpulist((dev / "local_cpulist").read_text())
        except OSError:
            continue
    return cpus


@dataclass(frozen=True)
class Irq:
    number: int
    names: tuple[str, ...]  # its handlers (an interrupt may be shared)
    affinity: frozenset[int]


def matching(patterns: list[str], root: Path = IRQ_ROOT) -> list[Irq]:
    """Interrupts with a handler whose name matches a pattern."""
    found = []
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if not path.name.isdigit():
            continue
        names = tuple(sorted(d.name for d in path.iterdir() if d.is_dir()))
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns):
            found.append(Irq(int(path.name), names, parse_cpulist((path / AFFINITY).read_text())))
    return found


def target(affinity: frozenset[int], avoid: frozenset[int],
           online: frozenset[int]) -> frozenset[int]:
    """The new affinity: never empty, never an avoided or offline CPU."""
    return ((affinity & online) - avoid) or (online - avoid)


@dataclass(frozen=True)
class Move:
    irq: Irq
    after: frozenset[int] | None  # None: left in place (see why)
    why: str = ""

    def line(self) -> str:
        name = f"irq {self.irq.number} ({','.join(self.irq.names)})"
        before = format_cpulist(self.irq.affinity)
        if self.after is None:
            return f"{name} left on CPUs {before}: {self.why}"
        return f"{name} moved from CPUs {before} to {format_cpulist(self.after)}"

    def as_dict(self) -> dict[str, object]:
        return {"irq": self.irq.number, "names": list(self.irq.names),
                "before": format_cpulist(self.irq.affinity),
                "after": None if self.after is None else format_cpulist(self.after),
                "why": self.why}


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _restore(moves: list[Move], root: Path, write: Writer) -> None:
    failed = []
    for move in moves:
        if move.after is None:
            continue
        try:
            write(root / str(move.irq.number) / AFFINITY, format_cpulist(move.irq.affinity))
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # a device removed meanwhile took its interrupt
                failed.append(f"irq {move.irq.number}: {exc.strerror}")
    if failed:
        raise EnvironmentProblem("could not restore the affinity of " + "; ".join(failed)
                                 + f": write the original CPU lists to {root}/N/{AFFINITY}")


def selected(avoid: frozenset[int], patterns: list[str], root: Path = IRQ_ROOT,
             online: frozenset[int] | None = None) -> list[Irq]:
    """The interrupts steer() would move; bad input is an error here, before any move."""
    online = online_cpus() if online is None else online
    if not online - avoid:
        raise UsageError(f"the CPUs to keep interrupts off ({format_cpulist(avoid)}) are every "
                         "online CPU: leave at least one for interrupts")
    irqs = matching(patterns, root)
    if not irqs:
        raise UsageError(f"no interrupt has a handler matching {', '.join(patterns)}: "
                         "see the names in /proc/interrupts")
    return irqs


def steer(avoid: frozenset[int], patterns: list[str], root: Path = IRQ_ROOT,
          online: frozenset[int] | None = None,
          write: Writer = _write,
          note: Note = lambda path, value: None) -> tuple[list[Move], Callable[[], None]]:
    """Move matching interrupts off `avoid`; (what happened, the undo)."""
    online = online_cpus() if online is None else online
    irqs = selected(avoid, patterns, root, online)
    moves: list[Move] = []
    try:
        for irq in irqs:
            if irq.affinity & avoid:
                note(root / str(irq.number) / AFFINITY, format_cpulist(irq.affinity))
                moves.append(_move(irq, target(irq.affinity, avoid, online), root, write))
            else:
                moves.append(Move(irq, None, "already off those CPUs"))
    except BaseException:
        _restore(moves, root, write)
        raise
    return moves, lambda: _restore(moves, root, write)


def _move(irq: Irq, after: frozenset[int], root: Path, write: Writer) -> Move:
    try:
        write(root / str(irq.number) / AFFINITY, format_cpulist(after))
    except OSError as exc:
        if exc.errno in REFUSED:
            return Move(irq, None, "the kernel manages its affinity")
        if exc.errno == errno.ENOENT:
            return Move(irq, None, "gone")
        raise EnvironmentProblem(f"cannot set the affinity of irq {irq.number}: "
                                 f"{exc.strerror}: leave it out with --irq-pattern") from exc
    return Move(irq, after)
