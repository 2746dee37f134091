"""How long after a launcher starts the mainline fallback
renices it (run as root on any host: the stub libcuda and launcher).

`scx-gpu load --fallback mainline` (nothing declared) runs beside HOGS busy
loops at nice 0; RUNS times, after a random pause of up to a second (so the
start falls anywhere in the detector's duty cycle), the synthetic launcher
starts (launching from a thread of its own) and its threads' nice is read
every 5 ms until one is at the fallback's GPU_NICE. Prints each lag and a
JSON summary (median, max, none missed).

    python3 bench/gpu/renice_lag.py RUNS HOGS [scx-gpu load arguments]
"""

import json
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane import fallback, runstate
from scx_gpu.workloads import program

LAUNCHER, STUB = str(program("launcher")), str(program("libcuda.so.1"))
GIVE_UP_S, POLL_S = 8.0, 0.005


def reniced(pid: int) -> bool:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[16]) == fallback.GPU_NICE:
            return True
    return False


def lag_once() -> float | None:
    """Seconds from the launcher's start to its renice; None if not within GIVE_UP_S."""
    launcher = subprocess.Popen([LAUNCHER, "--cuda-lib", STUB, "--duration", str(GIVE_UP_S),
                                 "--work-us", "100"], stdout=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while time.monotonic() - start < GIVE_UP_S:
            if reniced(launcher.pid):
                return time.monotonic() - start
            time.sleep(POLL_S)
        return None
    finally:
        launcher.kill()
        launcher.wait()


def main() -> None:
    runs, hogs, load_args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    plane = subprocess.Popen([*sc.SCX_GPU, "load", "--fallback", "mainline", "--quiet",
                              "--cuda-lib", STUB, *load_args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    lags: list[float | None] = []
    try:
        sc.wait_for(lambda: runstate.run_state().get("mode") == runstate.FALLBACK_MODE
                    or plane.poll() is not None, 60, "the fallback to start")
        for _ in range(runs):
            time.sleep(random.random())
            lags.append(lag_once())
            print(f"lag {lags[-1]}", flush=True)
    finally:
        plane.send_signal(signal.SIGTERM)
        plane.wait(timeout=30)
        for hog in busy:
            hog.kill()
    seen = [lag for lag in lags if lag is not None]
    print(json.dumps({"runs": runs, "hogs": hogs, "load_args": load_args,
                      "median_s": statistics.median(seen) if seen else None,
                      "max_s": max(seen, default=None), "missed": lags.count(None)}))


if __name__ == "__main__":
    main()
