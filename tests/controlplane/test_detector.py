"""The duty cycle of the launch detector, on a fake clock and fake probes."""

import errno
import itertools
import threading
import time
from pathlib import Path

import pytest

from scx_gpu.bpf.libbpf import LibbpfError
from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS
from scx_gpu.controlplane.detector import (
    ASLEEP_POLLS,
    FAST_POLL_S,
    SETTLE_S,
    SLOW_POLL_S,
    STANDING_POLL_S,
    BackgroundDetach,
    Detector,
)
from scx_gpu.controlplane.siblings import Sibling


class FakeProbes:
    """Attaching takes attach_s of fake time per probe, as under emulation."""

    def __init__(self, attach_s: float, missing: tuple[str, ...] = ()) -> None:
        self.now, self.attach_s, self.missing = 0.0, attach_s, missing
        self.live: set[int] = set()
        self.next_link = 1

    def attach(self, lib: Path, symbols: list[str]) -> tuple[list[int], list[str]]:
        self.now += self.attach_s * len(symbols)
        probed = [s for s in symbols if s not in self.missing]
        if not probed:
            raise LibbpfError(f"attach {symbols} in {lib}", errno.ENOENT)
        links = list(range(self.next_link, self.next_link + len(probed)))
        self.next_link += len(probed)
        self.live.update(links)
        return links, probed

    def detach(self, link: int) -> None:
        self.live.remove(link)


def detector(probes: FakeProbes, lib: Path) -> Detector:
    det = Detector(probes.attach, probes.detach, window_s=0.2, period_s=1.0,
                   clock=lambda: probes.now)
    assert det.add_libraries([lib, lib]) == [lib]  # one inode, probed once
    return det


def run(det: Detector, probes: FakeProbes, until: float, step: float = 0.01) -> list[float]:
    """Tick every step until `until`; the fake times at which probes were live."""
    live = []
    while probes.now < until:
        det.tick()
        if probes.live:
            live.append(probes.now)
        probes.now += step
    return live


def test_window_lasts_its_length_after_a_slow_attach(tmp_path):
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.05)  # 8 symbols: 0.4 s to attach, twice the window
    det = detector(probes, lib)
    live = run(det, probes, until=0.9)
    assert live[-1] - live[0] > 0.18, "the window closed before it had been open 0.2 s"
    assert not probes.live
    assert 0.18 < det.duty_cycle() * probes.now < 0.22


def test_missing_entry_points_are_skipped_and_windows_repeat(tmp_path):
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.0, missing=("cuGraphLaunch_ptsz",))
    det = detector(probes, lib)
    live = run(det, probes, until=3.05)
    assert det.symbols[lib] == [s for s in LAUNCH_SYMBOLS if s != "cuGraphLaunch_ptsz"]
    starts = [t for i, t in enumerate(live) if i == 0 or t - live[i - 1] > 0.5]
    assert [round(t, 1) for t in starts] == [0.0, 1.0, 2.0, 3.0]
    assert abs(det.duty_cycle() - 0.2) < 0.05
    det.close()
    assert not probes.live


class FakeTags:
    """gpu_tags on the fake clock: launchers launch every interval_s while tagged."""

    def __init__(self, probes: FakeProbes, interval_s: float, ids: tuple[int, ...]) -> None:
        self.probes, self.interval_s, self.ids = probes, interval_s, ids
        self.seen: dict[int, int] = {}

    def launch(self) -> None:
        """Each launcher's latest launch, if the probes were attached then."""
        if self.probes.live:
            last = self.probes.now - self.probes.now % self.interval_s
            for k in self.ids:
                self.seen[k] = int(last * 1e9)

    def __call__(self) -> dict[int, int]:
        return dict(self.seen)


