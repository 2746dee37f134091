"""The detector's cost on the torch workload alone, made
resolvable (run as root on the GPU machine; the kernel there has no
sched_ext, so the detector runs under `scx-gpu load --fallback mainline`).

Round 2 ran each setting as its own process, 3 reps: runs of one setting
spread by up to 2x. Two quieter measures here:

1. Per hit. The shipped launcher calls the stub libcuda's cuLaunchKernel in
   a tight loop (no CPU work, no GPU wait); its CPU time per launch (user +
   system: the uprobe's trap and BPF program included) without the loader,
   then with the detector attached all the time, HIT_REPS pairs interleaved.
   ns per hit: the median of the pairs' differences, with their range. Times
   launches per second gives the share of the launching thread's time the
   probes take, which is the share of tokens/s lost when that thread is the
   bottleneck (eager decoding).
2. End to end. One worker process decodes without pause and keeps every
   token's time; the harness switches the detector in windows, round-robin,
   ROUNDS times: stock (no loader), always (the loader with a window as long
   as its period, an hour: attached without a break), duty-cycled (the
   default 100 ms a second). A window's tokens/s is divided by the same
   round's stock window's; per setting: the median of those ratios and their
   range. The loader's start is not measured: a window opens once the
   loader has written its run state, plus SETTLE_S.

    python3 bench/gpu/detector_windows.py OUT.json [torch|stub] [ROUNDS]
(stub: a Python worker launching through the stub libcuda, for a dry run
without a GPU.)
"""

import argparse
import contextlib
import ctypes
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scx_gpu.controlplane.runstate import RUN_STATE, run_state
from scx_gpu.workloads import json_report, program

WINDOW_S, SETTLE_S = 5.0, 1.0
HIT_REPS, HIT_S, HIT_BATCH = 7, 2.0, 1000
TORCH_LAUNCHES_PER_TOKEN = 173.0  # the tracer's count on the H200, equal to PyTorch's profiler's
STUB_LAUNCHES_PER_TOKEN = 173
ALWAYS = ("--detect-window-ms", "3600000", "--detect-period-ms", "3600000")
DUTY = ("--detect-window-ms", "100", "--detect-period-ms", "1000")
SETTINGS = {"stock": None, "always": ALWAYS, "duty-cycled": DUTY}


def _stub_step() -> Any:
    lib = ctypes.CDLL(str(program("libcuda.so.1")))
    launch = lib.cuLaunchKernel

    def one() -> None:
        for _ in range(STUB_LAUNCHES_PER_TOKEN):
            launch(None, 1, 1, 1, 1, 1, 1, 0, None, None, None)
    return one


def worker(kind: str, out: Path) -> None:
    """Decode (or stub-launch) until SIGTERM, then write the token times."""
    times: list[float] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mode: Any = contextlib.nullcontext()
    if kind == "torch":
        import torch

        mode = torch.inference_mode()
    with mode:
        if kind == "torch":
            from bench.gpu.mechanisms import _torch_step

            step = _torch_step()
        else:
            step = _stub_step()
        for _ in range(3):
            step()
        print(f"ready {threading.get_native_id()}", flush=True)
        while not stop.is_set():
            step()
            times.append(time.monotonic())
    out.write_text(json.dumps(times))


