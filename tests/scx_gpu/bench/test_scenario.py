"""scenario's exit wait: a loader that ignores SIGTERM is reported, not waited for."""

import signal
import subprocess
import sys

import pytest

from scx_gpu.bench import scenario

STUCK = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', " \
        "flush=True); time.sleep(60)"


def test_a_loader_that_will_not_exit_is_aborted_and_shown(tmp_path):
    log = tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", STUCK], stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        scenario.wait_for(lambda: "up" in log.read_text(), 30, "the process to start")
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(AssertionError) as failed:
            scenario._wait_exit(proc, log, timeout=1)
    assert proc.returncode == -signal.SIGABRT
    said = str(failed.value)
    assert f"(pid {proc.pid}) did not exit within 1 s" in said
    assert "State:" in said  # the thread's kernel view
    assert "in <module>" in said  # its Python stack, from the abort