def test_windows_close_once_tagged_threads_launch_again_and_renew_before_expiry(tmp_path):
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.0)
    tags = FakeTags(probes, interval_s=0.001, ids=(7, 8))  # 1,000 launches/s each
    det = Detector(probes.attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=tags, clock=lambda: probes.now)
    det.add_libraries([lib])
    live, step = [], 0.001
    while probes.now < 20.0:
        det.tick()
        tags.launch()
        if probes.live:
            live.append(probes.now)
        # no tag may expire: each is younger than the ttl at every moment
        assert all(probes.now - s / 1e9 < 3.0 for s in tags.seen.values())
        probes.now += step
    # The first window finds them and settles; the later ones close within a
    # few polls, once both launched again, and open when the tags are half
    # way to expiry (1.5 s), not every period.
    assert len(live) * step / 20.0 < 0.02, len(live)
    starts = [t for i, t in enumerate(live) if i == 0 or t - live[i - 1] > 0.5]
    assert all(1.4 < b - a < 1.6 for a, b in itertools.pairwise(starts[1:])), starts
    assert det.poll_s(0.1) == 0.1


def test_background_detach_holds_back_neither_tick_nor_the_next_window(tmp_path):
    """A real detach waits for the kernel's grace periods (about 1.5 s a window
    on an idle guest, 12-40 s behind a storm of 2,000 tasks): queued to a
    thread, the window closes at once, the next one opens on time, and
    close() waits until every probe is gone."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.0)
    release = threading.Event()

    def slow_detach(link: int) -> None:
        release.wait(0.5)
        probes.detach(link)

    detach = BackgroundDetach(slow_detach)
    det = Detector(probes.attach, detach, window_s=0.2, period_s=1.0, clock=lambda: probes.now)
    det.add_libraries([lib])
    det.tick()
    first = set(probes.live)
    probes.now = 0.3
    began = time.monotonic()
    det.tick()
    assert time.monotonic() - began < 0.25, "closing the window waited for its detaches"
    probes.now = 1.0
    det.tick()
    assert len(probes.live) == 2 * len(LAUNCH_SYMBOLS), "the next window did not open"
    release.set()
    det.close()
    detach.close()
    assert not probes.live and first


def test_a_window_looking_for_launchers_waits_for_the_last_detach_and_a_renewal_does_not(
        tmp_path):
    # Each detach costs the whole machine grace periods: with nothing tagged,
    # windows may come no faster than the kernel takes their probes away.
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes, detaching = FakeProbes(attach_s=0.0), [False]
    tags: dict[int, int] = {}
    det = Detector(probes.attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(tags), clock=lambda: probes.now,
                   detaching=lambda: detaching[0])
    det.add_libraries([lib])
    assert run(det, probes, until=0.5), "the first window did not open"
    detaching[0] = True  # its probes take long to go
    assert not run(det, probes, until=3.0), "a window opened while probes were detaching"
    tags[7] = int(probes.now * 1e9)  # a live tag half way to expiry: renew it anyway
    probes.now += 1.5
    det.tick()
    assert probes.live, "a renewal waited for the detach"


def nothing_tagged(tmp_path: Path) -> tuple[FakeProbes, dict[int, int], Detector]:
    """Instant probes, the tags (empty: each test launches), their detector."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes, tags = FakeProbes(attach_s=0.0), dict[int, int]()
    det = Detector(probes.attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(tags), clock=lambda: probes.now)
    det.add_libraries([lib])
    return probes, tags, det


def test_a_window_that_finds_launchers_closes_soon_after_the_last_one(tmp_path):
    # Nothing tagged: the window looks for launchers, and closes SETTLE_S after
    # the last thread it found (one 8 ms after the first keeps it open), not
    # at its length (0.2 s): at 10,000 launches a second a full window cost a
    # launcher 1,000 hits.
    probes, tags, det = nothing_tagged(tmp_path)
    starts = {7: 0.050, 8: 0.058}  # each launches every millisecond from then on
    live = []
    while probes.now < 0.5:
        det.tick()
        if probes.live:
            live.append(probes.now)
            tags.update({k: int(probes.now * 1e9) for k, t in starts.items() if probes.now >= t})
        probes.now += 0.001
    assert set(tags) == set(starts)
    assert 0.058 + SETTLE_S <= live[-1] <= 0.058 + SETTLE_S + 0.003, live[-1]


