"""`scx-gpu vm run` driven from the host: each test boots the VM."""

from pathlib import Path

import pytest

from tests.helpers import leftovers, scx_gpu

pytestmark = [pytest.mark.vm(host=True), pytest.mark.root]


def test_exit_status_true_false_and_code():
    for cmd, code in ((["true"], 0), (["false"], 1), (["sh", "-c", "exit 7"], 7)):
        proc = scx_gpu("vm", "run", "--", *cmd)
        assert proc.returncode == code, proc.stderr
        assert not leftovers(proc)


def test_sees_sched_ext_and_streams_output_and_says_how_it_ran():
    proc = scx_gpu("vm", "run", "--cpus", "2", "--", "sh", "-c",
                   "echo state=$(cat /sys/kernel/sched_ext/state); nproc; scx-gpu --version")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["state=disabled", "2", "scx-gpu, version 0.1.0"], proc.stdout
    assert ", tcg," in proc.stderr or ", kvm," in proc.stderr
    assert "boot " in proc.stderr


def test_timeout_stops_the_vm_with_a_message():
    proc = scx_gpu("vm", "run", "--timeout", "5", "--", "sleep", "60", timeout=120)
    assert proc.returncode == 124
    assert "timed out after 5s" in proc.stderr
    assert not leftovers(proc)


def test_timeout_keeps_what_the_guest_synced(tmp_path: Path):
    out = tmp_path / "out"
    proc = scx_gpu("vm", "run", "--timeout", "30", "--out", str(out), "--", "sh", "-c",
                   "echo done > /job/out/first.txt && sync && sleep 600", timeout=180)
    assert proc.returncode == 124, proc.stderr
    assert "timed out after 30s while the command ran" in proc.stderr
    assert (out / "first.txt").read_text() == "done\n"
    assert not leftovers(proc)


def test_copy_and_out(tmp_path: Path):
    src = tmp_path / "workload"
    src.mkdir()
    (src / "job.sh").write_text("echo hello from $(hostname) > /job/out/result.txt\n")
    out = tmp_path / "out"
    proc = scx_gpu("vm", "run", "--copy", f"{src}:/opt/work", "--out", str(out), "--",
                   "sh", "/opt/work/job.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "result.txt").read_text() == "hello from scx-gpu-vm\n"


def test_guest_panic_is_reported():
    proc = scx_gpu("vm", "run", "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30",
                   timeout=300)
    assert proc.returncode == 1
    assert "panicked" in proc.stderr, proc.stderr


def test_image_is_reused_while_its_inputs_are_unchanged():
    first = scx_gpu("vm", "image")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.split("\t")[0])
    mtime = path.stat().st_mtime_ns
    second = scx_gpu("vm", "image")
    assert second.stdout == first.stdout
    assert path.stat().st_mtime_ns == mtime  # not rebuilt
