"""How long an RCU grace period takes under gpu saturation, and who waits meanwhile.

With scx-gpu loaded and 2 gpu-tier hogs per vCPU, a gpu-tier prober calls
membarrier(MEMBARRIER_CMD_GLOBAL), which returns after synchronize_rcu(),
every 10 ms for SECONDS, while tracefs records sched_wakeup and sched_switch.
Prints each grace period's length and, for those over 0.3 s, the tasks whose
wake-up waited over 0.2 s inside it; then rcu_preempt's wake-up waits.

On 2026-11-30 (2 vCPUs, TCG) a grace period took 1-4 s, in whole multiples
of the 1 s floor wait, and per-CPU kworkers, jbd2 and rcu_exp_gp_kthread
waited 1.00 s each during it; with rcu_preempt's wake-ups served first
(296 of them within 8.5 ms, a patch not kept) it still took 1-2 s. Since
kthreads wait in their CPU's local queue (2026-12-01) a grace period takes
7-48 ms, rcu_preempt's wake-ups waiting p50 0.3 ms, at most 23 ms.

    scx-gpu vm run --copy bench/vm/grace_periods.py:/root/g.py -- python3 /root/g.py 12
"""
import re
import subprocess
import sys
import time
from pathlib import Path

from scx_gpu.bench import noise
from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.tiers import OWN_ROOT
from scx_gpu.controlplane.topology import NPROC

# Each membarrier(MEMBARRIER_CMD_GLOBAL) waits one grace period (synchronize_rcu()).
PROBER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL = 324, 1
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    if libc.syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "membarrier")
    time.sleep(0.01)
"""

TRACING = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_wakeup", "sched/sched_switch", "syscalls/sys_enter_membarrier",
          "syscalls/sys_exit_membarrier")
LINE = re.compile(r"^\s*(\S+)-(\d+)\s+\[\d+\].*?\s(\d+\.\d+): (\w+)(?::|\(| ->)\s*(.*)$")
SLOW_GP_S, SLOW_WAIT_S = 0.3, 0.2


def _arm_trace() -> None:
    """Before the saturation: resizing the buffer and enabling events wait for
    grace periods and per-CPU kworkers, which then take seconds each."""
    (TRACING / "tracing_on").write_text("0")
    (TRACING / "trace").write_text("")
    (TRACING / "buffer_size_kb").write_text("16384")
    for event in EVENTS:
        (TRACING / "events" / event / "enable").write_text("1")


def _trace(on: bool) -> None:
    (TRACING / "tracing_on").write_text("1" if on else "0")


def _parse(lines: list[str]) -> tuple[list[tuple[float, float]], list[tuple[float, float, str]]]:
    """Grace periods (enter, exit) and wake-up waits (woken, ran, task)."""
    woke: dict[str, tuple[float, str]] = {}
    entered: dict[str, float] = {}
    periods, waits = [], []
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        pid, ts, event, rest = m.group(2), float(m.group(3)), m.group(4), m.group(5)
        if event == "sched_wakeup" and (w := re.search(r"comm=(.*?) pid=(\d+)", rest)):
            woke.setdefault(w.group(2), (ts, w.group(1)))
        elif event == "sched_switch" and (s := re.search(r"next_comm=(.*?) next_pid=(\d+)", rest)):
            if s.group(2) in woke:
                since, comm = woke.pop(s.group(2))
                waits.append((since, ts, f"{comm}[{s.group(2)}]"))
        elif event == "sys_membarrier" and "->" not in line:
            entered[pid] = ts
        elif event == "sys_membarrier" and pid in entered:
            periods.append((entered.pop(pid), ts))
    return periods, waits


def main(seconds: float) -> None:
    if not (TRACING / "trace").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)
    gpu = OWN_ROOT / "gpu"
    _arm_trace()
    with sc.loaded():
        hogs = subprocess.Popen(sc.in_cgroup(gpu, noise.stress_cpu(2 * NPROC)))
        try:
            time.sleep(2)
            _trace(True)
            subprocess.run(sc.in_cgroup(gpu, [sys.executable, "-c", PROBER, str(seconds)]),
                           check=True)
            _trace(False)
        finally:
            (gpu / "cgroup.kill").write_text("1")
            hogs.wait()
    periods, waits = _parse((TRACING / "trace").read_text().splitlines())
    print("grace periods, s:", " ".join(f"{b - a:.3f}" for a, b in periods))
    for start, end in periods:
        if end - start < SLOW_GP_S:
            continue
        print(f"grace period at {start:.3f}: {end - start:.3f} s; waited meanwhile:")
        for since, ran, task in waits:
            if ran - since > SLOW_WAIT_S and ran > start and since < end:
                print(f"  {task} woke {since - start:+.3f} ran {ran - start:+.3f}")
    rcu = sorted(ran - since for since, ran, task in waits if task.startswith("rcu_preempt"))
    if rcu:
        print(f"rcu_preempt: {len(rcu)} wake-ups, waits p50 {rcu[len(rcu) // 2] * 1e3:.1f} ms, "
              f"max {rcu[-1] * 1e3:.1f} ms")


if __name__ == "__main__":
    main(float(sys.argv[1]))
