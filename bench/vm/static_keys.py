"""Whether the test VM survives live-patched kernel code, with no scheduler loaded.

Toggles a static key (default: /proc/sys/kernel/sched_schedstats, which
patches the fair class's hot paths) as fast as it can from vCPU 1 while a
sleeper on vCPU 0 leaves idle every 0.7 ms, for SECONDS; prints the number
of toggles. Each toggle live-patches code with int3 breakpoints; on real
hardware the kernel's int3 handler covers the window. Under QEMU 10.0's
multi-threaded TCG the guest panicked at 84 s of the first run on
2026-11-30 (`Oops: int3` in `update_se`), as the CI run of afa6d9a did at a
sched_ext key (`sched_tick`): stale translations, not the scheduler.

    scx-gpu vm run --copy bench/vm/static_keys.py:/root/k.py -- python3 /root/k.py 150
"""
import os
import subprocess
import sys
import time

DEFAULT_KEY = "/proc/sys/kernel/sched_schedstats"
SLEEPER = "import time\nwhile True: time.sleep(0.0007)"


def toggle(path: str, seconds: float) -> int:
    """Toggles done in `seconds`, on vCPU 1, with a sleeper waking on vCPU 0."""
    sleeper = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", SLEEPER])
    os.sched_setaffinity(0, {1})
    toggles = 0
    end = time.monotonic() + seconds
    try:
        with open(path, "w") as key:
            while time.monotonic() < end:
                os.pwrite(key.fileno(), b"1", 0)
                os.pwrite(key.fileno(), b"0", 0)
                toggles += 1
    finally:
        sleeper.kill()
    return toggles


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    path = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_KEY
    print(f"{toggle(path, seconds)} toggles of {path} in {seconds:g} s, no panic", flush=True)
