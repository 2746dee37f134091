"""Duty-cycled GPU detection: launch uprobes attached in short windows.

A uprobe traps on every call of the probed function whatever the BPF
program does (about 0.4 us per launch on an H200 host, 45 us under
emulation), while a tag lives gpu_ttl anyway. So the probes are attached
for a window once per period: a thread that keeps launching is re-tagged
every period, well inside its ttl, at a fraction of the always-on cost.
A window is timed from when its probes are in place: attaching a probe per
entry point can take longer than the window itself under emulation.
Detaching waits for the kernel's RCU grace periods (0.1-0.2 s a probe, about
1 s for a window's eight on the test host, more under load); done in the
control plane's loop, it would hold back the next window and the renicing
of the threads a window has just tagged, so the loader has the probes
detached on a thread of their own (detach_in_background).
"""

import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scx_gpu.controlplane.libbpf import LibbpfError

# The driver's launch family: the one counting layer (runtime calls land here).
LAUNCH_SYMBOLS = (
    "cuLaunchKernel", "cuLaunchKernel_ptsz",
    "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz",
    "cuGraphLaunch", "cuGraphLaunch_ptsz",
)

Attach = Callable[[Path, str], int]
Detach = Callable[[int], None]


@dataclass
class Detector:
    attach: Attach
    detach: Detach
    window_s: float
    period_s: float
    libraries: list[Path] = field(default_factory=list)
    symbols: dict[Path, list[str]] = field(default_factory=dict)
    _links: list[int] = field(default_factory=list)
    _inodes: set[tuple[int, int]] = field(default_factory=set)
    clock: Callable[[], float] = time.monotonic
    detach_in_background: bool = False  # the loader's choice; off: each detach in tick()
    _pending: "queue.SimpleQueue[int | None]" = field(default_factory=queue.SimpleQueue)
    _detacher: threading.Thread | None = None
    _window_start: float | None = None
    _next_window: float = 0.0
    _attached_s: float = 0.0
    _started: float = 0.0

    def __post_init__(self) -> None:
        self._started = self.clock()

    def add_libraries(self, paths: Iterable[Path]) -> list[Path]:
        """Start probing new libraries at once; returns the ones that were new.

        A library is known by its inode: the same file under another path
        (a container's view of it) is probed once.
        """
        new = []
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in self._inodes:
                self._inodes.add((st.st_dev, st.st_ino))
                new.append(path)
        self.libraries.extend(new)
        if new:
            self._close_window()
            self._next_window = 0.0
        return new

    def tick(self) -> None:
        """Open or close the attach window as the duty cycle says."""
        now = self.clock()
        if self._window_start is not None and now - self._window_start >= self.window_s:
            self._close_window()
        elif self._window_start is None and now >= self._next_window and self.libraries:
            self._open_window()

    def _open_window(self) -> None:
        begun = self.clock()
        for lib in self.libraries:
            attached = []
            for symbol in LAUNCH_SYMBOLS:
                try:
                    self._links.append(self.attach(lib, symbol))
                    attached.append(symbol)
                except LibbpfError:
                    continue  # this driver version lacks that entry point
            self.symbols[lib] = attached
        self._window_start = self.clock()
        self._next_window = begun + self.period_s

    def _close_window(self) -> None:
        for link in self._links:
            self._detach(link)
        self._links.clear()
        if self._window_start is not None:
            self._attached_s += self.clock() - self._window_start
        self._window_start = None

    def duty_cycle(self) -> float:
        """Share of wall time the probes were attached (a full window) since start."""
        now = self.clock()
        open_s = now - self._window_start if self._window_start is not None else 0.0
        elapsed = now - self._started
        return (self._attached_s + open_s) / elapsed if elapsed > 0 else 0.0

    def _detach(self, link: int) -> None:
        if not self.detach_in_background:
            self.detach(link)
            return
        if self._detacher is None:
            self._detacher = threading.Thread(target=self._detach_queued, name="uprobe-detach",
                                              daemon=True)
            self._detacher.start()
        self._pending.put(link)

    def _detach_queued(self) -> None:
        while (link := self._pending.get()) is not None:
            self.detach(link)

    def close(self) -> None:
        """Detach every probe, and wait for detaches under way (before the
        object that made the links is freed)."""
        self._close_window()
        if self._detacher is not None:
            self._pending.put(None)
            self._detacher.join()
            self._detacher = None
