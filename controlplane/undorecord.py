"""What co-location changes, written down before each change, so that a killed
loader's settings can be undone by the next one.

SIGKILL runs no exit path: the loader's undo stack never unwinds, and its
qdiscs, interrupt affinities and cgroup settings stay. So before each change
the loader adds a step to its record (atomically rewritten, see
runstate.write_json): the file to write back and the values that restore
it, the controller it is about to enable, the device it is about to shape.
A step recorded for a change that never happened restores what is already
there. restore() replays the steps of a dead owner's record in reverse;
undoing is idempotent, so a loader killed while undoing is undone again.
The cgroup BPF program that marks batch packets needs no step: its link
dies with the process.
"""

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scx_gpu.controlplane.runstate import write_json

Step = dict[str, Any]
# Errors a step meets when what it restores went away or is the kernel's: a
# cgroup or device removed meanwhile, an interrupt whose affinity the kernel keeps.
GONE = (errno.ENOENT, errno.ENODEV)
KERNEL_KEPT = (errno.EPERM, errno.EIO)


def _start_time(pid: int) -> int | None:
    """The process's start (clock ticks after boot): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def owner() -> dict[str, int | None]:
    return {"pid": os.getpid(), "start": _start_time(os.getpid())}


def alive(record: dict[str, Any]) -> bool:
    """Whether the process that wrote record still runs (not a new one with its pid)."""
    who = record.get("owner", {})
    return who.get("pid") is not None and _start_time(who["pid"]) == who.get("start")


class UndoRecord:
    """The steps so far and the state status shows, in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owner = owner()
        self.steps: list[Step] = []
        self.state: dict[str, Any] = {}

    def _add(self, step: Step) -> None:
        self.steps.append(step)
        self.save()

    def save(self, state: dict[str, Any] | None = None) -> None:
        if state is not None:
            self.state = state
        write_json(self.path, {**self.state, "owner": self.owner, "undo": self.steps})

    def file(self, path: Path, values: list[str]) -> None:
        """path is about to be written; these writes restore it."""
        self._add({"kind": "file", "path": str(path), "values": values})

    def irq(self, path: Path, value: str) -> None:
        """An interrupt's affinity list is about to be written; value restores it."""
        self._add({"kind": "irq", "path": str(path), "values": [value]})

    def controller(self, control: Path, ctrl: str) -> None:
        """ctrl is about to be enabled in the subtree_control file control."""
        self._add({"kind": "controller", "path": str(control), "ctrl": ctrl})

    def qdisc(self, dev: str) -> None:
        """dev is about to get scx-gpu's root qdisc."""
        self._add({"kind": "qdisc", "dev": dev})


def _write(path: str, values: list[str], quiet: tuple[int, ...]) -> str | None:
    for value in values:
        try:
            Path(path).write_text(value)
        except OSError as exc:
            if exc.errno in quiet:
                return None
            return f"{path} ({exc.strerror})"
    return None


def restore(steps: list[Step], remove_qdisc: Callable[[str], None]) -> list[str]:
    """Replay the steps in reverse; what could not be restored, as 'path (why)'."""
    failed = []
    for step in reversed(steps):
        kind = step["kind"]
        if kind == "qdisc":
            remove_qdisc(step["dev"])
            continue
        if kind == "controller":
            # EBUSY: a descendant uses the controller now; it stays on.
            why = _write(step["path"], [f"-{step['ctrl']}"], (*GONE, errno.EBUSY))
        else:
            why = _write(step["path"], step["values"],
                         GONE + KERNEL_KEPT if kind == "irq" else GONE)
        if why:
            failed.append(why)
    return failed