def test_a_window_polls_slowly_until_it_finds_a_launcher_then_fast(tmp_path):
    # Each poll costs the control plane ms of a vCPU under emulation; a window
    # looking for launchers has no one to cost hits until it finds one.
    probes, tags, det = nothing_tagged(tmp_path)
    polls: list[tuple[float, float]] = []  # (when, the next poll's delay) while open
    while probes.now < 0.5:
        det.tick()
        if probes.live:
            if probes.now >= 0.05:  # thread 7 launches every ms from then on
                tags[7] = int(probes.now * 1e9)
            polls.append((probes.now, det.poll_s(0.1)))
        probes.now += det.poll_s(0.1) if probes.live else 0.001
    looking = [d for t, d in polls if t < 0.05]
    assert looking and set(looking) == {SLOW_POLL_S}, polls
    assert polls[-1][1] == FAST_POLL_S, polls
    assert polls[-1][0] <= 0.05 + SLOW_POLL_S + SETTLE_S + 2 * FAST_POLL_S, polls
    assert det.poll_s(0.1) == 0.1


def counted(tmp_path: Path) -> tuple[FakeProbes, dict[int, int], list[int], list[float], Detector]:
    """Instant probes, the tags, the probes' counts of calls, when each window's
    probes went in, and their detector."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes, tags, hits, attached = FakeProbes(attach_s=0.0), dict[int, int](), [0] * 8, []

    def attach(lib: Path, symbols: list[str]) -> tuple[list[int], list[str]]:
        attached.append(probes.now)
        return probes.attach(lib, symbols)

    det = Detector(attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(tags), clock=lambda: probes.now,
                   site_hits=lambda: list(hits), sleep=lambda s: None)
    det.add_libraries([lib])
    return probes, tags, hits, attached, det


def test_between_windows_the_loop_sleeps_until_the_next_one(tmp_path):
    # Each turn of the loader's loop cost the gpu-tier control plane about
    # 1 ms of a vCPU under emulation: it wakes when the detector needs it.
    probes, tags, hits, attached, det = counted(tmp_path)
    run(det, probes, until=5.0)
    assert det.poll_s(10.0) == STANDING_POLL_S  # a launcher starting now is trapped till seen
    while True:  # thread 7 launches from 5 s on
        tags[7], hits[1] = int(probes.now * 1e9), hits[1] + 1
        det.tick()
        if len(set(attached)) == 2 and not probes.live:
            break
        probes.now += det.poll_s(10.0)
    # The renewal opened when the loop woke, half way to the tag's expiry,
    # and closed at once; the next is 1.5 s on.
    assert attached[-1] == pytest.approx(5.0 + 1.5, abs=0.05), attached
    assert det.poll_s(10.0) == pytest.approx(1.5) and det.poll_s(0.2) == 0.2


def test_probes_that_nothing_calls_stay_in_until_a_launcher_calls_them(tmp_path):
    # Attaching and detaching every period cost an idle control plane 7% of a
    # vCPU under emulation; a probe that nothing calls costs nothing.
    probes, tags, hits, attached, det = counted(tmp_path)
    run(det, probes, until=5.0)
    assert attached == [0.0] and probes.live, "a quiet window's probes went out"
    assert det.duty_cycle() == pytest.approx(0.2 / 5.0, abs=0.01)
    assert det.poll_s(0.1) == 0.1
    while probes.now < 5.5:  # thread 7 launches every 1 ms from 5.05 s
        if probes.now >= 5.05:
            tags[7], hits[1] = int(probes.now * 1e9), hits[1] + 1
        det.tick()
        if not probes.live:
            break
        probes.now += det.poll_s(0.1)
    # Seen at the next idle poll, found at the next slow one, then settled.
    assert 7 in tags and not probes.live, "the window did not close once it found thread 7"
    assert probes.now <= 5.05 + 0.1 + SLOW_POLL_S + SETTLE_S + 0.003, probes.now
    run(det, probes, until=7.0)
    renewal = tags[7] / 1e9 + 1.5  # half way to expiry (ttl 3 s)
    assert {round(t, 2) for t in attached[1:]} == {round(renewal, 2)}, (attached, renewal)


def test_calls_that_tag_nothing_keep_the_probes_to_windows(tmp_path):
    # A process that --gpu-allow leaves out calls the probes and is not tagged:
    # standing probes would trap its every launch.
    probes, tags, hits, attached, det = counted(tmp_path)
    run(det, probes, until=2.5)  # quiet: the probes stand
    while probes.now < 6.0:
        hits[0] += 1  # it launches every 10 ms from 2.5 s, never tagged
        det.tick()
        probes.now += 0.01
    # Called at 2.5 s: a window from the poll before to its length; then one
    # a period after the call, not at once for the period that stood.
    assert not tags
    assert sorted({round(t, 1) for t in attached}) == [0.0, 3.5, 4.5, 5.5], attached
    assert not probes.live
    assert det.duty_cycle() == pytest.approx(5 * 0.2 / 6.0, abs=0.02)


def test_a_window_whose_probes_did_not_go_in_does_not_stand(tmp_path):
    # Nothing can call probes that are not in: such a window would stand blind.
    probes, _, _, attached, det = counted(tmp_path)
    probes.missing = tuple(LAUNCH_SYMBOLS)  # this period's attach fails
    run(det, probes, until=0.5)
    assert not probes.live
    probes.missing = ()
    run(det, probes, until=3.0)
    assert sorted({round(t, 1) for t in attached}) == [0.0, 1.0], attached
    assert probes.live, "the window after the failed one did not stand"


class StarvedSibling:
    """Thread 7 launches every 1 ms. Thread 9 of its process, behind normal-tier
    hogs, runs 20-25 ms into every 50 ms, launching then, and waits for a CPU
    the rest of the time but for 1 ms of every 2 (a GPU wait). Thread 8, the
    main thread, never runs (it waited 20 ms for a CPU at its start); thread
    10, a helper, runs 0.1 ms every 200 ms and never waits for a CPU."""

    def __init__(self, probes: FakeProbes, when_found: str,
                 siblings: tuple[int, ...] = (8, 9, 10)) -> None:
        """when_found: 9 is "runnable" when 7 is found, or "starved" (waited
        20 ms before), or "neither"."""
        self.probes, self.tags, self.first = probes, dict[int, int](), dict[int, float]()
        self.phase = 0.001 if when_found == "runnable" else 0.0
        self.waited_before_ns = 20_000_000 if when_found == "starved" else 0
        self.present = set(siblings)

    def running(self) -> bool:
        return 0.020 <= self.probes.now % 0.050 < 0.025

    def step(self) -> None:
        if self.probes.live:
            now_ns = int(self.probes.now * 1e9)
            launched = {9} & self.present if self.running() else set()
            self.tags.update({7: now_ns, **dict.fromkeys(launched, now_ns)})
            for tid in self.tags:
                self.first.setdefault(tid, self.probes.now)

    def threads_now(self, tids) -> dict[int, Sibling]:
        now = self.probes.now
        ran9 = (now // 0.050) * 0.005 + min(max(now % 0.050 - 0.020, 0.0), 0.005)
        waited9 = self.waited_before_ns + int((now - ran9) / 2 * 1e9)
        runnable9 = self.running() or (now + self.phase) % 0.002 < 0.001
        threads = {8: Sibling(1000, 20_000_000, False),
                   9: Sibling(int(ran9 * 1e9), waited9, runnable9),
                   10: Sibling(int(now // 0.2 * 1e5), 0, False)}
        return {t: threads[t] for t in tids if t in threads and t in self.present}

    def siblings(self, tagged) -> dict[int, Sibling]:
        return self.threads_now({8, 9, 10} - set(tagged)) if 7 in tagged else {}


def run_starved(tmp_path: Path, threads: "StarvedSibling | DemotedThread",
                until: float, polls: list[tuple[float, float]] | None = None) -> list[float]:
    """The detector beside these threads; the fake times at which probes were
    live (and in polls, the poll delay it asked for then)."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes, live = threads.probes, list[float]()

    def attach(lib: Path, symbols: list[str]) -> tuple[list[int], list[str]]:
        live.append(probes.now)  # a renewal may end within the tick that opened it
        return probes.attach(lib, symbols)

    def sleep(seconds: float) -> None:  # the threads go on meanwhile
        live.append(probes.now)
        probes.now += seconds
        threads.step()

    det = Detector(attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(threads.tags), clock=lambda: probes.now,
                   siblings=threads.siblings, threads_now=threads.threads_now,
                   awaited_now=threads.threads_now, sleep=sleep)
    det.add_libraries([lib])
    while probes.now < until:
        det.tick()
        threads.step()
        if probes.live:
            live.append(probes.now)
            if polls is not None:
                polls.append((probes.now, det.poll_s(0.1)))
        probes.now += 0.001
    return sorted(set(live))


