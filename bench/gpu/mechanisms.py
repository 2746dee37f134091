"""Which mainline mechanism brings a launch-bound job beside
undeclared CPU hogs up to SCHED_IDLE hogs' tokens/s (run as root on the GPU machine).

One workload process decodes without pause (the torch decoder, or the
transformers model's generate()) and keeps every token's time; 2 x CPUs hogs
(the bench's built-in cpu noise) run beside it, LAYOUT `own`: in their own
cgroup below the root, as the bench's noise does (with the root's cpu
controller on, that cgroup competes as one entity), or `shared`: in a child
of the workload's cgroup without the cpu controller, so they compete with the
launching thread task by task. Every WINDOW_S the settings switch,
round-robin, ROUNDS times, so drift hits all alike. Per setting: tokens/s
(first SETTLE_S of each window dropped), its ratio to batch-idle's in the same
round, the hogs' share of all CPUs, and how late a sleeper at the fallback's
GPU_NICE (where it runs the control plane) woke from 100 ms sleeps. Settings:

  alone       the hogs frozen (cgroup.freeze)
  stock       hogs and launcher as started, the root's cpu controller as found
  batch-idle  the hogs SCHED_IDLE, their cgroup cpu.idle=1 where the controller runs
  cg-only     the root's cpu controller on (as the fallback turns it on), nothing else
              (layout own only)
  nice-10     that, and the launching thread at nice -10
  nice-20     that, at nice -20
(SCHED_RR for the launching thread was refused there, EPERM: RT group
scheduling gives cgroups no RT time, so the fallback cannot use it.)

    python3 bench/gpu/mechanisms.py torch|hf OUT.json [ROUNDS] [own|shared]
"""

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path("/sys/fs/cgroup")
WINDOW_S, SETTLE_S, SLEEP_S = 2.0, 0.4, 0.1
SETTINGS = ("alone", "stock", "batch-idle", "cg-only", "nice-10", "nice-20")
HOGS = ROOT / "scx-gpu-explore-hogs"  # the layout's choice, set by main()


def worker(kind: str, out: Path) -> None:
    """Decode until SIGTERM, then write the token times."""
    import torch

    times: list[float] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with torch.inference_mode():
        step = _torch_step() if kind == "torch" else _hf_step(times)
        for _ in range(3):
            step()
        times.clear()
        print(f"ready {threading.get_native_id()}", flush=True)
        while not stop.is_set():
            step()
            if kind == "torch":
                times.append(time.monotonic())
    out.write_text(json.dumps(times))


def _torch_step() -> Any:
    from scx_gpu.workloads import torch_decode as td

    args = argparse.Namespace(layers=12, dim=1024, heads=16, vocab=32000, context=1024,
                              dtype="bf16", mode="eager")
    model, token, pos = td._build(args)
    step = td._stepper(args, model, token, pos)

    def one() -> None:
        step()
        token.item()
    return one


def _hf_step(times: list[float]) -> Any:
    import torch

    from bench.gpu import hf_generate as hf

    args = argparse.Namespace(layers=12, dim=1024, heads=16, vocab=32000)
    model = hf.build(args)
    prompt = torch.randint(1, args.vocab, (1, 16), device="cuda")

    class Stamp:
        def __init__(self) -> None:
            self.first = True

        def put(self, value: Any) -> None:
            if not self.first:  # the first put is the prompt
                times.append(time.monotonic())
            self.first = False

        def end(self) -> None:
            pass

    return lambda: model.generate(prompt, max_new_tokens=32, streamer=Stamp())


def _write(path: Path, value: str) -> str | None:
    try:
        path.write_text(value)
        return None
    except OSError as err:
        return f"{path} <- {value}: {err}"


class Knobs:
    def __init__(self, launcher: int, hog_pids: list[int]) -> None:
        self.launcher, self.hogs = launcher, hog_pids
        self.cpu_found = "cpu" in (ROOT / "cgroup.subtree_control").read_text().split()
        self.errors: list[str] = []

    def _controller(self, on: bool) -> None:
        now = "cpu" in (ROOT / "cgroup.subtree_control").read_text().split()
        if now != on:
            err = _write(ROOT / "cgroup.subtree_control", "+cpu" if on else "-cpu")
            if err:
                self.errors.append(err)

    def _hogs_idle(self, idle: bool) -> None:
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        for pid in self.hogs:
            os.sched_setscheduler(pid, policy, os.sched_param(0))
        if (HOGS / "cpu.idle").is_file():
            _write(HOGS / "cpu.idle", "1" if idle else "0")

    def _launcher(self, nice: int) -> None:
        os.setpriority(os.PRIO_PROCESS, self.launcher, nice)

    def apply(self, setting: str) -> None:
        _write(HOGS / "cgroup.freeze", "1" if setting == "alone" else "0")
        self._hogs_idle(False)
        self._launcher(0)
        self._controller(self.cpu_found if setting in ("alone", "stock", "batch-idle")
                         else True)
        if setting == "batch-idle":
            self._hogs_idle(True)
        elif setting in ("nice-10", "nice-20"):
            self._launcher(int(setting[4:]))


