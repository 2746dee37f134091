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
links on an idle guest, 12-40 s behind a storm of 2,000 runnable tasks. In
the control plane's loop that held back the next windows until busy
launchers' tags expired, so the loader detaches on a thread of its own
(BackgroundDetach): a probe stops firing as soon as its unregistering begins.
One link at a time: with a thread per link (detaches overlapping one
another and the next window's attach), a spinner on both vCPUs was not
tagged within 60 s in one of four runs and lost its tag in the other
three.

The duty cycle adapts: a window closes as soon as every thread tagged when
it opened has launched again (a busy launcher: within milliseconds) and no
thread has been tagged for the first time in it for SETTLE_S; a window that
opened with nothing tagged looks for launchers until it finds one (then
settles) or its length passes. While threads are tagged the next window
opens when their tags are half way to expiry or, if sooner, ATTACH_LEAD
times the longest attach of the last minute before the oldest expires;
never sooner than a period after the last. A second launch thread of a
tagged process, waiting behind normal-tier work, would miss renewal after
renewal: so a window also waits for each starving untagged sibling of a
tagged thread (runnable, or that waited STARVED_NS for a CPU since the last
window, or in its life if new; siblings.py) until it has run RAN_NS, then
SETTLE_S; or until it was found asleep at ASLEEP_POLLS polls in a row (a
GPU wait is shorter; an idle thread's sleep is not). So too for the threads
new once one has run (a main thread starting its workers) and, in a window
that found a launcher, for each of its siblings, starving or not (one may
be in a GPU wait between two launches). Other threads that are not short of
CPU hold no window open. A renewal does not close at its length while a
thread it awaits waits for a CPU (a thread over its process's gpu budget
waits up to a quota period, longer than a window): it holds until that
thread launches, runs RAN_NS without launching, is found asleep at
ASLEEP_POLLS polls in a row, or its tag expires. Closed at its length, a
storm of 2,000 normal tasks took a busy launcher's tags away for seconds at
a time. The share of time the probes are attached is the share of a busy
launcher's launches they hit: a full window to find a launcher at 10,000
launches a second cost it 1,000 hits, 1.5% of a 6.5 s bench run.

A window that looked for launchers and whose probes nothing called in its
length stands: its probes stay in (a probe that nothing calls costs
nothing) until something calls one, and then it is a window that looks for
launchers from the last poll that saw no call, the next a period later.
Attaching and detaching a library's probes every period cost an idle
gpu-first control plane 7% of a vCPU under emulation, in the gpu tier. A
call that tags nothing (a process that --gpu-allow leaves out) counts as
one too (the probes count every trap): so a process that may not be tagged
is trapped from its first call to the next poll, then in windows only, as
before. A window whose probes did not all go in does not stand (nothing
could call them): it is tried again a period later.

Renewals come at best a period plus an attach apart: behind a storm of
2,000 runnable tasks (attaches of 1-2 s) that is longer than a 3 s ttl, and
a busy launcher's tags lapsed for seconds at a time. So a tag lives a
period plus ATTACH_LEAD times the longest attach of the last minute when
that is longer than the ttl, up to MAX_LIFE_STRETCH ttls; publish_life
tells the scheduler each time it changes.

What is left of a renewal is attaching and detaching: 10-40 ms each for a
library's eight entry points under emulation, while the launcher hits the
one it uses from the moment that one is in until it is out again. So the
entry points hit in the last window go in last and come out first, in a
link of their own; and tick awaits a renewal that waits for no starving
sibling itself, instead of a turn of the loader's loop later.
"""

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from scx_gpu.bpf.libbpf import LibbpfError
from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS
from scx_gpu.controlplane.siblings import Sibling

# Probes on those of the entry points a library has: (the links, the entry points probed).
Attach = Callable[[Path, list[str]], tuple[list[int], list[str]]]
Detach = Callable[[int], None]
# Tagged thread (or process) id -> its last launch, in ns of the detector's clock.
Tags = Callable[[], dict[int, int]]
# The untagged threads of the given tagged threads' processes.
Siblings = Callable[[Iterable[int]], dict[int, Sibling]]
# These threads as they are now; threads gone are left out.
ThreadsNow = Callable[[Iterable[int]], dict[int, Sibling]]
# The probes' hits since load, by entry point (LAUNCH_SYMBOLS' order).
SiteHits = Callable[[], Sequence[int]]
# While a window is open: a renewal closes at the first poll after its
# threads launched again, so each poll period costs a busy launcher hits.
FAST_POLL_S = 0.001
# Under emulation each poll took the control plane 1-3 ms of a vCPU, in the
# gpu tier: a poll each SLOW_POLL_S while a window looks for launchers and
# has found none (a launcher starting then is hit for up to SLOW_POLL_S
# before it is seen, then polled fast), and while a renewal holds past
# its length for a thread that waits for a CPU (at 1 ms polls the control
# plane took that CPU itself: the storm's launcher kept 0.22 of its alone
# throughput in 5 of 12 runs, its loader running or runnable at 25% of
# samples against 13% in the others).
SLOW_POLL_S = 0.01
# While probes stand: a launcher that starts is trapped until a poll sees a
# call. And while a window is due but held back (probes still detaching).
STANDING_POLL_S = 0.1
# After a thread's first tag in a window: its siblings' first launches (any
# thread launching 100 times a second) before the window closes.
SETTLE_S = 0.01
# A sibling that waited this long for a CPU since the last window (or in its
# life, if the last window did not see it) starves; a window waits for at
# most MAX_WAITING of them (each is read at every poll) ...
STARVED_NS = 10_000_000
MAX_WAITING = 16
# ... each until it has run this long (a launch thread's launches are that
# close in its CPU time: the synthetic token's 0.5 ms, a PyTorch loop's tens
# of us; a gpu thread waking preempts it, so a run may end before its first
# launch), ...
RAN_NS = 2_000_000
# ... or is found asleep at this many polls in a row (a poll takes tens of ms
# under emulation beside hogs: not a time).
ASLEEP_POLLS = 3
# A renewal is awaited in tick itself, so that it closes within a poll of
# its threads' next launch (at 10,000 launches a second, each ms open costs
# a launcher 10 hits; a turn of the loader's loop takes 10-40 ms under
# emulation): RENEWAL_POLLS polls RENEWAL_POLL_S apart cover a launcher
# that launches 1,000 times a second, or one whose CPU is taken for a few ms.
RENEWAL_POLLS = 10
RENEWAL_POLL_S = 0.0005
# A renewal opens this many times the longest attach of the last
# ATTACH_MEMORY_S before the oldest tag expires, if that is sooner than half
# way (then only a period after the last window): behind a storm of 2,000
# runnable tasks an attach waited in the kernel for up to 2 s, and tags
# expired while it did. The storm's attaches vary from ms to 2 s: a memory
# of 8 attaches forgot the slow ones within seconds.
ATTACH_LEAD = 2
ATTACH_MEMORY_S = 60.0
# A tag outlives gpu_ttl by at most this factor while attaches are slow: a
# launcher that stops leaves the gpu tier within this many ttls. The life
# is published in LIFE_STEP_S steps (each change makes every task's tier
# be looked up again).
MAX_LIFE_STRETCH = 3
LIFE_STEP_S = 0.1
# A probe fires until its detach begins: the loader's thread waits for the
# detaching thread to take a link over rather than keep the CPU it needs
# (both are gpu-tier threads; on two CPUs a launcher holds the other).
HANDOFF_S = 0.01


def no_tags() -> dict[int, int]:
    return {}


def no_siblings(tagged: Iterable[int]) -> dict[int, Sibling]:
    return {}


def no_threads(tids: Iterable[int]) -> dict[int, Sibling]:
    return {}


def no_site_hits() -> Sequence[int]:
    return ()


class BackgroundDetach:
    """A Detach that returns as soon as the thread of its own that destroys
    the links, in order, has begun on this one (if it was idle: HANDOFF_S at
    most); close() waits until every one given is gone."""

    def __init__(self, detach: Detach) -> None:
        self._detach = detach
        self._links: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._given = self._begun = self._done = 0  # links, counted
        self._thread = threading.Thread(target=self._run, name="probe-detach", daemon=True)
        self._thread.start()

    def __call__(self, link: int) -> None:
        with self._changed:
            idle = self._done == self._given
            self._given += 1
            number = self._given
            self._links.put((number, link))
            if idle:
                self._changed.wait_for(lambda: self._begun >= number, HANDOFF_S)

    def _run(self) -> None:
        while (item := self._links.get()) is not None:
            number, link = item
            with self._changed:
                self._begun = number
                self._changed.notify_all()
            self._detach(link)
            with self._changed:
                self._done = number

    def pending(self) -> bool:
        """Links given that are not destroyed yet."""
        with self._changed:
            return self._done < self._given

    def close(self) -> None:
        self._links.put(None)
        self._thread.join()


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
    siblings: Siblings = no_siblings
    threads_now: ThreadsNow = no_threads
    # The awaited tags' threads as they are now (none when tags are processes').
    awaited_now: ThreadsNow = no_threads
    site_hits: SiteHits = no_site_hits
    sleep: Callable[[float], None] = time.sleep
    # Told the life of a tag, in ns, when it changes (tag_life_ns).
    publish_life: Callable[[int], None] = lambda life_ns: None
    _life_s: float = 0.0  # the life in force, last published
    _standing: bool = False  # a quiet window's probes left in, no window open
    _last_poll: float = 0.0  # while standing: the last tick that found no call
    _hot: list[str] = field(default_factory=list)  # entry points the last window saw hit
    _hits_at_open: Sequence[int] = ()
    _window_start: float | None = None
    _next_window: float = 0.0
    _attached_s: float = 0.0
    # When the last ATTACH_MEMORY_S's windows opened, how long their probes took to go in.
    _attaches: deque[tuple[float, float]] = field(default_factory=deque)
    _started: float = 0.0
    _awaited: set[int] = field(default_factory=set)  # tagged when the window opened
    _found: set[int] = field(default_factory=set)  # first tagged in this window
    _last_news: float | None = None  # a thread found or a sibling seen running
    # Starving sibling -> its ns run when watched, the polls since it was runnable.
    _waiting: dict[int, tuple[int, int]] = field(default_factory=dict)
    _baseline: dict[int, int] = field(default_factory=dict)  # sibling -> ns waited, last window
    _sampled: set[int] = field(default_factory=set)  # siblings seen in this window
    # Awaited thread late to launch -> its ns run when first found so, polls asleep.
    _late: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._started = self.clock()
        self._life_s = self.ttl_s

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
        if self._standing:
            self._stand_on(now)
            return
        if self._window_start is not None:
            if now - self._window_start >= self.window_s:
                if self._quiet():
                    self._stand(now)
                    return
                done = not self._holding()
            else:
                done = self._settled(now)
            if done:
                self._close_window()
                self._schedule_next()
        elif (now >= self._next_window and self.libraries
              and (self._live_tags() or not self.detaching())):
            self._open_window()
            self._await_renewal()

    def _await_renewal(self) -> None:
        """Close a window that renews live tags as soon as it has settled; not
        one that waits for starving siblings (their polls must span a GPU
        wait: ASLEEP_POLLS)."""
        for _ in range(RENEWAL_POLLS if self._awaited and not self._waiting else 0):
            if self._settled(self.clock()):
                self._close_window()
                self._schedule_next()
                return
            self.sleep(RENEWAL_POLL_S)

    def poll_s(self, idle_s: float) -> float:
        """How soon tick() should run again, idle_s at most: often while a
        window is open, most often while it awaits or has found launchers
        within its length; every STANDING_POLL_S while probes stand or a
        window is due; else when the next one is."""
        if self._window_start is None:
            due = self._next_window - self.clock()
            if self._standing or (self.libraries and due <= 0):
                return min(idle_s, STANDING_POLL_S)
            return min(idle_s, due) if self.libraries else idle_s
        fast = ((self._awaited or self._found)
                and self.clock() - self._window_start < self.window_s)
        return min(idle_s, FAST_POLL_S if fast else SLOW_POLL_S)

    def tag_life_ns(self) -> int:
        """How long a launch keeps its thread tagged now."""
        return round(self._life_s * 1e9)

    def _life_needed(self) -> float:
        """The ttl, or a period plus ATTACH_LEAD longest recent attaches, up
        in LIFE_STEP_S, if longer; at most MAX_LIFE_STRETCH ttls."""
        apart = self.period_s + ATTACH_LEAD * self._longest_attach()
        stretched = math.ceil(apart / LIFE_STEP_S - 1e-9) * LIFE_STEP_S
        return min(max(self.ttl_s, stretched), MAX_LIFE_STRETCH * self.ttl_s)

    def _longest_attach(self) -> float:
        return max((took for _, took in self._attaches), default=0.0)

    def _live_tags(self) -> dict[int, int]:
        now_ns = int(self.clock() * 1e9)
        return {k: seen for k, seen in self.tags().items()
                if now_ns - seen < self._life_s * 1e9}

    def _settled(self, now: float) -> bool:
        """Every thread tagged at the window's opening launched since (or is
        gone), every starving sibling of a tagged thread has run (or is
        asleep), and it found a thread or awaited one; SETTLE_S after the
        last thread found or sibling seen running (it may launch next)."""
        if self._window_start is None:
            return False
        opened_ns = int(self._window_start * 1e9)
        tags = self.tags()
        new = {k for k, seen in tags.items() if seen >= opened_ns} - self._awaited - self._found
        if new:
            self._found |= new
            self._last_news = now
            self._watch(self._awaited | self._found)
        if any(tags.get(k, opened_ns) < opened_ns for k in self._awaited):
            return False
        if not self._siblings_ran(now):
            return False
        if self._last_news is not None:
            return now - self._last_news >= SETTLE_S
        return bool(self._awaited)

    def _called(self) -> bool:
        """The probes counted a call since the window opened (False without counts)."""
        hits = self.site_hits()
        return len(hits) == len(self._hits_at_open) == len(LAUNCH_SYMBOLS) and \
            list(hits) != list(self._hits_at_open)

    def _quiet(self) -> bool:
        """A window that looks for launchers, every library's probes in (one
        that failed to attach is tried again next period), and nothing called
        them."""
        counted = len(self._hits_at_open) == len(LAUNCH_SYMBOLS)
        probed = bool(self._links) and all(self.symbols.get(lib) for lib in self.libraries)
        return counted and probed and not (self._awaited or self._found or self._called())

    def _stand(self, now: float) -> None:
        """Leave the probes in with no window open (not counted as attached time)."""
        assert self._window_start is not None
        self._attached_s += now - self._window_start
        self._window_start, self._standing, self._last_poll = None, True, now

    def _stand_on(self, now: float) -> None:
        """A call ends the standing: a window from the last poll that saw none
        (a launcher's launches since then are its finds), the next a period on.
        Else the attaches' memory ages, and the life with it."""
        if self._called():
            self._standing, self._window_start = False, self._last_poll
            self._next_window = now + self.period_s
            return
        self._last_poll = now
        self._forget_attaches(now)
        self._publish_life()

    def _holding(self) -> bool:
        """A thread awaited since the window opened, its tag still live, has not
        launched since, has run less than RAN_NS since it was first found so
        (more, and it is not short of CPU: a thread busy between launches), and
        was not found asleep at the last ASLEEP_POLLS polls."""
        assert self._window_start is not None
        opened_ns, live = int(self._window_start * 1e9), self._live_tags()
        late = (k for k in self._awaited if live.get(k, opened_ns) < opened_ns)
        seen = self.awaited_now(islice(late, MAX_WAITING))
        held = {}
        for tid, state in seen.items():
            ran_ns, asleep = self._late.get(tid, (state.ran_ns, 0))
            held[tid] = (ran_ns, 0 if state.runnable else asleep + 1)
        self._late = held
        return any(seen[t].ran_ns < ran_ns + RAN_NS and asleep < ASLEEP_POLLS
                   for t, (ran_ns, asleep) in held.items())

    def _watch(self, tagged: set[int], unseen_only: bool = False) -> None:
        """Wait for the starving untagged threads of these threads' processes;
        in a window that found a launcher, for all those it has not read yet
        (the launcher's sibling may be between two launches, in a GPU wait:
        not runnable, not starved yet). unseen_only: only those."""
        sample = self.siblings(tagged)
        unseen = {t: s for t, s in sample.items() if t not in self._sampled}
        if unseen_only:
            sample = unseen
        self._sampled |= sample.keys()
        starving = {t: (s.ran_ns, 0) for t, s in sample.items() if t not in tagged and (
            s.runnable or s.waited_ns - self._baseline.get(t, 0) >= STARVED_NS
            or (self._found and t in unseen))}
        new = {t: v for t, v in starving.items() if t not in self._waiting}
        self._waiting = dict(islice({**self._waiting, **new}.items(), MAX_WAITING))

    def _siblings_ran(self, now: float) -> bool:
        """Every starving sibling has run RAN_NS since it was watched, or is
        gone, or was found asleep ASLEEP_POLLS times in a row; one that ran at
        all may have started the next launch thread (a main thread starting
        its workers behind normal-tier work), so the threads new since are
        watched too."""
        if not self._waiting:
            return True
        seen = self.threads_now(self._waiting)
        waiting, ran = {}, False
        for tid, (ran_ns, asleep) in self._waiting.items():
            if tid not in seen:
                continue
            if seen[tid].ran_ns >= ran_ns + RAN_NS:
                self._last_news = now  # it may launch next
            elif seen[tid].runnable or asleep + 1 < ASLEEP_POLLS:
                waiting[tid] = (ran_ns, 0 if seen[tid].runnable else asleep + 1)
                continue
            ran = ran or seen[tid].ran_ns > ran_ns
        self._waiting = waiting
        if ran:
            self._watch(self._awaited | self._found, unseen_only=True)
        return not self._waiting

    def _schedule_next(self) -> None:
        """Tags live: when the oldest is half way to expiry, or ATTACH_LEAD times
        the longest time the last minute's probes took to go in before it
        expires if that is sooner; else a period on."""
        live = self._live_tags()
        if live:
            lead = max(self._life_s / 2, ATTACH_LEAD * self._longest_attach())
            renew = min(live.values()) / 1e9 + self._life_s - lead
            self._next_window = max(self._next_window, renew)

    def _open_window(self) -> None:
        """Attach the entry points the last window saw hit last (a launcher
        hits its entry point from the moment that probe is in): as a link of
        their own, which _close_window destroys first. What the window
        awaits is read before (reading a process's threads takes ms), and
        the starving siblings' run time again after."""
        begun = self.clock()
        self._hits_at_open = self.site_hits()
        self._awaited = set(self._live_tags())
        if self._awaited:
            self._watch(self._awaited)
        cold = [s for s in LAUNCH_SYMBOLS if s not in self._hot]
        probed: dict[Path, set[str]] = {lib: set() for lib in self.libraries}
        for symbols in (cold, self._hot) if self._hot else (cold,):
            for lib in self.libraries:
                probed[lib] |= self._attach(lib, symbols)
        self.symbols = {lib: [s for s in LAUNCH_SYMBOLS if s in got]
                        for lib, got in probed.items()}
        self._window_start = self.clock()
        self._attaches.append((begun, self._window_start - begun))
        self._forget_attaches(begun)
        if self._publish_life():  # tags that lapsed under the shorter one live again
            self._awaited = set(self._live_tags())
            self._watch(self._awaited)
        self._next_window = begun + self.period_s
        # A sibling that ran while the probes went in could not be tagged then.
        self._waiting = {t: (s.ran_ns, 0) for t, s in self.threads_now(self._waiting).items()}

    def _forget_attaches(self, now: float) -> None:
        while self._attaches and now - self._attaches[0][0] > ATTACH_MEMORY_S:
            self._attaches.popleft()

    def _publish_life(self) -> bool:
        """Publish the life needed if it changed; whether it grew."""
        life, before = self._life_needed(), self._life_s
        if life != before:
            self._life_s = life
            self.publish_life(self.tag_life_ns())
        return life > before

    def _attach(self, lib: Path, symbols: list[str]) -> set[str]:
        """The entry points of symbols probed in lib."""
        if not symbols:
            return set()
        try:
            links, probed = self.attach(lib, symbols)
        except LibbpfError:
            return set()  # none of the entry points, or gone since
        self._links.extend(links)
        return set(probed)

    def _close_window(self) -> None:
        for link in reversed(self._links):
            self.detach(link)
        self._links.clear()
        self._standing = False
        self._note_hot()
        if self._window_start is not None:
            self._attached_s += self.clock() - self._window_start
        self._window_start = None
        self._awaited, self._found, self._waiting, self._late = set(), set(), {}, {}
        self._last_news = None
        if self._sampled:  # how long each had waited for a CPU as this window ended
            ended = self.threads_now(self._sampled)
            self._baseline = {t: s.waited_ns for t, s in ended.items()}
            self._sampled = set()

    def _note_hot(self) -> None:
        """The entry points hit in the window that just closed, if any were."""
        hits, then = self.site_hits(), self._hits_at_open
        if self._window_start is None or not len(hits) == len(then) == len(LAUNCH_SYMBOLS):
            return  # no counts (tests, the fallback's detector)
        hot = [s for s, a, b in zip(LAUNCH_SYMBOLS, hits, then, strict=True) if a > b]
        self._hot = hot or self._hot

    def duty_cycle(self) -> float:
        """Share of wall time a window was open (a full window) since start;
        probes standing with nothing calling them do not count."""
        now = self.clock()
        open_s = now - self._window_start if self._window_start is not None else 0.0
        elapsed = now - self._started
        return (self._attached_s + open_s) / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        self._close_window()
