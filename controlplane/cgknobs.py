"""Write cgroup v2 interface files for a while: set, then restore on undo.

A knob names a cgroup, one of its files, the value to write and the
controller the file belongs to. apply() enables that controller on the
way down from the hierarchy's root where it is off (a file appears only
when the parent enables its controller), remembers each file's value,
writes the new ones, and returns the undo: old values back, in reverse
order, and the controllers it enabled off again. Nothing is left
half-applied: a failing write undoes the ones before it. A Note hears of
each change before it is made (controlplane.undorecord keeps them for the
case where no undo runs).
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scx_gpu.errors import EnvironmentProblem, UsageError


@dataclass(frozen=True)
class Knob:
    cgroup: Path
    name: str        # e.g. io.weight
    value: str       # what to write
    restore: Callable[[str], list[str]] = lambda old: [old]  # writes that undo it, from old


class Note(Protocol):
    def file(self, path: Path, values: list[str]) -> None: ...

    def controller(self, control: Path, ctrl: str) -> None: ...


class Unnoted:
    def file(self, path: Path, values: list[str]) -> None:
        return

    def controller(self, control: Path, ctrl: str) -> None:
        return


def controller(name: str) -> str:
    return name.split(".", 1)[0]


class Applied:
    """What apply() changed, in order, so that undo() can reverse it."""

    def __init__(self, root: Path, note: Note) -> None:
        self.root = root
        self.note = note
        self.enabled: list[Path] = []           # subtree_control files we wrote +ctrl to
        self.enabled_what: list[str] = []
        self.written: list[tuple[Path, list[str]]] = []

    def enable(self, cgroup: Path, ctrl: str) -> None:
        """Turn ctrl on for cgroup's children on every level from the root down to it."""
        levels = [cgroup, *cgroup.parents]
        for level in reversed(levels[: levels.index(self.root)] if self.root in levels else []):
            self._enable_one(level.parent, ctrl)

    def _enable_one(self, parent: Path, ctrl: str) -> None:
        control = parent / "cgroup.subtree_control"
        if ctrl in control.read_text().split():
            return
        self.note.controller(control, ctrl)
        try:
            control.write_text(f"+{ctrl}")
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot enable the {ctrl} controller in {parent}: {exc.strerror} (a cgroup "
                "with processes of its own cannot pass controllers down: move them to a "
                "child cgroup)") from exc
        self.enabled.append(control)
        self.enabled_what.append(ctrl)

    def write(self, knob: Knob) -> None:
        path = knob.cgroup / knob.name
        try:
            restore = knob.restore(path.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        self.note.file(path, restore)
        try:
            path.write_text(knob.value)
        except OSError as exc:
            raise UsageError(f"cannot write {knob.value!r} to {path}: {exc.strerror}") from exc
        self.written.append((path, restore))

    def undo(self) -> None:
        failed = []
        for path, values in reversed(self.written):
            for value in values:
                try:
                    path.write_text(value)
                except FileNotFoundError:
                    break  # the cgroup is gone, and its setting with it
                except OSError as exc:
                    failed.append(f"{path} ({exc.strerror})")
        self.written.clear()
        for control, ctrl in reversed(list(zip(self.enabled, self.enabled_what, strict=True))):
            with contextlib.suppress(OSError):  # EBUSY: a descendant uses it now; it stays
                control.write_text(f"-{ctrl}")
        self.enabled.clear()
        self.enabled_what.clear()
        if failed:
            raise EnvironmentProblem("could not restore " + ", ".join(failed))


def check(knobs: list[Knob], root: Path) -> None:
    """What apply() needs from the machine, checked before anything is written."""
    available = (root / "cgroup.controllers").read_text().split()
    for knob in knobs:
        ctrl = controller(knob.name)
        if ctrl not in available:
            raise EnvironmentProblem(
                f"the cgroup v2 hierarchy at {root} has no {ctrl} controller (on hosts that "
                f"mount cgroup v1 too it may be bound there): boot with cgroup_no_v1={ctrl} or "
                f"systemd.unified_cgroup_hierarchy=1, or drop the {ctrl} options")
        if not knob.cgroup.is_dir():
            raise UsageError(f"cgroup {knob.cgroup} does not exist")


def apply(knobs: list[Knob], root: Path, note: Note | None = None) -> Callable[[], None]:
    """Set every knob (controllers enabled as needed); returns the undo."""
    check(knobs, root)
    applied = Applied(root, note or Unnoted())
    try:
        for knob in knobs:
            applied.enable(knob.cgroup, controller(knob.name))
            applied.write(knob)
    except BaseException:
        applied.undo()
        raise
    return applied.undo