def windows(live: list[float], step: float) -> list[tuple[float, float]]:
    """The (first, last) times of each run of live steps."""
    starts = [i for i, t in enumerate(live) if i == 0 or t - live[i - 1] > 1.5 * step]
    return [(live[i], live[j - 1]) for i, j in zip(starts, [*starts[1:], len(live)], strict=True)]


@pytest.mark.parametrize("when_found", ["runnable", "starved", "neither"])
def test_a_window_waits_for_a_tagged_threads_starving_sibling_to_run(tmp_path, when_found):
    # The windows open at 0 and every 1.5 s; closing within a few ms of 7's
    # launches, they would miss 9 every time.
    threads = StarvedSibling(FakeProbes(attach_s=0.0), when_found)
    live = run_starved(tmp_path, threads, until=4.0)
    # Found in the first window, whether runnable, starved or in a GPU wait
    # when 7 was found (a window that finds a launcher watches each of its
    # siblings once: "neither" was found a renewal later, 1.5 s) ...
    assert threads.first.get(9, 4.0) < 0.025, threads.first
    # ... and each window closed SETTLE_S after it ran.
    opened = windows(live, 0.001)
    assert len(opened) == 3 and all(b - a < 0.050 + SETTLE_S for a, b in opened), opened


def test_siblings_that_do_not_starve_hold_no_window_open(tmp_path):
    # The helper runs every 200 ms, so between windows, but never waits for a
    # CPU, and the main thread sleeps: the first window waits ASLEEP_POLLS
    # polls for the main thread (it starved once), each renewal closes at
    # 7's next launch, as without siblings.
    threads = StarvedSibling(FakeProbes(attach_s=0.0), "neither", siblings=(8, 10))
    live = run_starved(tmp_path, threads, until=4.0)
    opened = windows(live, 0.001)
    assert len(opened) == 3, opened
    assert opened[0][1] - opened[0][0] <= SETTLE_S + (ASLEEP_POLLS + 2) * 0.001, opened
    assert all(b - a <= 0.002 for a, b in opened[1:]), opened


