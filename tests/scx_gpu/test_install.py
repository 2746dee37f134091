"""`scx-gpu install-service`: the unit and its defaults, checked by systemd itself."""

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.loader import run_state
from tests.helpers import scx_gpu


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
        sc.wait_for(lambda: sc.enabled() and bool(run_state()), 60, "the service's scheduler")
        assert sc.status()["scx_gpu"]["batch_quota_pct"] == 40
        assert run_state()["config"]["batch"]["comms"] == ["make*"]
    finally:
        proc.send_signal(signal.SIGTERM)  # what `systemctl stop` sends (KillSignal)
    assert sc.wait_for(sc.disabled, 2.0, "state disabled within 2 s") <= 2.0
    assert proc.wait(timeout=10) == 0  # a clean stop: Restart=on-failure leaves it stopped
