"""Helpers shared by the tests: run the CLI as a user would, check errors."""

import os
import subprocess
import sys
from collections.abc import Sequence

REPO_BPF_SOURCES = ("sched/bpf", "tracer")


def scx_gpu(*args: str, timeout: float = 900, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run the scx-gpu CLI in a subprocess, capturing its output."""
    return subprocess.run([sys.executable, "-m", "scx_gpu", *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int,
                          needles: Sequence[str] = ()) -> None:
    """Bad input: exit `code`, exactly one line on stderr, naming the problem."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("scx-gpu: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
