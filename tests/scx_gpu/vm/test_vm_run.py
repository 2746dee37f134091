"""`scx-gpu vm run` driven from the host: each test boots the VM."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scx_gpu.cache import cache_dir
from scx_gpu.vm.runner import EXIT_PANIC
from tests.helpers import leftovers, scx_gpu

pytestmark = [pytest.mark.vm(host=True), pytest.mark.root]


def test_exit_status_is_the_commands_and_a_given_image_boots_without_the_cache(
        tmp_path: Path):
    # One boot: status 0 is every other test's. The image and kernel given by
    # the environment (as on a machine that cannot build them) boot from an
    # empty cache, which then holds no image; KVM's verdict is carried over.
    image = scx_gpu("vm", "image").stdout.split("\t")[0]
    kernel = scx_gpu("vm", "kernel").stdout.split("\t")[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    for verdict in cache_dir().glob("kvm-broken-*"):
        shutil.copy(verdict, cache)
    proc = scx_gpu("vm", "run", "--", "sh", "-c", "exit 7", timeout=300, env={
        "SCX_GPU_CACHE": str(cache), "SCX_GPU_VM_IMAGE": image, "SCX_GPU_VM_KERNEL": kernel})
    assert proc.returncode == 7, proc.stderr
    assert not (cache / "image").exists()
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
    assert proc.returncode == EXIT_PANIC
    assert "panicked" in proc.stderr, proc.stderr


def test_image_is_reused_while_its_inputs_are_unchanged():
    first = scx_gpu("vm", "image")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.split("\t")[0])
    mtime = path.stat().st_mtime_ns
    second = scx_gpu("vm", "image")
    assert second.stdout == first.stdout
    assert path.stat().st_mtime_ns == mtime  # not rebuilt


# QEMU where /dev/kvm exists but cannot run a guest (nested virtualisation):
# a KVM error and a register dump at once, or nothing, and the guest sits
# paused forever. Anything but KVM runs the real QEMU.
BROKEN_KVM_QEMU = """#!/bin/sh
echo "$*" >> {log}
case " $* " in
*" -accel kvm "*)
    {say}
    exec sleep 3600;;
esac
exec {real} "$@"
"""
KVM_ERROR_LINES = ('echo "KVM internal error. Suberror: 1" >&2; '
                   'echo "extra data[0]: 0x0000000000000001" >&2; '
                   'echo "RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000" >&2')
FALLBACK_BOUND_S = 30


def _broken_kvm_env(tmp_path: Path, say: str) -> tuple[dict[str, str], Path, Path]:
    """PATH with the stand-in QEMU first, a KVM device it can 'open', a cache with no verdict."""
    real = shutil.which("qemu-system-x86_64")
    assert real, "qemu-system-x86_64 is not installed: run `make setup`"
    bindir, log = tmp_path / "bin", tmp_path / "qemu.log"
    bindir.mkdir()
    stand_in = bindir / "qemu-system-x86_64"
    stand_in.write_text(BROKEN_KVM_QEMU.format(log=log, say=say, real=real))
    stand_in.chmod(0o755)
    device = tmp_path / "kvm"
    device.touch()
    # The kernel and image caches are shared; the verdict starts absent.
    cache = tmp_path / "cache"
    cache.mkdir()
    for sub in ("kernel", "image", "apt", "vmlinux"):
        (cache / sub).symlink_to(cache_dir(sub))
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "SCX_GPU_KVM_DEVICE": str(device),
           "SCX_GPU_CACHE": str(cache)}
    return env, log, cache


def _run_timed(env: dict[str, str]) -> tuple[int, list[tuple[float, str]]]:
    """Run `vm run -- true`; its output lines with seconds since the start."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "scx_gpu", "vm", "run", "--timeout", "300",
                             "--", "true"], env={**os.environ, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stdout]
    return proc.wait(timeout=60), lines


@pytest.mark.parametrize("say", [KVM_ERROR_LINES, ":"], ids=["kvm-error", "silent"])
def test_broken_kvm_falls_back_to_emulation_within_seconds(tmp_path: Path, say: str):
    env, log, cache = _broken_kvm_env(tmp_path, say)
    code, lines = _run_timed(env)
    text = "\n".join(line for _, line in lines)
    assert code == 0, text
    said = [(t, line) for t, line in lines if "KVM cannot run the guest" in line]
    assert len(said) == 1, text
    assert said[0][0] < FALLBACK_BOUND_S, said
    if say != ":":
        assert "KVM internal error. Suberror: 1" in said[0][1]
    assert "RAX=" not in text  # the dump is not shown
    assert ", tcg," in text
    accels = [line.split("-accel ")[1].split()[0] for line in log.read_text().splitlines()]
    assert accels == ["kvm", "tcg,thread=multi"], accels
    assert list(cache.glob("kvm-broken-*"))

    # The verdict is kept: the next run goes straight to emulation, silently.
    code, lines = _run_timed(env)
    assert code == 0
    assert not any("KVM" in line for _, line in lines)
    assert log.read_text().count("-accel kvm") == 1
