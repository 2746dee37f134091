"""Building blocks of scheduler scenarios: a loaded scheduler, commands
started in a cgroup (the noise and the hogs of scx_gpu.bench.noise run so),
`scx-gpu status`. Used by the benchmark and the VM tests alike; they run on
a sched_ext machine (the test VM or a real host).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from scx_gpu import status as scx_status
from scx_gpu.controlplane.cgroups import processes
from scx_gpu.controlplane.runstate import RUN_STATE, run_state, sched_ext_state
from scx_gpu.errors import EnvironmentProblem
from scx_gpu.workloads import program

SCX_GPU = [sys.executable, "-m", "scx_gpu"]
EXIT_TIMEOUT_S = 30  # a loader's clean exit after SIGTERM takes about 1 s in the VM


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             poll: float = 0.05, seen: Callable[[], object] | None = None) -> float:
    """Seconds until predicate() held; AssertionError after timeout, with what
    seen() returns then (the state that did not come)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            state = f"; seen: {seen()}" if seen else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{state}")
        time.sleep(poll)
    return time.monotonic() - start


@contextmanager
def loaded(*args: str, cuda_lib: bool = True, quiet: bool = True) -> Iterator[Path]:
    """`scx-gpu load` running in the background for the body's duration (the
    sched_ext scheduler, or the mainline fallback when args ask for it);
    yields the file its output goes to."""
    lib = ["--cuda-lib", str(program("libcuda.so.1"))] if cuda_lib else []
    with tempfile.NamedTemporaryFile("w+", prefix="scx-gpu-load-") as log:
        flags = ["--quiet"] if quiet else []
        # Python's stacks on SIGABRT: the evidence when it will not exit.
        proc = subprocess.Popen([*SCX_GPU, "load", *flags, *lib, *args], stdout=log,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        try:
            # The loader writes its run state once attached.
            wait_for(lambda: run_state().get("pid") == proc.pid or proc.poll() is not None, 60,
                     "the scheduler to load")
            assert proc.poll() is None, f"scx-gpu load exited: {Path(log.name).read_text()}"
            yield Path(log.name)
            assert proc.poll() is None, f"scx-gpu load died: {Path(log.name).read_text()}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                _wait_exit(proc, Path(log.name))
    wait_for(lambda: not RUN_STATE.exists() and sched_ext_state()[0] in (None, "disabled"), 10,
             "the scheduler to be gone after SIGTERM")


def _wait_exit(proc: subprocess.Popen[str], log: Path, timeout: float = EXIT_TIMEOUT_S) -> None:
    """Wait for a signalled loader to exit; one that does not is aborted, and
    the error shows where each of its threads waited (kernel and Python)."""
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    threads = _thread_waits(proc.pid)
    proc.send_signal(signal.SIGABRT)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    raise AssertionError(f"scx-gpu load (pid {proc.pid}) did not exit within {timeout} s of "
                         f"SIGTERM; its threads:\n{threads}\nits output:\n{log.read_text()}")


def _thread_waits(pid: int) -> str:
    """Each thread's name, state, kernel wait channel and kernel stack."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        parts = []
        for name in ("comm", "status", "wchan", "stack"):
            try:
                text = (task / name).read_text()
            except OSError as e:
                text = f"({e.strerror})"
            if name == "status":
                text = next((ln for ln in text.splitlines() if ln.startswith("State:")), "")
            parts.append(text.strip())
        lines.append(f"{task.name}: " + " | ".join(parts))
    return "\n".join(lines)


def in_cgroup(cgroup: Path, cmd: list[str]) -> list[str]:
    """cmd, started inside cgroup (created if needed)."""
    cgroup.mkdir(exist_ok=True)
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]


def joined(cgroup: Path, proc: subprocess.Popen[Any], members: int = 1,
           timeout: float = 120) -> None:
    """Wait until proc has moved itself into cgroup and it holds members processes.

    A process started through in_cgroup or `scx-gpu run` joins its cgroup
    only once it runs (seconds under load): until then cgroup.kill misses it.
    """
    def ready() -> bool:
        if proc.poll() is not None:
            raise EnvironmentProblem(f"{proc.args!r} exited with status {proc.returncode} "
                                     f"before joining {cgroup}")
        pids = processes(cgroup)
        return proc.pid in pids and len(pids) >= members
    wait_for(ready, timeout, f"{proc.args!r} to start in {cgroup}")


def status() -> dict[str, Any]:
    """What `scx-gpu status --json` prints, read in this process: starting
    the command takes 3 s under emulation, most of it imports."""
    report: dict[str, Any] = json.loads(json.dumps(scx_status.collect()))
    return report
