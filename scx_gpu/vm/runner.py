"""Boot the test VM, run one command as root inside it, return its status.

The command, its environment and the user's files travel on a small ext4
"job disk"; the guest's /job/out comes back through the same disk. Output
streams over the serial console; the guest init prints marker lines that
tell boot, exit status and crash apart.
"""

import os
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from scx_gpu.cache import cache_dir
from scx_gpu.errors import EnvironmentProblem, ScxGpuError, UsageError
from scx_gpu.vm.image import INIT_PATH, ROOT_PARTUUID
from scx_gpu.vm.progress import say
from scx_gpu.vm.topology import Topology, qemu_args

BOOTED, EXIT_PREFIX = "SCXGPU-BOOTED", "SCXGPU-EXIT:"
JOB_LABEL = "scxgpu-job"
EXIT_TIMEOUT = 124
EXIT_PANIC = 125
# tsc=unstable: otherwise the kernel live-patches sched_clock's static keys
# while other vCPUs run (at late init, and again when the clocksource
# watchdog finds the emulated TSC unstable); QEMU 7.2's multi-threaded TCG
# could run a stale translation of the patched code (an int3 oops). QEMU 10
# (make setup) does so rarely, also at sched_ext's own keys: the vm tests go
# on in a fresh boot after a panic (tests/vmguest.py).
KERNEL_ARGS = (
    f"console=ttyS0 root=PARTUUID={ROOT_PARTUUID} rootwait rw quiet loglevel=1 panic=-1 "
    "tsc=unstable "
    f"init=/{INIT_PATH}"
)
POWEROFF_GRACE_S = 20
KVM_DEVICE = os.environ.get("SCX_GPU_KVM_DEVICE", "/dev/kvm")
# Under KVM the guest's init reports within seconds; one still silent after
# this long sits paused on a KVM failure that QEMU may not even print.
KVM_BOOT_WINDOW_S = 20.0
# What QEMU prints when KVM is present but cannot run the guest (nested
# virtualisation often): it then leaves the guest paused, never exiting.
KVM_FAILURES = ("KVM internal error", "kvm run failed", "KVM: entry failed",
                "failed to initialize kvm", "Could not access KVM")


