"""`scx-gpu load` beside scx_loader (org.scx.Loader), against a fake service on
a private bus (tests.controlplane.fake_scx_loader); root.

On the host (no sched_ext) the checks before loading, and the hand-back
after a failed load; in the VM the whole takeover with a real scheduler
standing in for scx_loader's.
"""

import os
import signal
import subprocess

import pytest
from jeepney import Properties
from jeepney.io.blocking import open_dbus_connection

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane import runstate
from scx_gpu.controlplane.takeover import LOADER
from tests.controlplane.fake_scx_loader import calls, fake_loader, last_call, private_bus
from tests.helpers import assert_one_line_error, disabled, enabled, scx_gpu

pytestmark = pytest.mark.root
NO_SCHED_EXT = "has no sched_ext"


def load(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return scx_gpu("load", "--quiet", *args, env={"DBUS_SYSTEM_BUS_ADDRESS": address})


def test_refuses_while_scx_loader_runs_a_scheduler(tmp_path):
    log = tmp_path / "calls.jsonl"
    with private_bus() as bus, fake_loader(bus, log, "--current", "scx_bpfland"):
        assert_one_line_error(load(bus), 1, ["scx_loader", "runs scx_bpfland", "--takeover",
                                             "scxctl stop"])
    assert calls(log) == []


def test_takeover_stops_it_and_hands_it_back_when_loading_fails(tmp_path):
    log = tmp_path / "calls.jsonl"
    with private_bus() as bus, fake_loader(bus, log, "--current", "scx_lavd",
                                           "--arg=--performance"):
        proc = load(bus, "--takeover")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert "took over from scx_loader: stopped scx_lavd (args --performance)" in lines[0]
    assert "handed back to scx_loader: started scx_lavd (args --performance)" in lines[1]
    assert NO_SCHED_EXT in lines[2], lines
    assert calls(log) == ["StopScheduler", "StartSchedulerWithArgs"]
    assert last_call(log)["body"] == ["scx_lavd", ["--performance"]]


def test_a_mode_is_handed_back_as_a_mode(tmp_path):
    log = tmp_path / "calls.jsonl"
    with private_bus() as bus, fake_loader(bus, log, "--current", "scx_bpfland", "--mode", "2"):
        proc = load(bus, "--takeover")
    assert "stopped scx_bpfland (mode 2)" in proc.stderr, proc.stderr
    assert calls(log) == ["StopScheduler", "StartScheduler"]
    assert last_call(log)["body"] == ["scx_bpfland", 2]


def test_idle_scx_loader_is_left_alone(tmp_path):
    log = tmp_path / "calls.jsonl"
    with private_bus() as bus, fake_loader(bus, log):
        assert_one_line_error(load(bus, "--takeover"), 1, [NO_SCHED_EXT])
    assert log.read_text().count('"GetAll"') == 1  # asked what it runs ...
    assert calls(log) == []  # ... and, told nothing, stopped nothing


def test_absent_scx_loader_is_not_started_by_activation(tmp_path):
    marker = tmp_path / "activated"
    with private_bus(activation_marker=marker) as bus:
        assert_one_line_error(load(bus), 1, [NO_SCHED_EXT])
        assert not marker.exists()
        # The control: a plain call to the name does start it on this bus (no
        # reply is awaited: the stand-in never takes the name).
        with open_dbus_connection(bus=bus) as conn:
            conn.send(Properties(LOADER).get_all())
            sc.wait_for(marker.exists, 10, "D-Bus activation of the absent service")


def test_no_system_bus_is_no_scx_loader():
    assert_one_line_error(load("unix:path=/nonexistent/bus"), 1, [NO_SCHED_EXT])


@pytest.mark.vm
def test_takeover_runs_scx_gpu_then_restarts_the_previous_scheduler(tmp_path):
    log = tmp_path / "calls.jsonl"
    # The fake's "scx_bpfland" is a real sched_ext scheduler: scx-gpu's fair policy.
    stand_in = [*sc.SCX_GPU, "load", "--policy", "fair", "--quiet"]
    with private_bus() as bus, fake_loader(bus, log, "--current", "scx_bpfland", "--",
                                           *stand_in):
        sc.wait_for(lambda: runstate.run_state().get("config", {}).get("policy") == "fair", 60,
                    "the stand-in scheduler to load")
        ours = subprocess.Popen([*sc.SCX_GPU, "load", "--quiet", "--takeover"],
                                env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus},
                                stderr=subprocess.PIPE, text=True)
        sc.wait_for(lambda: runstate.run_state().get("pid") == ours.pid, 60, "scx-gpu to load")
        status = sc.status()
        assert status["scx_gpu"]["policy"] == "gpu-first", status
        assert status["scx_gpu"]["scx_loader_stopped"] == "scx_bpfland (mode 0)", status
        assert "took over from scx_loader" in scx_gpu("status").stdout
        ours.send_signal(signal.SIGTERM)
        _, err = ours.communicate(timeout=30)
        assert ours.returncode == 0, err
        assert "handed back to scx_loader: started scx_bpfland (mode 0)" in err, err
        sc.wait_for(lambda: runstate.run_state().get("config", {}).get("policy") == "fair"
                    and enabled(), 60, "the stand-in scheduler to be back")
        assert calls(log) == ["StopScheduler", "StartScheduler"]
    sc.wait_for(disabled, 30, "the stand-in to detach with the fake service")
