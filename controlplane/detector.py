"""Duty-cycled GPU detection: launch uprobes attached in short windows.

A uprobe traps on every call of the probed function whatever the BPF
program does (about 0.8 us per hit on an H200 host (round 3), 45 us under
emulation), while a tag lives gpu_ttl anyway. So the probes are attached
for a window once per period: a thread that keeps launching is re-tagged
every period, well inside its ttl, at a fraction of the always-on cost.
A window is timed from when its probes are in place: attaching a probe per
entry point can take longer than the window itself under emulation.

A library's entry points are one link where the kernel has uprobe_multi
(6.6 and later): they go in and out together. One link per entry point,
attached and then detached one after another, left the first ones firing
while the rest attached and the last ones while the rest detached: at
10,000 launches a second they hit 43% of a launcher's launches.

Detaching waits for the kernel's grace periods: 1.5 s for 8 per-entry-point
links on an idle guest, 12-40 s behind a storm of 2,000 runnable tasks,
0.06-1.6 s for one uprobe_multi link in an idle guest. In the control
plane's loop that held back the next windows until busy launchers' tags
expired, so the loader detaches aside (BackgroundDetach), each link on a
thread of its own: a probe fires until its unregistering begins, and a link
queued behind another's grace periods fired on for as long.

The duty cycle adapts: a window closes as soon as every thread tagged when
it opened has launched again since its probes began attaching (a busy
launcher: while they attach), and while threads are tagged the next window
opens only when their tags are half way to expiry (never sooner than a
period). A thread that stopped launching but lives stays tagged until its
ttl, and a window waits for it: while the probes hit often (busy launchers
pay for the wait) it closes after RENEW_SHARE of the time between renewals
(15 ms at the default ttl), else after a whole window. The share of time
the probes are attached is the share of a busy launcher's launches they
hit; beside one, a thread launching less often than every 15 ms keeps its
tag only when a window catches one of its launches, while alone (a CUDA
graph launched per token, say) it is waited for.

The last windows are kept as records (Window): when each opened, how long
attaching took, why it closed, how long it was open, and the probe hits in it
and after it (its probes fire until their unregistering begins).
"""

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scx_gpu.bpf.libbpf import LibbpfError
from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS

# Probes on those of the entry points a library has: (the links, the entry points probed).
Attach = Callable[[Path, list[str]], tuple[list[int], list[str]]]
Detach = Callable[[int], None]
# Tagged thread (or process) id -> its last launch, in ns of the detector's clock.
Tags = Callable[[], dict[int, int]]
FAST_POLL_S = 0.001  # while a window waits for tagged threads to launch again
# A renewal window's longest, as a share of the time between renewals: the
# share of a busy launcher's launches that waiting for a thread which
# stopped launching may cost it.
RENEW_SHARE = 0.01
# Hits in a window too few to cut it short for: 10 cost 8 us on an H200
# host, 0.5 ms under emulation.
FEW_HITS = 10
RECORDS = 32  # windows kept for status
# Why a window closed.
RENEWED = "renewed"  # every thread tagged at its opening launched since
MAX = "max"  # open its longest: window_s, or a renewal's share
LIBRARY = "library"  # a new library: every library's probes attached again
STOP = "stop"


def no_tags() -> dict[int, int]:
    return {}


