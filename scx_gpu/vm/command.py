"""Run a tool the VM's set-up needs; a failure is one line that says what failed."""

import subprocess
from pathlib import Path

from scx_gpu.errors import EnvironmentProblem

TAIL_LINES = 4  # of the tool's output, in the error


def checked(cmd: list[str], what: str, cwd: Path | None = None,
            env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """cmd's standard output; EnvironmentProblem naming what if it is missing or fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env,
                              input=stdin, check=False)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{what}: {cmd[0]} not found; run `make setup`") from exc
    if proc.returncode != 0:
        tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-TAIL_LINES:])
        raise EnvironmentProblem(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout
