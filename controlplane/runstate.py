"""What runs now: sched_ext's state in sysfs, and what `scx-gpu load` wrote
about itself under RUN_DIR while it runs."""

import json
import os
from pathlib import Path
from typing import Any

SCHED_EXT = Path("/sys/kernel/sched_ext")
RUN_DIR = Path("/run/scx-gpu")
RUN_STATE = RUN_DIR / "loader.json"
FALLBACK_MODE = "mainline-fallback"


def sched_ext_state() -> tuple[str | None, str | None]:
    """(state, ops name) from sysfs; (None, None) without sched_ext."""
    def read(p: Path) -> str | None:
        try:
            return p.read_text().strip() or None
        except OSError:
            return None
    return read(SCHED_EXT / "state"), read(SCHED_EXT / "root" / "ops")


def read_json(path: Path) -> dict[str, Any]:
    """A state file the loader wrote ({} when there is none)."""
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state


def write_json(path: Path, state: dict[str, Any]) -> None:
    """Whole or not at all (a process killed mid-write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(json.dumps(state))
    part.replace(path)


def run_state() -> dict[str, Any]:
    """What the running loader wrote about itself ({} when none runs)."""
    return read_json(RUN_STATE)


def write_run_state(config: dict[str, Any], extra: dict[str, Any]) -> None:
    write_json(RUN_STATE, {"pid": os.getpid(), "config": config, **extra})