class BackgroundDetach:
    """A Detach that returns at once: each link is destroyed on a thread of
    its own, none waiting for another's grace periods; close() waits until
    every one given is gone."""

    def __init__(self, detach: Detach) -> None:
        self._detach = detach
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # destroying a link

    def __call__(self, link: int) -> None:
        thread = threading.Thread(target=self._run, args=(link,), name="probe-detach",
                                  daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run(self, link: int) -> None:
        try:
            self._detach(link)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def pending(self) -> bool:
        """Links given that are not destroyed yet."""
        with self._lock:
            return bool(self._threads)

    def close(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()


@dataclass
class Window:
    """One window of attached probes."""

    opened_s: float  # probes in place, seconds since the detector started
    attach_s: float  # attaching them took this long (the first fire meanwhile)
    awaited: int  # threads tagged when it opened
    detaching: bool  # probes of earlier windows were still being detached
    hits_from: int  # the hit counter before attaching
    open_s: float = 0.0
    closed_by: str = ""
    hits: int = 0  # from the start of attaching to the close
    hits_after: int | None = None  # from the close to the next window's attach

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["hits_from"]
        return record


@dataclass
class Detector:
    attach: Attach
    detach: Detach
    window_s: float
    period_s: float
    ttl_s: float = 0.0
    tags: Tags = no_tags
    libraries: list[Path] = field(default_factory=list)
    symbols: dict[Path, list[str]] = field(default_factory=dict)
    _links: list[int] = field(default_factory=list)
    _inodes: set[tuple[int, int]] = field(default_factory=set)
    clock: Callable[[], float] = time.monotonic
    # Probes of a closed window still being detached: a window that looks for
    # new launchers waits for them (each costs the whole machine grace
    # periods); one that renews live tags does not.
    detaching: Callable[[], bool] = lambda: False
    hits: Callable[[], int] = lambda: 0  # the probes' hit counter
    report: Callable[[dict[str, Any]], None] = lambda summary: None  # at each open and close
    windows: deque[Window] = field(default_factory=lambda: deque(maxlen=RECORDS))
    closed_by: Counter[str] = field(default_factory=Counter)
    _window_start: float | None = None  # probes in place
    _attach_start: float = 0.0  # the open window's probes began attaching
    _next_window: float = 0.0
    _attached_s: float = 0.0
    _started: float = 0.0
    _awaited: set[int] = field(default_factory=set)  # tagged when the window opened

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
            self._close_window(LIBRARY)
            self._next_window = 0.0
        return new

    def tick(self) -> None:
        """Open or close the attach window as the duty cycle says; one that
        opens may close at once (its awaited threads launched while it attached)."""
        if self._window_start is None:
            if not (self.clock() >= self._next_window and self.libraries
                    and (self._live_tags() or not self.detaching())):
                return
            self._open_window()
        if self._renewed():
            self._close_window(RENEWED)
            self._schedule_next()
        elif self._window_start is not None and self._spent():
            self._close_window(MAX)
            self._schedule_next()

    def _spent(self) -> bool:
        """The open window was open its longest: window_s; or, renewing tags
        while the probes hit more than FEW_HITS times, RENEW_SHARE of the time
        between renewals since they began attaching."""
        now = self.clock()
        if self._window_start is None or now - self._window_start >= self.window_s:
            return True
        share_s = RENEW_SHARE * max(self.period_s, self.ttl_s / 2)
        return (bool(self._awaited) and now - self._attach_start >= share_s
                and self.hits() - self.windows[-1].hits_from > FEW_HITS)

    def poll_s(self, idle_s: float) -> float:
        """How soon tick() should run again: often while a window awaits launches."""
        return min(idle_s, FAST_POLL_S) if self._awaited else idle_s

    def _live_tags(self) -> dict[int, int]:
        now_ns = int(self.clock() * 1e9)
        return {k: seen for k, seen in self.tags().items()
                if now_ns - seen < self.ttl_s * 1e9}

    def _renewed(self) -> bool:
        """Every thread tagged at the window's opening launched since its
        probes began attaching (or is gone)."""
        if not self._awaited or self._window_start is None:
            return False
        since_ns = int(self._attach_start * 1e9)
        tags = self.tags()
        return all(tags.get(k, since_ns) >= since_ns for k in self._awaited)

    def _schedule_next(self) -> None:
        """Tags live: when the oldest is half way to expiry; else a period on."""
        live = self._live_tags()
        if live:
            renew = min(live.values()) / 1e9 + self.ttl_s / 2
            self._next_window = max(self._next_window, renew)

    def _open_window(self) -> None:
        begun, hits, detaching = self.clock(), self.hits(), self.detaching()
        if self.windows and self.windows[-1].hits_after is None:
            last = self.windows[-1]
            last.hits_after = hits - last.hits_from - last.hits
        self._awaited = set(self._live_tags())
        for lib in self.libraries:
            try:
                links, self.symbols[lib] = self.attach(lib, list(LAUNCH_SYMBOLS))
            except LibbpfError:
                self.symbols[lib] = []  # none of the entry points, or gone since
                continue
            self._links.extend(links)
        self._window_start, self._attach_start = self.clock(), begun
        self._next_window = begun + self.period_s
        self.windows.append(Window(self._window_start - self._started,
                                   self._window_start - begun, len(self._awaited), detaching,
                                   hits))
        self.report(self.summary())

    def _close_window(self, why: str) -> None:
        for link in self._links:
            self.detach(link)
        self._links.clear()
        if self._window_start is not None:
            open_s = self.clock() - self._window_start
            self._attached_s += open_s
            last = self.windows[-1]
            last.open_s, last.closed_by = open_s, why
            last.hits = self.hits() - last.hits_from
            self.closed_by[why] += 1
            self.report(self.summary())
        self._window_start = None
        self._awaited = set()

    def summary(self) -> dict[str, Any]:
        """The duty cycle, how many windows closed why, and the last windows."""
        return {"duty_pct": 100 * self.duty_cycle(), "closed_by": dict(self.closed_by),
                "windows": [w.as_dict() for w in self.windows]}

    def duty_cycle(self) -> float:
        """Share of wall time the probes were attached (a full window) since start."""
        now = self.clock()
        open_s = now - self._window_start if self._window_start is not None else 0.0
        elapsed = now - self._started
        return (self._attached_s + open_s) / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        self._close_window(STOP)