def _hog_cpu_s() -> float:
    for line in (HOGS / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "usage_usec":
            return int(value) / 1e6
    return 0.0


class Sleeper(threading.Thread):
    """A stand-in for the control plane: 100 ms sleeps at nice -10; lateness kept."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.late: list[tuple[float, float]] = []

    def run(self) -> None:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # not the harness's FIFO
        from scx_gpu.controlplane.fallback import GPU_NICE

        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), GPU_NICE)
        while True:
            start = time.monotonic()
            time.sleep(SLEEP_S)
            woke = time.monotonic()
            self.late.append((woke, woke - start - SLEEP_S))


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    layout = sys.argv[4] if len(sys.argv) > 4 else "own"
    global HOGS
    if layout == "shared":
        own = Path(f"/proc/{os.getpid()}/cgroup").read_text().strip().split("::", 1)[1]
        HOGS = ROOT / own.lstrip("/") / "scx-gpu-explore-hogs"
    settings = [s for s in SETTINGS if layout == "own" or s != "cg-only"]
    ncpu = os.cpu_count() or 1
    with contextlib.suppress(OSError):  # switch windows on time, where RT is allowed
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    times_file = Path(f"/tmp/mechanisms-{kind}.json")
    work = subprocess.Popen([sys.executable, __file__, "worker", kind, str(times_file)],
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.sched_setscheduler(
                                0, os.SCHED_OTHER, os.sched_param(0)))
    assert work.stdout is not None
    line = work.stdout.readline()
    if not line.startswith("ready"):
        raise SystemExit(f"worker failed: {line!r}")
    launcher = int(line.split()[1])
    HOGS.mkdir(exist_ok=True)
    hogs = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {HOGS}/cgroup.procs && exec "$@"', "sh",
         sys.executable, "-m", "scx_gpu.bench.noisegen", "cpu", "--workers", str(2 * ncpu)],
        preexec_fn=lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)))
    while len((HOGS / "cgroup.procs").read_text().split()) < 2 * ncpu + 1:
        time.sleep(0.05)
    knobs = Knobs(launcher, [int(p) for p in (HOGS / "cgroup.procs").read_text().split()])
    sleeper = Sleeper()
    sleeper.start()
    windows = []
    try:
        for _ in range(rounds):
            for setting in settings:
                knobs.apply(setting)
                start, cpu0 = time.monotonic(), _hog_cpu_s()
                time.sleep(WINDOW_S)
                windows.append((setting, start, time.monotonic(),
                                (_hog_cpu_s() - cpu0) / (WINDOW_S * ncpu)))
    finally:
        knobs.apply("stock")
        _write(HOGS / "cgroup.kill", "1")
        hogs.wait()
        work.send_signal(signal.SIGTERM)
        work.wait(timeout=120)
    times = json.loads(times_file.read_text())
    result: dict[str, Any] = {"kind": kind, "layout": layout, "hogs_cgroup": str(HOGS),
                              "rounds": rounds, "window_s": WINDOW_S,
                              "settle_s": SETTLE_S, "hogs": 2 * ncpu,
                              "cpu_controller_found": knobs.cpu_found,
                              "errors": knobs.errors, "settings": {}}
    for setting in settings:
        rates, shares, late = [], [], []
        for name, start, end, share in windows:
            if name != setting:
                continue
            n = sum(1 for t in times if start + SETTLE_S <= t < end)
            rates.append(n / (end - start - SETTLE_S))
            shares.append(share)
            late += [lag for woke, lag in sleeper.late if start + SETTLE_S <= woke < end]
        result["settings"][setting] = {
            "tokens_per_s": rates, "mean": statistics.mean(rates),
            "hog_cpu_share": statistics.mean(shares),
            "sleeper_late_ms_p99": 1e3 * sorted(late)[int(0.99 * (len(late) - 1))]
            if late else None,
            "sleeper_late_ms_max": 1e3 * max(late) if late else None}
    ref = result["settings"]["batch-idle"]["tokens_per_s"]
    for row in result["settings"].values():
        ratios = [a / b for a, b in zip(row["tokens_per_s"], ref, strict=True)]
        row["vs_batch_idle_by_round"] = ratios
        row["vs_batch_idle"] = statistics.median(ratios)
    out.write_text(json.dumps(result, indent=2))
    print(f"{kind} ({layout}): setting, tokens/s mean, vs batch-idle (median of rounds),"
          " hog CPU share, sleeper late p99/max ms")
    for name, row in result["settings"].items():
        print(f"  {name:10s} {row['mean']:8.1f} {row['vs_batch_idle']:6.3f} "
              f"{row['hog_cpu_share']:6.3f} {row['sleeper_late_ms_p99']} "
              f"{row['sleeper_late_ms_max']}")


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
