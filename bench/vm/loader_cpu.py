"""Where gpu-first's cost goes in the test VM: the control plane's CPU, and
the slice timer's cost to batch.

loader: the synthetic launcher alone (as bench-sched's "alone" cells) under
`fair` and under gpu-first; prints its tokens/s and the CPU the loader
itself took (utime + stime of its process), in % of one vCPU. The loader
runs in the gpu tier under gpu-first, so its CPU comes out of the
launcher's. On 2026-12-03 (the build machine, 3 reps of 12 s): fair
2.2-3.5%, gpu-first 5.2-7.0%; after the loop's cuts (docs/reference.md,
the detector's cost) fair 0.4%, gpu-first 2.9-4.4%.

batch: only spinners (2 per vCPU), declared batch, under gpu-first (2 ms
batch slices, which arm the 0.5 ms slice timer), under a 5 ms batch slice
(no timer), and SCHED_IDLE spinners under stock; prints the spinners' own
share of all CPUs (the quota is 50%). On 2026-12-03: 31-44%, 47-51%, 85-91%.

    scx-gpu vm run --timeout 1200 --copy bench/vm/loader_cpu.py:/root/l.py -- \\
        sh -c 'exec $(head -1 $(command -v scx-gpu) | cut -c3-) /root/l.py loader 3'
"""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from scx_gpu.bench import matrix, noise, workloads
from scx_gpu.bench.policies import POLICIES, Policy
from scx_gpu.controlplane.runstate import run_state
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.workloads import json_report

SECONDS = 12.0
LONG_BATCH_SLICE = Path("/tmp/scx-gpu-batch-slice-5ms.toml")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader(rep: int) -> None:
    launcher = workloads.synthetic(SECONDS)
    for name in ("fair", "scx-gpu-undeclared"):
        with matrix.scheduled(POLICIES[name], launcher.cuda_libs):
            pid = int(run_state()["pid"])
            start, children, loader_s = time.monotonic(), children_cpu_s(), cpu_s(pid)
            out = subprocess.run(launcher.argv, capture_output=True, text=True,
                                 check=True).stdout
            took = time.monotonic() - start
            loader_pct = 100 * (cpu_s(pid) - loader_s) / took
            launcher_pct = 100 * (children_cpu_s() - children) / took
        report = json_report(out) or {}
        print(json.dumps({"policy": name, "rep": rep, "tokens_per_s": report.get("tokens_per_s"),
                          "loader_cpu_pct": loader_pct, "launcher_cpu_pct": launcher_pct}),
              flush=True)


def batch(rep: int) -> None:
    LONG_BATCH_SLICE.write_text("batch_slice_us = 5000\n")
    policies = [POLICIES["scx-gpu"], POLICIES["batch-idle"],
                Policy("scx-gpu, 5 ms batch slices", scheduler=("--config", str(LONG_BATCH_SLICE)),
                       declare_noise=True)]
    for policy in policies:
        noise.prepare()  # --batch-cgroup needs it before the scheduler loads
        with matrix.scheduled(policy, []), noise.running("spin", policy.noise_idle, 2 * NPROC):
            start, spun = time.monotonic(), noise.cpu_seconds("spin")
            time.sleep(SECONDS)
            share = (noise.cpu_seconds("spin") - spun) / ((time.monotonic() - start) * NPROC)
        print(json.dumps({"policy": policy.name, "rep": rep, "spinners_cpu_pct": 100 * share}),
              flush=True)


if __name__ == "__main__":
    measure = {"loader": loader, "batch": batch}[sys.argv[1]]
    for rep in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3):
        measure(rep)