class Loader:
    """`scx-gpu load --fallback mainline` with some detector flags, while in use."""

    def __init__(self, flags: tuple[str, ...], cuda_lib: Path | None) -> None:
        lib = ("--cuda-lib", str(cuda_lib)) if cuda_lib else ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scx_gpu", "load", "--fallback", "mainline", "--quiet",
             *lib, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while run_state().get("pid") != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"scx-gpu load did not start: {self.proc.stderr.read()}"
                                 if self.proc.stderr else "scx-gpu load did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while RUN_STATE.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _cpu_ns_per_launch() -> float:
    """CPU ns per launch of one launcher thread that only launches."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [str(program("launcher")), "--cuda-lib", str(program("libcuda.so.1")), "--duration",
         str(HIT_S), "--work-us", "0", "--gpu-wait-us", "0", "--launches", str(HIT_BATCH)],
        capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json_report(out)
    if report is None:
        raise SystemExit(f"launcher printed no report: {out!r}")
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return 1e9 * cpu_s / float(sum(report["thread_launches"]))


def per_hit(reps: int) -> dict[str, Any]:
    bare, probed = [], []
    for _ in range(reps):
        bare.append(_cpu_ns_per_launch())
        loader = Loader(ALWAYS, program("libcuda.so.1"))
        try:
            time.sleep(SETTLE_S)  # the first window opens on the loader's next tick
            probed.append(_cpu_ns_per_launch())
        finally:
            loader.stop()
    diffs = [b - a for a, b in zip(bare, probed, strict=True)]
    return {"reps": reps, "seconds": HIT_S, "bare_ns_per_launch": bare,
            "detector_ns_per_launch": probed, "ns_per_hit_by_pair": diffs,
            "ns_per_hit": statistics.median(diffs), "ns_per_hit_range": [min(diffs), max(diffs)]}


def windows(kind: str, rounds: int) -> dict[str, Any]:
    times_file = Path(f"/tmp/detector-windows-{kind}.json")
    work = subprocess.Popen([sys.executable, __file__, "worker", kind, str(times_file)],
                            stdout=subprocess.PIPE, text=True)
    assert work.stdout is not None
    line = work.stdout.readline()
    if not line.startswith("ready"):
        raise SystemExit(f"worker failed: {line!r}")
    tid = int(line.split()[1])
    lib = program("libcuda.so.1") if kind == "stub" else None
    spans: list[tuple[str, float, float, int]] = []
    try:
        for _ in range(rounds):
            for setting, flags in SETTINGS.items():
                loader = Loader(flags, lib) if flags else None
                try:
                    time.sleep(SETTLE_S)
                    start = time.monotonic()
                    time.sleep(WINDOW_S)
                    spans.append((setting, start, time.monotonic(),
                                  os.getpriority(os.PRIO_PROCESS, tid)))
                finally:
                    if loader:
                        loader.stop()
    finally:
        work.send_signal(signal.SIGTERM)
        work.wait(timeout=120)
    times = json.loads(times_file.read_text())
    rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
    nices: dict[str, list[int]] = {s: [] for s in SETTINGS}
    for setting, start, end, nice in spans:
        rates[setting].append(sum(1 for t in times if start <= t < end) / (end - start))
        nices[setting].append(nice)
    result: dict[str, Any] = {"kind": kind, "rounds": rounds, "window_s": WINDOW_S,
                              "settle_s": SETTLE_S, "settings": {}}
    for setting in SETTINGS:
        ratios = [a / b for a, b in zip(rates[setting], rates["stock"], strict=True)]
        result["settings"][setting] = {
            "tokens_per_s": rates[setting],
            "median_tokens_per_s": statistics.median(rates[setting]),
            "launcher_nice_at_window_end": nices[setting], "vs_stock_by_round": ratios,
            "vs_stock": statistics.median(ratios), "vs_stock_range": [min(ratios), max(ratios)]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("kind", nargs="?", choices=("torch", "stub"), default="torch")
    parser.add_argument("rounds", nargs="?", type=int, default=6)
    args = parser.parse_args()
    result: dict[str, Any] = {"per_hit": per_hit(HIT_REPS)}
    print(f"per hit: {result['per_hit']['ns_per_hit']:.0f} ns "
          f"(pairs {', '.join(f'{d:.0f}' for d in result['per_hit']['ns_per_hit_by_pair'])})",
          flush=True)
    result["windows"] = windows(args.kind, args.rounds)
    per_token = TORCH_LAUNCHES_PER_TOKEN if args.kind == "torch" else STUB_LAUNCHES_PER_TOKEN
    stock = result["windows"]["settings"]["stock"]["median_tokens_per_s"]
    hits_per_s = per_token * stock
    result["launches_per_token"] = per_token
    result["stock_launches_per_s"] = hits_per_s
    ns_per_hit = result["per_hit"]["ns_per_hit"]
    result["always_cost_pct_from_per_hit"] = 100 * hits_per_s * ns_per_hit / 1e9
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{args.kind}: stock {stock:.1f} tokens/s = {hits_per_s:,.0f} launches/s; "
          f"always-attached cost from the per-hit figure: "
          f"{result['always_cost_pct_from_per_hit']:.2f}%")
    for name, row in result["windows"]["settings"].items():
        low, high = row["vs_stock_range"]
        print(f"  {name:12s} median {row['median_tokens_per_s']:8.1f} tokens/s, vs stock "
              f"{row['vs_stock']:.3f} (range {low:.3f}-{high:.3f}), launcher nice "
              f"{row['launcher_nice_at_window_end']}")


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