class LateWorker(StarvedSibling):
    """Thread 7 launches every 1 ms. Its process's main thread 8, behind
    normal-tier hogs, first runs at 20 ms and starts worker 11 then, which
    first gets a CPU at 35 ms and launches from then on."""

    def __init__(self, probes: FakeProbes) -> None:
        super().__init__(probes, "runnable")

    def step(self) -> None:
        if self.probes.live:
            launched = (7, 11) if self.probes.now >= 0.035 else (7,)
            self.tags.update(dict.fromkeys(launched, int(self.probes.now * 1e9)))
            for tid in self.tags:
                self.first.setdefault(tid, self.probes.now)

    def threads_now(self, tids) -> dict[int, Sibling]:
        now = self.probes.now
        threads = {8: Sibling(1_000_000 if now >= 0.020 else 0, 20_000_000, now < 0.020)}
        if now >= 0.020:
            waited_ns = int((min(now, 0.035) - 0.020) * 1e9)
            threads[11] = Sibling(1_000_000 if now >= 0.035 else 0, waited_ns, True)
        return {t: threads[t] for t in tids if t in threads}

    def siblings(self, tagged) -> dict[int, Sibling]:
        return self.threads_now({8, 11} - set(tagged)) if 7 in tagged else {}


def test_a_window_waits_for_the_workers_a_starving_sibling_starts(tmp_path):
    # Closing SETTLE_S after the main thread ran, the first window would miss
    # worker 11 until the first renewal, 1.5 s later.
    threads = LateWorker(FakeProbes(attach_s=0.0))
    run_starved(tmp_path, threads, until=0.5)
    assert threads.first.get(11, 0.5) < 0.040, threads.first


