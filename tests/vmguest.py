"""pytest plugin: run the bodies of `@pytest.mark.vm` tests inside the test VM.

On the host, the first vm test boots one VM that runs every vm test of the
session with pytest inside the guest; each host-side test then reports its
guest outcome (and fails with the guest's output). A VM that cannot boot
fails every vm test; nothing is skipped. `@pytest.mark.vm(host=True)` marks
a test whose body runs on the host and boots VMs itself (still deselected by
`-m "not vm"`). `@pytest.mark.root` tests fail without root.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_GUEST_ENV = "SCX_GPU_IN_VM"
REPO = Path(__file__).resolve().parent.parent
GUEST_TIMEOUT_S = 1500


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_ENV) == "1"


@dataclass
class GuestOutcome:
    passed: bool
    text: str
    stdout: str


def _guest_body(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("vm")
    return marker is not None and not marker.kwargs.get("host", False)


class GuestSession:
    """Runs the session's vm tests in one boot, once, on first demand."""

    def __init__(self, items: list[pytest.Item]) -> None:
        self.items = items
        self.outcomes: dict[str, GuestOutcome] | None = None
        self.console = ""
        self.failure = ""

    def outcome(self, item: pytest.Item) -> GuestOutcome | None:
        if self.outcomes is None:
            self.outcomes = self._run(self.items)
        return self.outcomes.get(_junit_key(item.nodeid))

    def _run(self, items: list[pytest.Item]) -> dict[str, GuestOutcome]:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"scx-gpu-vmtests-{os.getpid()}"
        nodeids = sorted({item.nodeid for item in items})
        cmd = [
            sys.executable, "-m", "scx_gpu", "vm", "run", "--timeout", str(GUEST_TIMEOUT_S),
            "--copy", f"{REPO / 'tests'}:/root/tests",
            "--copy", f"{REPO / 'pyproject.toml'}:/root/pyproject.toml",
            "--out", str(out), "--", "env", f"{IN_GUEST_ENV}=1",
            "python3", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "vm",
            "-o", "junit_logging=system-out", "--junitxml=/job/out/junit.xml", *nodeids,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        self.console = proc.stdout + proc.stderr
        junit = out / "junit.xml"
        if not junit.is_file():
            self.failure = f"the VM did not produce results (exit {proc.returncode})"
            return {}
        return _parse_junit(junit)


def _junit_key(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    return path.removesuffix(".py").replace("/", ".") + "::" + name.replace("::", ".")


def _parse_junit(path: Path) -> dict[str, GuestOutcome]:
    outcomes: dict[str, GuestOutcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        text = "\n".join((c.get("message") or "") + "\n" + (c.text or "") for c in bad)
        stdout = "".join(c.text or "" for c in case if c.tag == "system-out")
        outcomes[key] = GuestOutcome(not bad, text, stdout)
    return outcomes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if in_guest():
        return
    config.stash[_SESSION] = GuestSession([i for i in items if _guest_body(i)])


_SESSION = pytest.StashKey[GuestSession]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root (BPF, cgroups, the VM): run it as root", pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if in_guest() or not _guest_body(pyfuncitem):
        return None
    session = pyfuncitem.config.stash[_SESSION]
    outcome = session.outcome(pyfuncitem)
    if outcome is None:
        pytest.fail(f"no result from the VM for {pyfuncitem.nodeid}: {session.failure}\n"
                    f"--- VM console ---\n{session.console[-6000:]}", pytrace=False)
    print(outcome.stdout, end="")  # the guest's measurements, shown with -rP
    if not outcome.passed:
        pytest.fail(f"failed inside the VM:\n{outcome.text}", pytrace=False)
    return True
