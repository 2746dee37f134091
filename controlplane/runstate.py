"""What runs now: sched_ext's state in sysfs, and what `scx-gpu load` wrote
about itself while it runs."""

import json
import os
from pathlib import Path
from typing import Any

SCHED_EXT = Path("/sys/kernel/sched_ext")
RUN_STATE = Path("/run/scx-gpu/loader.json")
FALLBACK_MODE = "mainline-fallback"


def sched_ext_state() -> tuple[str | None, str | None]:
    """(state, ops name) from sysfs; (None, None) without sched_ext."""
    def read(p: Path) -> str | None:
        try:
            return p.read_text().strip() or None
        except OSError:
            return None
    return read(SCHED_EXT / "state"), read(SCHED_EXT / "root" / "ops")


def run_state() -> dict[str, Any]:
    """What the running loader wrote about itself ({} when none runs)."""
    try:
        state: dict[str, Any] = json.loads(RUN_STATE.read_text())
    except (OSError, ValueError):
        return {}
    return state


def write_run_state(config: dict[str, Any], extra: dict[str, Any]) -> None:
    RUN_STATE.parent.mkdir(parents=True, exist_ok=True)
    RUN_STATE.write_text(json.dumps({"pid": os.getpid(), "config": config, **extra}))