class VmFailure(ScxGpuError):
    """The guest crashed, did not boot, or the run timed out."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class VmSpec:
    vmlinuz: Path
    image: Path
    cpus: int = 2
    mem: str = "1G"
    timeout: float = 600.0
    copies: Sequence[tuple[Path, str]] = ()
    out_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    topology: Topology | None = None  # None: cpus flat vCPUs, one node


@dataclass
class VmResult:
    exit_code: int
    accel: str
    boot_s: float
    total_s: float
    output: str


def parse_copy(spec: str) -> tuple[Path, str]:
    """SRC:DST with DST absolute inside the guest; SRC must exist."""
    src, sep, dst = spec.rpartition(":")
    if not sep or not src or not dst.startswith("/"):
        raise UsageError(f"--copy {spec}: expected SRC:DST with an absolute guest path DST")
    if not Path(src).exists():
        raise UsageError(f"--copy {spec}: {src} does not exist")
    return Path(src), dst


def _job_script(cmd: Sequence[str], copies: Sequence[tuple[Path, str]],
                env: dict[str, str]) -> str:
    lines = ["set -e"]
    for i, (_, dst) in enumerate(copies):
        q = shlex.quote(dst)
        lines.append(f"mkdir -p $(dirname {q}) && cp -a /job/files/{i} {q}")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += ["set +e", "cd /root", f"exec {shlex.join(cmd)}"]
    return "\n".join(lines) + "\n"


def _make_job_disk(work: Path, cmd: Sequence[str], spec: VmSpec) -> Path:
    job = work / "job"
    (job / "files").mkdir(parents=True)
    (job / "out").mkdir()
    for i, (src, _) in enumerate(spec.copies):
        if src.is_dir():
            shutil.copytree(src, job / "files" / str(i), symlinks=True)
        else:
            shutil.copy2(src, job / "files" / str(i))
    (job / "run.sh").write_text(_job_script(cmd, spec.copies, spec.env))
    used = sum(f.stat().st_size for f in job.rglob("*") if f.is_file()) >> 20
    disk = work / "job.ext4"
    proc = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", JOB_LABEL, "-d", str(job), str(disk), f"{used * 2 + 256}M"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"mkfs.ext4 (job disk) failed: {proc.stderr.strip()}")
    return disk


def _kvm_marker() -> Path:
    return cache_dir() / f"kvm-broken-{os.uname().release}"


def kvm_usable() -> bool:
    """KVM present, accessible, and not seen failing on this host kernel."""
    return os.access(KVM_DEVICE, os.R_OK | os.W_OK) and not _kvm_marker().exists()


def _qemu_command(spec: VmSpec, job_disk: Path, accel: str) -> list[str]:
    # topoext: QEMU's emulated CPU is an AMD one, which describes SMT
    # threads and cache sharing through the topology extensions.
    tcg_cpu = "max,topoext=on" if spec.topology else "max"
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
        ["-accel", "tcg,thread=multi", "-cpu", tcg_cpu]
    machine = qemu_args(spec.topology, spec.mem) if spec.topology else \
        ["-smp", str(spec.cpus), "-m", spec.mem]
    return [
        "qemu-system-x86_64", *accel_args, *machine,
        "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
        "-kernel", str(spec.vmlinuz), "-append", KERNEL_ARGS,
        # The kernel finds root by PARTUUID and init the job disk by label:
        # NVMe namespace names are not stable.
        "-device", "nvme,id=nvme0,serial=scxgpu",
        "-drive", f"file={spec.image},if=none,id=root,format=raw,snapshot=on",
        "-device", "nvme-ns,drive=root,bus=nvme0,nsid=1",
        "-drive", f"file={job_disk},if=none,id=job,format=raw",
        "-device", "nvme-ns,drive=job,bus=nvme0,nsid=2",
    ]


class _Console:
    """Reads the guest console, hides marker lines, watches for events."""

    def __init__(self, out: TextIO, hold_until_boot: bool) -> None:
        self.out = out
        self.lines: list[str] = []
        self.booted_at: float | None = None
        self.exit_code: int | None = None
        self.panicked = False
        self.kvm_failure: str | None = None
        # Under KVM, what comes before the guest boots is held back: a
        # failing KVM prints a register dump that the fallback makes moot.
        self.held: list[str] | None = [] if hold_until_boot else None

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n").replace("\r", "")
        if line == BOOTED:
            self.booted_at = time.monotonic()
            self._write(*(self.held or ()))
            self.held = None
            return
        if line.startswith(EXIT_PREFIX) and line[len(EXIT_PREFIX):].isdigit():
            self.exit_code = int(line[len(EXIT_PREFIX):])
            return
        self.panicked |= "Kernel panic" in line
        if self.booted_at is None and self.kvm_failure is None and \
                any(failure in line for failure in KVM_FAILURES):
            self.kvm_failure = line.strip()
        self.lines.append(line)
        if self.exit_code is not None:
            return  # the guest's power-off chatter
        if self.held is not None:
            self.held.append(line)
        else:
            self._write(line)

    def _write(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def kvm_gave_up(self, start: float) -> bool:
        """Under KVM: QEMU reported a KVM failure, or the guest stayed silent too long."""
        return self.booted_at is None and (
            self.kvm_failure is not None or time.monotonic() - start > KVM_BOOT_WINDOW_S)


def _boot(spec: VmSpec, job_disk: Path, accel: str, out: TextIO) -> tuple[_Console, float]:
    shape = f"{spec.topology.cpus} vCPUs as {spec.topology}" if spec.topology else \
        f"{spec.cpus} vCPUs"
    say(f"booting the guest ({accel}, {shape}, {spec.mem})")
    start = time.monotonic()
    console = _Console(out, hold_until_boot=accel == "kvm")
    try:
        proc = subprocess.Popen(_qemu_command(spec, job_disk, accel), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError as exc:
        raise EnvironmentProblem("qemu-system-x86_64 not found: run `make setup`") from exc
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while not (accel == "kvm" and console.kvm_gave_up(start)):
            grace = POWEROFF_GRACE_S if console.exit_code is not None else 0
            deadline = start + spec.timeout + grace
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                console.feed(raw.decode(errors="replace"))
        if buf:
            console.feed(buf.decode(errors="replace"))
    finally:
        proc.kill()
        proc.wait()
        sel.close()
    return console, start


def _collect_out(job_disk: Path, out_dir: Path, clean: bool) -> None:
    """Copy the guest's /job/out into out_dir (debugfs reads ext4 unmounted)."""
    if not clean:
        # A guest stopped without unmounting leaves synced metadata in the
        # journal, which debugfs does not read: replay it first.
        subprocess.run(["e2fsck", "-y", "-E", "journal_only", str(job_disk)],
                       capture_output=True, check=False)
    staging = job_disk.parent / "collected"
    staging.mkdir()
    proc = subprocess.run(["debugfs", "-R", f"rdump /out {staging}", str(job_disk)],
                          capture_output=True, text=True, check=False)
    if not (staging / "out").is_dir():
        raise EnvironmentProblem(f"cannot read the guest's /job/out: {proc.stderr.strip()}")
    shutil.copytree(staging / "out", out_dir, dirs_exist_ok=True)


