"""`scx-gpu install-service`: the unit and its defaults, checked by systemd itself."""

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.runstate import run_state
from tests.helpers import disabled, enabled, scx_gpu


def installed(root: Path) -> tuple[str, str]:
    proc = scx_gpu("install-service", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    return ((root / "etc/systemd/system/scx-gpu.service").read_text(),
            (root / "etc/default/scx-gpu").read_text())


def test_unit_restarts_on_failure_stops_cleanly_and_verifies(tmp_path):
    unit, defaults = installed(tmp_path)
    for line in ("EnvironmentFile=-/etc/default/scx-gpu", "Restart=on-failure",
                 "KillSignal=SIGTERM", "WantedBy=multi-user.target"):
        assert line in unit.splitlines(), line
    binary = next(line.split("=", 1)[1] for line in defaults.splitlines()
                  if line.startswith("SCX_GPU_BIN="))
    assert Path(binary).is_file(), binary
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian's systemd package)"
    unit_path = tmp_path / "etc/systemd/system/scx-gpu.service"
    verify = subprocess.run([analyze, "verify", str(unit_path)], capture_output=True, text=True,
                            check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_reinstall_keeps_the_operators_settings(tmp_path):
    installed(tmp_path)
    defaults = tmp_path / "etc/default/scx-gpu"
    defaults.write_text('SCX_GPU_FLAGS="--quota 10"\n')
    proc = scx_gpu("install-service", "--root", str(tmp_path))
    assert "kept" in proc.stdout and defaults.read_text() == 'SCX_GPU_FLAGS="--quota 10"\n'


def exec_start(unit: str) -> list[str]:
    """The unit's ExecStart as an argv."""
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.split("=", 1)[1])


@pytest.mark.vm
def test_the_units_command_runs_the_scheduler_and_stops_cleanly(tmp_path):
    unit, _ = installed(tmp_path)
    (tmp_path / "makefile").touch()  # what 'make*' would match if the flags were globbed
    env = {**os.environ, "SCX_GPU_BIN": shutil.which("scx-gpu") or "scx-gpu",
           "SCX_GPU_FLAGS": "--quota 40 --batch-comm make*"}
    proc = subprocess.Popen(exec_start(unit), env=env, cwd=tmp_path)
    try:
        sc.wait_for(lambda: enabled() and bool(run_state()), 60, "the service's scheduler")
        assert sc.status()["scx_gpu"]["batch_quota_pct"] == 40
        assert run_state()["config"]["batch"]["comms"] == ["make*"]
    finally:
        proc.send_signal(signal.SIGTERM)  # what `systemctl stop` sends (KillSignal)
    assert sc.wait_for(disabled, 2.0, "state disabled within 2 s") <= 2.0
    assert proc.wait(timeout=10) == 0  # a clean stop: Restart=on-failure leaves it stopped


Systemctl = Callable[..., subprocess.CompletedProcess[str]]
TEST_TARGET = "scx-gpu-test.target"


@contextmanager
def systemd_manager(log: Path) -> Iterator[Systemctl]:
    """systemd as PID 1 of a new PID namespace (the test VM's own init is not
    systemd), booted into an empty target, with a /tmp of its own (its boot
    empties /tmp); yields a systemctl that runs in that namespace (systemd
    refuses clients whose pid it cannot see)."""
    Path(f"/etc/systemd/system/{TEST_TARGET}").write_text(
        "[Unit]\nDescription=scx-gpu tests: only what a test starts\n")
    with log.open("w") as out:
        manager = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c",
             "mount -t tmpfs tmp /tmp && exec /lib/systemd/systemd --system "
             f"--unit={TEST_TARGET} --log-target=kmsg"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "container": "scx-gpu"})
    try:
        children = Path(f"/proc/{manager.pid}/task/{manager.pid}/children")
        sc.wait_for(lambda: bool(children.read_text().split()), 10, "unshare's child")
        init = children.read_text().split()[0]

        def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["nsenter", "-t", init, "-p", "-m", "systemctl", *args],
                                  capture_output=True, text=True, check=False)

        sc.wait_for(lambda: systemctl("is-system-running").stdout.strip() in
                    ("running", "degraded"), 60, "systemd to boot")
        yield systemctl
    finally:
        # No shutdown sequence (it would unmount and remount what the VM shares):
        # unshare's death kills the namespace's PID 1, and with it every process
        # of the namespace.
        manager.kill()
        manager.wait()


@pytest.mark.vm
def test_the_unit_under_systemd_restarts_after_a_crash_and_stops_cleanly(tmp_path):
    assert scx_gpu("install-service").returncode == 0
    Path("/etc/default/scx-gpu").write_text(
        Path("/etc/default/scx-gpu").read_text().replace('SCX_GPU_FLAGS=""',
                                                         'SCX_GPU_FLAGS="--quota 40"'))
    with systemd_manager(tmp_path / "systemd.log") as systemctl:
        def unit(name: str) -> str:
            return systemctl("show", "--value", "-p", name, "scx-gpu").stdout.strip()

        started = systemctl("start", "scx-gpu")
        assert started.returncode == 0, started.stderr
        sc.wait_for(lambda: enabled() and bool(run_state()), 60, "the service's scheduler")
        first = unit("MainPID")
        assert sc.status()["scx_gpu"]["batch_quota_pct"] == 40
        # A crash of the main process (the loader has no others): SIGKILL leaves no
        # time to detach; the kernel does, and systemd restarts the service.
        killed = systemctl("kill", "--kill-who=main", "-s", "KILL", "scx-gpu")
        assert killed.returncode == 0, killed.stderr
        sc.wait_for(lambda: unit("MainPID") not in ("0", first) and enabled()
                    and run_state().get("config", {}).get("quota") == 40, 60,
                    "systemd to restart the service")
        assert unit("NRestarts") == "1"
        stopped = systemctl("stop", "scx-gpu")
        assert stopped.returncode == 0, stopped.stderr
        sc.wait_for(disabled, 2.0, "state disabled within 2 s")
        assert not run_state()
        assert (unit("ActiveState"), unit("Result")) == ("inactive", "success")
