"""The other threads of GPU processes, from /proc: their CPU time, their
waits for a CPU, and whether they are runnable.

A launch thread that is not yet tagged waits in the normal tier, beside
whatever else is runnable there, and is tagged only if it launches while the
detector's probes are attached. A renewal window closes within milliseconds
(its tagged threads launch again at once), so such a thread can miss window
after window; the detector keeps a window open a little longer for the
siblings that starve. Any user's processes are read here: /proc/<tid>/status,
stat and schedstat are world-readable, a thread gone meanwhile is left out,
and each call reads the status of at most MAX_TAGGED tagged threads (one per
process) and MAX_THREADS threads, shared out among at most MAX_PROCESSES
processes. On a kernel without schedstat (CONFIG_SCHED_INFO) there are no
siblings.
"""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from scx_gpu.controlplane.topology import tgid as tgid_of

MAX_TAGGED = 32
MAX_PROCESSES = 8
MAX_THREADS = 64
MAX_LISTED = 4096  # of a process's threads
RUNNABLE = "R"


@dataclass(frozen=True)
class Sibling:
    ran_ns: int  # on a CPU so far
    waited_ns: int  # runnable, waiting for a CPU, so far
    runnable: bool


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the thread or its process is gone
        return None


def _threads(tgid: int, proc: Path) -> Iterator[int]:
    """tgid's threads, read lazily: a process may have tens of thousands."""
    try:
        with os.scandir(proc / str(tgid) / "task") as entries:
            yield from (int(e.name) for e in entries)
    except OSError:
        return


def _runnable(tid: int, proc: Path) -> bool:
    stat = _read(proc / str(tid) / "stat") or ")"
    # After the command, which is in parentheses and may hold any character.
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0] == RUNNABLE


def threads_now(tids: Iterable[int], root: Path = Path("/")) -> dict[int, Sibling]:
    """These threads as they are now; threads gone are left out."""
    proc, now = root / "proc", {}
    for tid in tids:
        fields = (_read(proc / str(tid) / "schedstat") or "").split()
        if len(fields) >= 2:
            now[tid] = Sibling(int(fields[0]), int(fields[1]), _runnable(tid, proc))
    return now


def _processes(tagged: set[int], root: Path) -> dict[int, list[int]]:
    """The tagged threads' processes -> their threads (MAX_LISTED at most): a
    thread of a process already listed costs no read of its own."""
    found: dict[int, list[int]] = {}
    listed: set[int] = set()
    reads = 0
    for tid in sorted(tagged):
        if reads == MAX_TAGGED or len(found) == MAX_PROCESSES:
            break
        if tid in listed:
            continue
        reads += 1
        tgid = tgid_of(tid, root)
        if tgid is not None and tgid not in found:
            found[tgid] = list(islice(_threads(tgid, root / "proc"), MAX_LISTED))
            listed.update(found[tgid])
    return found


def siblings(tagged: Iterable[int], root: Path = Path("/")) -> dict[int, Sibling]:
    """The untagged threads of the tagged threads' processes."""
    tagged = set(tagged)
    processes = _processes(tagged, root)
    share = MAX_THREADS // max(len(processes), 1)
    return threads_now([tid for tids in processes.values()
                        for tid in islice((t for t in tids if t not in tagged), share)], root)
