"""pytest plugin: run the bodies of `@pytest.mark.vm` tests inside the test VM.

On the host, the first vm test boots one VM that runs every vm test of the
session with pytest inside the guest; each host-side test then reports its
guest outcome (and fails with the guest's output). The guest records each
outcome as it happens, so a VM that stops early (or cannot boot) fails only
the tests it did not finish, naming the one it was running; nothing is
skipped. When the guest kernel panics, the test it was running fails with
the panic and the tests it never reached go on in a fresh boot (RESUME_MAX
times): QEMU's multi-threaded TCG now and then runs a stale translation of
code the kernel has just patched (an int3 oops at a static key, as sched_ext
flips its keys on every load and unload), and one such crash should not
fail every later test. A few failed tests (RERUN_MAX at most; more is no accident of
timing) run once more in a fresh boot: timing under emulation on a busy host
is coarse. One that passes then passes, and the summary lists it with its
first failure, so a flake stays visible. In the guest, a test that runs past
GUEST_TEST_TIMEOUT_S fails with its threads' stacks, the processes and the
kernel's recent warnings, and the session goes on.
`@pytest.mark.vm(host=True)` marks a test whose body runs on the host and
boots VMs itself (still deselected by `-m "not vm"`).
`@pytest.mark.vm(topology="sockets=2,cores=2,threads=2")` marks a test that
needs that emulated topology: the tests of each topology share a boot of
their own. `--vm-topology` boots the tests that name none in
that topology too (the core tests on two sockets). `@pytest.mark.root` tests
fail without root.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import pytest

from scx_gpu.vm.runner import EXIT_PANIC

if TYPE_CHECKING:  # not in pytest's namespace before 7.4 (Debian 12's is 7.2)
    from _pytest.terminal import TerminalReporter

IN_GUEST_ENV = "SCX_GPU_IN_VM"
REPO = Path(__file__).resolve().parent.parent
# One boot runs most vm tests: 33-35 min on the 2-CPU build machine of
# 2026-11-30, where 35 min cut the CI run of 1f231f2 short.
GUEST_TIMEOUT_S = 2700
# The longest vm test takes about 140 s under emulation.
GUEST_TEST_TIMEOUT_S = 420
CLEANUP_TIMEOUT_S = 60
RESULTS_ENV = "SCX_GPU_VM_RESULTS"
GUEST_RESULTS = "/job/out/results.jsonl"
SLOWEST_SHOWN = 15
RERUN_MAX = 3
RESUME_MAX = 2
# What names a guest kernel's crash in its console.
CRASH_WORDS = ("Oops:", "BUG:", "Kernel panic")
CONSOLE_TAIL = 6000  # characters of the VM console a failure shows
# Host settings the guest's tests read, passed on when set.
FORWARDED_ENV = ("SCX_GPU_STORM_S",)


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_ENV) == "1"


@dataclass
class GuestOutcome:
    passed: bool
    text: str
    stdout: str
    duration_s: float


def _guest_body(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("vm")
    return marker is not None and not marker.kwargs.get("host", False)


def _topology(item: pytest.Item) -> str:
    """The emulated topology the test asks for, else --vm-topology's; "" for
    the default flat vCPUs."""
    marker = item.get_closest_marker("vm")
    asked = str(marker.kwargs.get("topology", "")) if marker else ""
    return asked or str(item.config.getoption("vm_topology"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--vm-topology", default="", metavar="sockets=S,cores=C,threads=T",
                     help="Boot the vm tests that ask for no topology in this emulated "
                          "one (default: 2 flat vCPUs).")


class GuestSession:
    """Runs the session's vm tests, one boot per topology, each once, on first demand."""

    def __init__(self, items: list[pytest.Item]) -> None:
        self.items = items
        self.outcomes: dict[str, GuestOutcome] = {}
        self.booted: set[str] = set()
        self.console = ""
        self.unfinished: dict[str, str] = {}  # no outcome: why, from the boot that had it
        self.exit_code = 0
        self.running: str | None = None  # the test the last boot left unfinished
        self.flaky: dict[str, str] = {}  # passed in a fresh boot: its first failure

    def outcome(self, item: pytest.Item) -> GuestOutcome | None:
        topology = _topology(item)
        if topology not in self.booted:
            self.booted.add(topology)
            items = [i for i in self.items if _topology(i) == topology]
            first = self._boots(items, topology)
            failed = [i for i in items if i.nodeid in first and not first[i.nodeid].passed]
            if 0 < len(failed) <= RERUN_MAX:
                first.update(self._rerun(failed, topology, first))
            self.outcomes.update(first)
        return self.outcomes.get(item.nodeid)

    def _boots(self, items: list[pytest.Item], topology: str) -> dict[str, GuestOutcome]:
        """The items' outcomes; after a guest panic, the rest in a fresh boot."""
        outcomes: dict[str, GuestOutcome] = {}
        for resume in range(RESUME_MAX + 1):
            got = self._run(items, topology, f"-resume{resume}" if resume else "")
            outcomes.update(got)
            if self.exit_code != EXIT_PANIC or not (got or self.running):
                break  # done, or stopped for another reason, or crashed before any test
            if self.running is not None:
                outcomes[self.running] = GuestOutcome(
                    False, f"the guest kernel panicked while this test ran: {_crash(self.console)}"
                           f"\n{self.unfinished[self.running]}", "", 0.0)
            items = [i for i in items if i.nodeid not in outcomes]
            if not items:
                break
        return outcomes

    def _rerun(self, failed: list[pytest.Item], topology: str,
               first: dict[str, GuestOutcome]) -> dict[str, GuestOutcome]:
        """The failed tests once more in a fresh boot; each keeps its first failure."""
        again = self._run(failed, topology, "-rerun")
        merged = {}
        for item in failed:
            before, after = first[item.nodeid], again.get(item.nodeid)
            if after is None:
                continue
            if after.passed:
                self.flaky[item.nodeid] = before.text
            merged[item.nodeid] = GuestOutcome(
                after.passed, f"{before.text}\n--- again in a fresh boot ---\n{after.text}",
                f"{before.stdout}--- again in a fresh boot ---\n{after.stdout}",
                before.duration_s + after.duration_s)
        return merged

    def _run(self, items: list[pytest.Item], topology: str,
             suffix: str = "") -> dict[str, GuestOutcome]:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"scx-gpu-vmtests-{os.getpid()}-{topology.replace(',', '-').replace('=', '')}{suffix}")
        nodeids = sorted({item.nodeid for item in items})
        shape = ["--topology", topology] if topology else []
        cmd = [
            sys.executable, "-m", "scx_gpu", "vm", "run", *shape, "--timeout", str(GUEST_TIMEOUT_S),
            "--copy", f"{REPO / 'tests'}:/root/tests",
            "--copy", f"{REPO / 'pyproject.toml'}:/root/pyproject.toml",
            "--out", str(out), "--", "env", f"{IN_GUEST_ENV}=1", f"{RESULTS_ENV}={GUEST_RESULTS}",
            *(f"{name}={os.environ[name]}" for name in FORWARDED_ENV if name in os.environ),
            "python3", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "vm", *nodeids,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        self.console = proc.stdout + proc.stderr
        self.exit_code = proc.returncode
        outcomes, running = _read_results(out / Path(GUEST_RESULTS).name)
        self.running = running
        failure = f"the VM stopped before this test finished (exit {proc.returncode})"
        if running:
            failure += f"; it was running {running}"
        for nodeid in nodeids:
            if nodeid not in outcomes:
                self.unfinished[nodeid] = (f"{failure}\n--- VM console ---\n"
                                           f"{self.console[-CONSOLE_TAIL:]}")
        return outcomes


def _crash(console: str) -> str:
    """The console's first line that names the kernel's crash."""
    return next((line.strip() for line in console.splitlines()
                 if any(word in line for word in CRASH_WORDS)), "no oops line in the console")


def _read_results(path: Path) -> tuple[dict[str, GuestOutcome], str | None]:
    """Outcomes the guest recorded, and the test it started last without finishing."""
    outcomes: dict[str, GuestOutcome] = {}
    running = None
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        record = json.loads(line)
        if "started" in record:
            running = record["started"]
        else:
            outcomes[record["nodeid"]] = GuestOutcome(record["passed"], record["text"],
                                                      record["stdout"], record["duration_s"])
            running = None
    return outcomes, running


def pytest_configure(config: pytest.Config) -> None:
    if in_guest() and RESULTS_ENV in os.environ:
        config.pluginmanager.register(_GuestRecorder(Path(os.environ[RESULTS_ENV])))


def pytest_collection_finish(session: pytest.Session) -> None:
    # After deselection (-k, -m): boot for the tests that will run only.
    if not in_guest():
        session.config.stash[_SESSION] = GuestSession([i for i in session.items
                                                       if _guest_body(i)])


_SESSION = pytest.StashKey[GuestSession]()


class _GuestRecorder:
    """In the guest: one line per test, on disk at once (the VM may be stopped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed: dict[str, list[pytest.TestReport]] = {}  # per test, its failed phases
        self.duration_s: dict[str, float] = {}  # per test, its phases so far

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._write({"started": nodeid})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.passed:
            self.failed.setdefault(report.nodeid, []).append(report)
        duration = self.duration_s.pop(report.nodeid, 0.0) + report.duration
        if report.when != "teardown":
            self.duration_s[report.nodeid] = duration
            return
        bad = self.failed.pop(report.nodeid, [])
        self._write({"nodeid": report.nodeid, "passed": not bad,
                     "text": "\n".join(f"[{r.when}] {r.longreprtext}" for r in bad),
                     "stdout": report.capstdout,  # every phase's, so far
                     "duration_s": round(duration, 1)})

    def _write(self, record: dict[str, object]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class HungTest(Exception):
    """A vm test ran past its time in the guest."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    signal.alarm(CLEANUP_TIMEOUT_S)  # the test's own clean-up may hang as well
    raise HungTest(f"still running after {GUEST_TEST_TIMEOUT_S}s in the VM\n{_diagnosis()}")


def _diagnosis() -> str:
    """Where the other threads are (the traceback shows this one), what runs, and
    what the kernel said lately."""
    stacks = [f"--- thread {ident} ---\n" + "".join(traceback.format_stack(frame))
              for ident, frame in sys._current_frames().items()
              if ident != threading.get_ident()]
    cmds = {"processes": ["ps", "-eo", "pid,ppid,stat,pcpu,wchan:24,args"],
            "sched_ext": ["cat", "/sys/kernel/sched_ext/state",
                          "/sys/kernel/sched_ext/root/ops"],
            "kernel warnings": ["dmesg", "--level", "emerg,alert,crit,err,warn"]}
    parts = []
    for title, cmd in cmds.items():
        try:
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            text = got.stdout + got.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = str(exc)
        parts.append(f"--- {title} ---\n" + "\n".join(text.splitlines()[-60:]))
    return "\n".join(stacks + parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if not in_guest():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(GUEST_TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (BPF, cgroups, the VM): run it as root", pytrace=False)


def pytest_terminal_summary(terminalreporter: "TerminalReporter") -> None:
    """The slowest vm tests by their time in the guest (the suite's budget)."""
    session = terminalreporter.config.stash.get(_SESSION, None)
    if session is None or not session.outcomes:
        return
    timed = sorted(session.outcomes.items(), key=lambda kv: -kv[1].duration_s)
    total = sum(outcome.duration_s for _, outcome in timed)
    terminalreporter.write_sep("=", f"slowest vm tests (in the guest; {total:.0f} s in all)")
    for nodeid, outcome in timed[:SLOWEST_SHOWN]:
        terminalreporter.write_line(f"{outcome.duration_s:7.1f}s {nodeid}")
    if session.flaky:
        terminalreporter.write_sep("=", f"vm tests that failed, then passed in a fresh boot: "
                                        f"{len(session.flaky)}")
        for nodeid, text in session.flaky.items():
            last = [line for line in text.splitlines() if line.startswith("E ")][-2:] or \
                text.splitlines()[:1]
            terminalreporter.write_line(f"{nodeid}\n  " + "\n  ".join(last))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if in_guest() or not _guest_body(pyfuncitem):
        return None
    session = pyfuncitem.config.stash[_SESSION]
    outcome = session.outcome(pyfuncitem)
    if outcome is None:
        pytest.fail(f"no result from the VM for {pyfuncitem.nodeid}: "
                    f"{session.unfinished.get(pyfuncitem.nodeid, 'never run')}", pytrace=False)
    print(outcome.stdout, end="")  # the guest's measurements, shown with -rP
    if not outcome.passed:
        pytest.fail(f"failed inside the VM:\n{outcome.text}", pytrace=False)
    return True