class PreemptedSibling(StarvedSibling):
    """Thread 7 launches every 1 ms. Thread 9 of its process, runnable
    throughout, runs 0.3 ms every 10 ms (a gpu thread's wake-up preempts it)
    and launches once per 1 ms of its CPU time: at its 4th, 7th, 10th run."""

    def __init__(self, probes: FakeProbes) -> None:
        super().__init__(probes, "runnable")
        self.runs = 0

    def _runs_now(self) -> int:
        return round(self.probes.now * 1000) // 10

    def step(self) -> None:
        now_ns, runs = int(self.probes.now * 1e9), self._runs_now()
        launched = any(3 * run // 10 > 3 * (run - 1) // 10  # a whole ms of CPU more
                       for run in range(self.runs + 1, runs + 1))
        self.runs = runs
        if self.probes.live:
            self.tags.update({7: now_ns, **({9: now_ns} if launched else {})})
            for tid in self.tags:
                self.first.setdefault(tid, self.probes.now)

    def threads_now(self, tids) -> dict[int, Sibling]:
        threads = {9: Sibling(self._runs_now() * 300_000, 10**9, True)}
        return {t: threads[t] for t in tids if t in threads}

    def siblings(self, tagged) -> dict[int, Sibling]:
        return self.threads_now({9} - set(tagged)) if 7 in tagged else {}


def test_a_window_waits_until_a_preempted_sibling_could_have_launched(tmp_path):
    # Its first run (0.3 ms, at 10 ms) launches nothing: taken for a run that
    # would have launched, it closed the window at 20 ms, and 9 was found a
    # renewal later, 1.5 s.
    threads = PreemptedSibling(FakeProbes(attach_s=0.0))
    run_starved(tmp_path, threads, until=0.5)
    assert threads.first.get(9, 0.5) < 0.050, threads.first


class DemotedThread:
    """Threads 7 and 8 of a launcher, both tagged in the first window. 7 launches
    every 1 ms; 8 launches every 1 ms until 0.1 s and from 1.8 s. Between, it
    is "waiting" (runnable, not running: over its process's gpu budget, behind
    a storm), "busy" (running, but not launching) or "asleep"."""

    def __init__(self, probes: FakeProbes, between: str) -> None:
        self.probes, self.between = probes, between
        self.tags, self.renewed = dict[int, int](), list[float]()

    def launching(self) -> bool:
        return not 0.1 <= self.probes.now < 1.8

    def step(self) -> None:
        if self.probes.live:
            now_ns = int(self.probes.now * 1e9)
            self.tags[7] = now_ns
            if self.launching():
                self.tags[8] = now_ns
                self.renewed.append(self.probes.now)

    def threads_now(self, tids) -> dict[int, Sibling]:
        now = self.probes.now
        ran8 = now if self.between == "busy" else min(now, 0.1) + max(now - 1.8, 0.0)
        runnable8 = self.launching() or self.between != "asleep"
        threads = {7: Sibling(int(now * 1e9), 0, True), 8: Sibling(int(ran8 * 1e9), 0, runnable8)}
        return {t: threads[t] for t in tids if t in threads}

    def siblings(self, tagged) -> dict[int, Sibling]:
        return {}