def run(cmd: Sequence[str], spec: VmSpec, out: TextIO = sys.stdout) -> VmResult:
    """Boot, run cmd in the guest, and return its exit status; raise VmFailure otherwise."""
    with tempfile.TemporaryDirectory(prefix="scx-gpu-vm-") as tmp:
        job_disk = _make_job_disk(Path(tmp), cmd, spec)
        accel = "kvm" if kvm_usable() else "tcg"
        console, start = _boot(spec, job_disk, accel, out)
        if accel == "kvm" and console.booted_at is None and console.exit_code is None:
            _give_up_kvm(console, time.monotonic() - start)
            accel = "tcg"
            console, start = _boot(spec, job_disk, accel, out)
        total = time.monotonic() - start
        if spec.out_dir is not None and console.booted_at is not None:
            # Also after a timeout or crash: what the guest wrote and synced
            # tells what it got done.
            _collect_out(job_disk, spec.out_dir, clean=console.exit_code is not None)
        if console.exit_code is None:
            raise VmFailure(_failure_message(console, spec, accel, total),
                            _failure_status(console, spec, total))
        boot_s = (console.booted_at or start) - start
        return VmResult(console.exit_code, accel, boot_s, total, "\n".join(console.lines))


def _give_up_kvm(console: _Console, elapsed: float) -> None:
    """Remember that KVM cannot run the guest on this host kernel, and say why, once."""
    last = console.lines[-1].strip() if console.lines else "nothing"
    if console.kvm_failure:
        why = console.kvm_failure
    elif elapsed < KVM_BOOT_WINDOW_S:
        why = f"QEMU stopped before the guest booted; it said: {last}"
    else:
        why = f"no guest boot within {KVM_BOOT_WINDOW_S:g}s; last line: {last}"
    marker = _kvm_marker()
    marker.write_text(why + "\n")
    say(f"KVM cannot run the guest here ({why}); using software emulation (TCG), "
        f"remembered in {marker}")


def _failure_status(console: _Console, spec: VmSpec, elapsed: float) -> int:
    if console.panicked:
        return EXIT_PANIC
    return EXIT_TIMEOUT if elapsed >= spec.timeout else 1


def _failure_message(console: _Console, spec: VmSpec, accel: str, elapsed: float) -> str:
    if console.panicked:
        return f"guest kernel panicked after {elapsed:.1f}s ({accel}); see the console output above"
    if elapsed >= spec.timeout:
        where = "the command ran" if console.booted_at else "the guest was still booting"
        return f"timed out after {spec.timeout:g}s while {where} ({accel}); VM stopped"
    if console.booted_at is None:
        return f"guest failed to boot ({accel}); see the console output above"
    return f"guest stopped before the command finished ({accel}, {elapsed:.1f}s)"
