"""A tracing session: the tracer object loaded, its probes attached, events drained."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scx_gpu.bpf import libbpf, maps, object_path, probesite
from scx_gpu.bpf.bpfobject import BpfObject
from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS
from scx_gpu.errors import UsageError
from scx_gpu.tracer.events import API_IDS, EVENT_DTYPE, LIB_DTYPE, TRACE_FOLLOW, TRACE_HOLD
from scx_gpu.tracer.ringbuf import RingReader

OBJECT = "cuda_trace.bpf.o"
TRACEPOINTS = ("on_switch", "on_wakeup", "on_fork", "on_hardirq_entry", "on_hardirq_exit",
               "on_softirq_entry", "on_softirq_exit")
# The program reading each launch entry point's arguments (a _ptsz variant
# takes its base's); the rest take cuLaunchKernel's.
LAUNCH_PROGRAMS = {"cuLaunchKernelEx": "on_launch_kernel_ex", "cuGraphLaunch": "on_graph_launch"}
# (symbol, program): the driver's launch family is the one counting layer.
DRIVER_LAUNCHES = tuple(
    (symbol, LAUNCH_PROGRAMS.get(symbol.removesuffix("_ptsz"), "on_launch_kernel"))
    for symbol in LAUNCH_SYMBOLS)
DRIVER_SYNCS = ("cuCtxSynchronize", "cuStreamSynchronize")
RUNTIME_LAUNCHES = (("cudaLaunchKernel", "on_cuda_launch_kernel"),)
RUNTIME_SYNCS = ("cudaDeviceSynchronize",)
DRIVER_LAUNCH_SYMBOLS = frozenset(LAUNCH_SYMBOLS)
MIN_RING_MB = 1
LIBS_RING_BYTES = 64 << 10  # as in cuda_trace.bpf.c


class LibKey(ctypes.Structure):
    """struct lib_key: a file by the kernel's dev_t and inode number."""

    _fields_ = [("dev", ctypes.c_uint64), ("ino", ctypes.c_uint64)]


@dataclass
class Probed:
    """What a library got: the symbols whose probes attached, and where."""

    path: Path
    layer: str
    symbols: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # bytes past each entry
    # Entry points the library has whose probe the kernel refused, and why.
    refused: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The symbols, each with +offset where its probe is past the entry,
        and any the kernel refused."""
        said = ", ".join(f"{s}+{self.offsets[s]}" if self.offsets.get(s) else s
                         for s in self.symbols) or "no symbols"
        refused = "; ".join(f"{s}: {why}" for s, why in self.refused.items())
        return f"{said}; NOT PROBED (launches there are not counted): {refused}" if refused \
            else said

    @property
    def launches(self) -> list[str]:
        """The driver launch entry points probed (what counts launches)."""
        return [s for s in self.symbols if s in DRIVER_LAUNCH_SYMBOLS]


class TraceSession:
    def __init__(self, ring_mb: int = 64, all_launchers: bool = True) -> None:
        if ring_mb < MIN_RING_MB or ring_mb & (ring_mb - 1):
            raise UsageError(f"--ring-mb {ring_mb}: a power of two >= {MIN_RING_MB}")
        self.ring_bytes = ring_mb << 20
        self.obj = BpfObject(object_path(OBJECT))
        self.obj.set_rodata({"trace_launchers": all_launchers})
        self.obj.set_max_entries("events", self.ring_bytes)
        self.obj.load()
        self.probed: list[Probed] = []
        self._uprobe_links: list[int] = []
        self._mmap_link: int | None = None
        self.reader = RingReader(self.obj.map_fd("events"), self.ring_bytes, EVENT_DTYPE)
        self.lib_reader = RingReader(self.obj.map_fd("libs"), LIBS_RING_BYTES, LIB_DTYPE)
        self.ncpus = libbpf.num_possible_cpus()

    def attach_tracepoints(self) -> None:
        for prog in TRACEPOINTS:
            self.obj.attach(prog)

    def _probe(self, lib: Path, layer: str, launches: tuple[tuple[str, str], ...],
               syncs: tuple[str, ...]) -> Probed:
        probed = Probed(lib, layer)
        targets = [(s, p, False) for s, p in launches] + [
            (s, prog, ret) for s in syncs
            for prog, ret in (("on_sync_enter", False), ("on_sync_exit", True))]
        for symbol, prog, ret in targets:
            try:
                link = self.obj.attach_uprobe(prog, lib, symbol, cookie=API_IDS[symbol],
                                              retprobe=ret)
            except libbpf.LibbpfError as exc:
                if exc.errno != errno.ENOENT:  # ENOENT: the library lacks it
                    probed.refused[symbol] = str(exc)
                continue
            self._uprobe_links.append(link)
            if symbol not in probed.symbols:
                probed.symbols.append(symbol)
                probed.offsets[symbol] = probesite.symbol_probe_offset(lib, symbol)
        self.probed.append(probed)
        return probed

    def probe_driver(self, lib: Path) -> Probed:
        return self._probe(lib, "driver", DRIVER_LAUNCHES, DRIVER_SYNCS)

    def probe_runtime(self, lib: Path) -> Probed:
        return self._probe(lib, "runtime", RUNTIME_LAUNCHES, RUNTIME_SYNCS)

    def watch_mappings(self) -> None:
        """Report each mapping of a libcuda file without probes (new_mappings())."""
        self._mmap_link = self.obj.attach("on_unmapped_area")

    def unwatch_mappings(self) -> list[int]:
        """No more reports, and no process held from here on; the processes that
        could have been held."""
        fd = self.obj.map_fd("traced")
        holding = []
        for tgid in list(maps.keys(fd, ctypes.c_uint32)):
            mark = maps.lookup(fd, tgid, ctypes.c_uint8)
            if mark is not None and mark.value == TRACE_HOLD:
                maps.update(fd, tgid, ctypes.c_uint8(TRACE_FOLLOW))
                holding.append(tgid.value)
        if self._mmap_link is not None:
            self.obj.detach(self._mmap_link)
            self._mmap_link = None
        return holding

    def new_mappings(self) -> np.ndarray:
        return self.lib_reader.read()

    def mark_probed(self, dev: int, ino: int) -> None:
        """The file (kernel dev_t, inode) has probes: its mappings need no report."""
        maps.update(self.obj.map_fd("probed_libs"), LibKey(dev, ino), ctypes.c_uint8(1))

    def add_process(self, tgid: int, hold: bool = False) -> None:
        """Trace tgid (and its children); hold: stop it at a new libcuda until probed."""
        maps.update(self.obj.map_fd("traced"), ctypes.c_uint32(tgid),
                    ctypes.c_uint8(TRACE_HOLD if hold else TRACE_FOLLOW))

    def traced(self) -> list[int]:
        return [k.value for k in maps.keys(self.obj.map_fd("traced"), ctypes.c_uint32)]

    def drain(self) -> np.ndarray:
        return self.reader.read()

    def drops(self) -> int:
        per_cpu = maps.lookup_percpu(self.obj.map_fd("drops"), ctypes.c_uint32(0),
                                     ctypes.c_uint64, self.ncpus)
        return sum(v.value for v in per_cpu)

    def close(self) -> None:
        for link in self._uprobe_links:
            self.obj.destroy_link(link)
        self._uprobe_links.clear()
        self.reader.close()
        self.lib_reader.close()
        self.obj.close()
