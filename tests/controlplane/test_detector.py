"""The duty cycle of the launch detector, on a fake clock and fake probes."""

import errno
import itertools
import random
import threading
import time
from pathlib import Path

from scx_gpu.bpf.libbpf import LibbpfError
from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS
from scx_gpu.controlplane.detector import BackgroundDetach, Detector


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
    # The first window finds them (a full window: nothing was tagged); the
    # later ones close within a few polls, once both launched again, and open
    # when the tags are half way to expiry (1.5 s), not every period.
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


def test_each_window_is_recorded_with_why_it_closed_and_its_hits(tmp_path):
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.001)
    tags = FakeTags(probes, interval_s=0.001, ids=(7,))
    hits = [0]
    reports: list[dict[str, object]] = []
    det = Detector(probes.attach, probes.detach, window_s=0.2, period_s=1.0, ttl_s=3.0,
                   tags=tags, clock=lambda: probes.now, hits=lambda: hits[0],
                   report=reports.append)
    det.add_libraries([lib])
    while probes.now < 2.0:
        det.tick()
        tags.launch()
        hits[0] += 1 if probes.live else 0
        probes.now += 0.001
    det.close()
    first, second = det.windows
    assert (first.closed_by, first.awaited, round(first.open_s, 2)) == ("max", 0, 0.2)
    assert (second.closed_by, second.awaited) == ("renewed", 1) and second.open_s < 0.01
    assert first.hits + (first.hits_after or 0) + second.hits == hits[0]
    assert det.closed_by == {"max": 1, "renewed": 1}
    windows = det.summary()["windows"]
    assert reports[-1]["windows"] == windows and len(reports) == 4  # each open and close
    assert [w["closed_by"] for w in windows] == ["max", "renewed"]
    assert "hits_from" not in windows[0]


def test_a_slow_detach_does_not_hold_back_the_next_windows_detach():
    """A link fires until its unregistering begins, and destroying one waits
    for the kernel's grace periods (0.06-1.6 s in the VM, idle): the next
    window's link, queued behind such a destroy, fired on (in the VM 40 ms
    and more after its window closed, at 10,000 launches a second)."""
    release, second = threading.Event(), threading.Event()

    def detach(link: int) -> None:
        if link == 1:
            release.wait(5.0)  # grace periods
        else:
            second.set()

    background = BackgroundDetach(detach)
    try:
        background(1)
        background(2)
        assert second.wait(1.0), "link 2's destroy waited for link 1's"
        assert background.pending()
    finally:
        release.set()
        background.close()
    assert not background.pending()


def test_a_tagged_thread_that_stops_launching_costs_busy_launchers_little(tmp_path):
    """Two threads tagged; one stops launching but lives (its tag stays until
    it expires). Windows that wait for it cost the busy thread a hit on
    every launch while they are open: it stays under 1% of its launches, and
    its tag never expires."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.0)
    tags = FakeTags(probes, interval_s=0.001, ids=(7, 8))
    hits = [0]
    det = Detector(probes.attach, probes.detach, window_s=0.1, period_s=1.0, ttl_s=3.0,
                   tags=tags, clock=lambda: probes.now, hits=lambda: hits[0])
    det.add_libraries([lib])
    step, busy_hits = 0.001, 0
    while probes.now < 1.0:  # both found
        det.tick()
        tags.launch()
        probes.now += step
    assert set(tags.seen) == {7, 8}
    tags.ids = (7,)  # 8 stops launching
    start = probes.now
    while probes.now < start + 10.0:
        det.tick()
        tags.launch()
        busy_hits += bool(probes.live)  # one launch a step
        hits[0] += bool(probes.live)
        assert probes.now - tags.seen[7] / 1e9 < 3.0, "the busy thread's tag expired"
        probes.now += step
    assert busy_hits <= 0.01 * 10.0 / step, busy_hits


def test_a_slow_launcher_alone_keeps_its_tag(tmp_path):
    """A thread launching about every 47 ms (a CUDA graph a token, say):
    with no busy launcher paying for the wait, a window waits for its launch."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.0)
    jitter = random.Random(13)
    launches = {round(1000 * (k * 0.047 + jitter.uniform(-0.01, 0.01))) for k in range(1, 640)}
    seen: dict[int, int] = {}
    hits = [0]
    det = Detector(probes.attach, probes.detach, window_s=0.1, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(seen), clock=lambda: probes.now, hits=lambda: hits[0])
    det.add_libraries([lib])
    for ms in range(30_000):
        probes.now = ms / 1000
        det.tick()
        if ms in launches and probes.live:  # the launches the probes catch
            seen[7], hits[0] = int(probes.now * 1e9), hits[0] + 1
        if probes.now > 1.0:
            assert probes.now - seen[7] / 1e9 < 3.0, "the slow launcher's tag expired"


def test_a_launch_while_the_probes_attach_renews_and_the_window_closes_at_once(tmp_path):
    """Attaching takes milliseconds (6-30 ms in the VM), the first probes
    firing meanwhile: a busy launcher is re-tagged before the window is in
    place, which then need not stay open a poll longer."""
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    probes = FakeProbes(attach_s=0.003)
    seen = {7: int(0.5e9)}

    def attach(path: Path, symbols: list[str]) -> tuple[list[int], list[str]]:
        began = probes.now
        attached = probes.attach(path, symbols)
        seen[7] = int((began + 0.001) * 1e9)  # launched as the first probe went in
        return attached

    det = Detector(attach, probes.detach, window_s=0.1, period_s=1.0, ttl_s=3.0,
                   tags=lambda: dict(seen), clock=lambda: probes.now)
    det.add_libraries([lib])
    probes.now = 2.0
    det.tick()
    assert not probes.live, "the window stayed open for a thread it had re-tagged"
    assert det.windows[-1].closed_by == "renewed" and det.windows[-1].awaited == 1