@pytest.mark.parametrize("between", ["waiting", "busy", "asleep"])
def test_a_renewal_waits_for_a_tagged_thread_that_waits_for_a_cpu(tmp_path, between):
    # The renewal opens at 1.5 s (the tags half way to expiry). Closed at its
    # length (1.7 s), it left a waiting 8 to the next window, a period later
    # (2.5 s): under a storm that one missed it too, and the tag expired.
    # Past its length it polls slowly: at 1 ms polls the control plane (in the
    # gpu tier) took the CPU the thread waits for.
    threads, polls = DemotedThread(FakeProbes(attach_s=0.0), between), list[tuple[float, float]]()
    live = run_starved(tmp_path, threads, until=2.2, polls=polls)
    renewal, renewed = windows(live, 0.001)[1], [t for t in threads.renewed if t > 1]
    assert 1.5 <= renewal[0] < 1.52, renewal
    if between == "waiting":
        assert renewed and 1.8 <= renewed[0] < 1.81, renewed
        assert renewal[1] < 1.8 + SETTLE_S, renewal
        held = {d for t, d in polls if renewal[0] + 0.2 < t < 1.8}
        assert held == {SLOW_POLL_S}, held
    else:  # not short of CPU: closed at its length (a few polls later), as before
        assert not renewed, renewed
        assert renewal[1] - renewal[0] < 0.2 + (ASLEEP_POLLS + 1) * 0.001, renewal


def test_the_entry_point_a_launcher_hits_goes_in_last_and_out_first(tmp_path):
    # A launcher hits its entry point from the moment that probe is in until
    # it is out: 10-40 ms each way for eight entry points under emulation.
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes, tags, hits = FakeProbes(attach_s=0.0), dict[int, int](), [0] * len(LAUNCH_SYMBOLS)
    used = "cuLaunchKernelEx"
    calls: list[list[str]] = []
    detached: list[int] = []

    def attach(lib: Path, symbols: list[str]) -> tuple[list[int], list[str]]:
        calls.append(symbols)
        links = probes.attach(lib, symbols)
        if used in symbols:  # thread 7 launches as soon as the probe is in
            tags[7] = int(probes.now * 1e9)
            hits[LAUNCH_SYMBOLS.index(used)] += 1
        return links

    def detach(link: int) -> None:
        detached.append(link)
        probes.detach(link)

    det = Detector(attach, detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(tags), clock=lambda: probes.now,
                   site_hits=lambda: list(hits), sleep=lambda s: None)
    det.add_libraries([lib])
    run(det, probes, until=1.0, step=0.001)  # the first window finds thread 7
    assert calls == [list(LAUNCH_SYMBOLS)]
    calls.clear()
    probes.now = 1.6  # its tag half way to expiry: the renewal
    det.tick()
    assert calls == [[s for s in LAUNCH_SYMBOLS if s != used], [used]]
    assert not probes.live, "the renewal outlived the tick in which its thread launched"
    assert detached[-len(LAUNCH_SYMBOLS)] == max(detached), "the hot probe was not out first"
    assert det.symbols[lib] == list(LAUNCH_SYMBOLS)


def test_a_detach_returns_once_the_detaching_thread_has_begun_on_its_link():
    # The probe fires until its destruction begins: an idle detaching thread
    # takes the link over before the loader goes on (and keeps the CPU).
    began, release, gone = threading.Event(), threading.Event(), []

    def slow_detach(link: int) -> None:
        began.set()
        release.wait(5)
        gone.append(link)

    detach = BackgroundDetach(slow_detach)
    for _ in range(20):
        began.clear()
        release.clear()
        detach(7)
        assert began.is_set(), "the detach returned before its link was taken over"
        release.set()
        while detach.pending():
            time.sleep(0.001)
    detach.close()
    assert gone == [7] * 20


