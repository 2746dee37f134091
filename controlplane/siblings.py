"""The other threads of GPU processes, from /proc, with their time on a CPU.

A launch thread that is not yet tagged waits in the normal tier, beside
whatever else is runnable there, and is tagged only if it launches while the
detector's probes are attached. A renewal window closes within milliseconds
(its tagged threads launch again at once), so such a thread can miss window
after window; the detector keeps a window open until each active sibling
(runnable now, or that ran since the last window) has run again, or its
length passes. Any user's processes are read here: /proc/<tid>/status, stat
and schedstat are world-readable, a thread gone meanwhile is left out, and
at most MAX_SIBLINGS threads are read per call.
"""

from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")
MAX_SIBLINGS = 256
RUNNABLE = "R"
# A sibling: its time on a CPU so far (ns), and whether it is runnable now.
Sibling = tuple[int, bool]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the thread or its process is gone
        return None


def _tgid(tid: int, proc: Path) -> int | None:
    status = _read(proc / str(tid) / "status")
    for line in (status or "").splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    return None


def _threads(tgid: int, proc: Path) -> list[int]:
    try:
        return sorted(int(t.name) for t in (proc / str(tgid) / "task").iterdir())
    except OSError:
        return []


def _runnable(tid: int, proc: Path) -> bool:
    stat = _read(proc / str(tid) / "stat") or ")"
    # After the command, which is in parentheses and may hold any character.
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0] == RUNNABLE


def siblings(tagged: Iterable[int], proc: Path = PROC) -> dict[int, Sibling]:
    """The untagged threads of the tagged threads' processes."""
    tagged = set(tagged)
    tgids = {tgid for tid in tagged if (tgid := _tgid(tid, proc)) is not None}
    others = [tid for tgid in sorted(tgids) for tid in _threads(tgid, proc) if tid not in tagged]
    return {tid: (ns, _runnable(tid, proc))
            for tid, ns in cpu_ns(others[:MAX_SIBLINGS], proc).items()}


def cpu_ns(tids: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    """Thread id -> its time on a CPU so far (ns); threads gone are left out."""
    times = {}
    for tid in tids:
        schedstat = _read(proc / str(tid) / "schedstat")
        if schedstat:
            times[tid] = int(schedstat.split()[0])
    return times