def test_renewals_open_early_enough_for_a_slow_attach(tmp_path):
    # Behind a storm an attach took up to 2 s in the kernel. Opened half way to
    # expiry (1.5 s), a renewal whose probes take 1.6 s to go in comes too late.
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.2)  # 8 entry points: 1.6 s
    tags = FakeTags(probes, interval_s=0.001, ids=(7,))
    det = Detector(probes.attach, probes.detach, window_s=0.1, period_s=1.0, ttl_s=3.0,
                   tags=tags, clock=lambda: probes.now)
    det.add_libraries([lib])
    oldest = 0.0
    while probes.now < 20.0:
        det.tick()  # its attach takes the fake time the probes take to go in
        if tags.seen:  # the tag's age when the probes are in: it must still be live
            oldest = max(oldest, probes.now - tags.seen[7] / 1e9)
        tags.launch()
        probes.now += 0.001
    assert 0 < oldest < 3.0, oldest


def test_tags_outlive_renewals_that_slow_attaches_space_out_then_return_to_the_ttl(tmp_path):
    # A period and a 2.4 s attach apart, renewals come later than a 3 s ttl
    # allows: tags live a period plus twice the attach (5.8 s) meanwhile, at
    # most three ttls, and the ttl again once attaches were fast for a minute.
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.3)  # 8 entry points: 2.4 s
    tags = FakeTags(probes, interval_s=0.001, ids=(7,))
    published: list[int] = []
    det = Detector(probes.attach, probes.detach, window_s=0.1, period_s=1.0, ttl_s=3.0,
                   tags=tags, clock=lambda: probes.now, publish_life=published.append)
    det.add_libraries([lib])

    def oldest_until(until: float) -> float:
        oldest = 0.0
        while probes.now < until:
            det.tick()
            if tags.seen:
                oldest = max(oldest, probes.now - tags.seen[7] / 1e9)
            tags.launch()
            probes.now += 0.001
        return oldest

    slow = oldest_until(30.0)
    assert published == [5_800_000_000] and det.tag_life_ns() == 5_800_000_000
    assert 3.0 < slow < 5.8, slow  # past the ttl, within the life published
    probes.attach_s = 0.0
    oldest_until(80.0)
    assert det.tag_life_ns() == 5_800_000_000, "forgot a slow attach within a minute"
    oldest_until(100.0)
    assert published[1:] == [det.tag_life_ns()] == [3_000_000_000], published
    probes.attach_s = 1.0  # 8 s attaches: capped at three ttls
    oldest_until(130.0)
    assert published[2:] == [det.tag_life_ns()] == [9_000_000_000], published


def test_a_tag_that_a_longer_life_brings_back_is_awaited(tmp_path):
    # Thread 7 last launched 3.2 s ago: lapsed under the 3 s ttl when the
    # window opens, live again once its 2.4 s attach stretches the life to
    # 5.8 s. The renewal awaits it (fast polls), not a search for launchers.
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.3)
    det = Detector(probes.attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=lambda: {7: int(-3.2e9)}, clock=lambda: probes.now,
                   sleep=lambda s: None)
    det.add_libraries([lib])
    det.tick()
    assert probes.live and det.tag_life_ns() == 5_800_000_000
    assert det.poll_s(0.1) == FAST_POLL_S


def test_standing_probes_let_a_slow_attach_be_forgotten(tmp_path):
    # The life a slow attach stretched returns to the ttl a minute later, also
    # while no window opens to notice.
    probes, _, _, attached, det = counted(tmp_path)
    probes.attach_s = 0.3  # 8 entry points: 2.4 s, the ttl is 3 s
    run(det, probes, until=3.0)
    assert probes.live and det.tag_life_ns() == round(5.8e9)  # a period + 2 x 2.4 s
    run(det, probes, until=64.0, step=0.1)
    assert attached == [0.0] and det.tag_life_ns() == round(3e9)
