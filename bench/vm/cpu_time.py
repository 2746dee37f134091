"""Whose clock measures a share of the CPUs in the test VM.

Batch spinners (2 per vCPU) under `--quota 30` with no libcuda to probe,
then the same spinners under the stock scheduler held to 30% by the cpu
controller's cpu.max. Prints batch's share of all CPUs three ways: timed by
the spinners themselves (the sum of their clock-read gaps under 0.5 ms), by
their cgroup's CPU time (cpu.stat), and by the scheduler's own books.

Under sched_ext the VM's kernel charges tasks that run after an idle gap
with time they did not run: on 2026-11-29 the cgroup said 1.01 of all CPUs
(more than the machine has, with the rest idle) where the spinners timed
0.27 and the books 0.22-0.32; under stock and cpu.max all three agree
(docs/results/vm/README.md). The VM boots with tsc=unstable (its runner says
why), which puts sched_clock on its unstable path.

    scx-gpu vm run --copy bench/vm/cpu_time.py:/root/c.py -- python3 /root/c.py
"""
import json
import subprocess
import time

from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.cgroups import CGROUP_ROOT, cpu_seconds
from scx_gpu.controlplane.tiers import OWN_ROOT
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.workloads import program

SECONDS = 8
SPIN = [str(program("spinners")), "--threads", str(2 * NPROC), "--seconds", str(SECONDS)]


def books() -> float:
    return float(sc.status()["scx_gpu"]["totals"]["tiers"]["batch"]["runtime_s"])


def spun(cmd: list[str], cgroup_name: str, booked: bool) -> dict[str, float]:
    """Batch's share three ways while cmd runs the spinners in cgroup_name."""
    cgroup = CGROUP_ROOT / cgroup_name
    before, books0 = cpu_seconds(cgroup), books() if booked else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpus_s = SECONDS * NPROC
    shares = {"self_timed": json.loads(out)["ran_s"] / cpus_s,
              "cgroup": (cpu_seconds(cgroup) - before) / cpus_s}
    if booked:
        shares["books"] = (books() - books0) / cpus_s
    return shares


with sc.loaded("--quota", "30", cuda_lib=False):
    batch = str((OWN_ROOT / "batch").relative_to(CGROUP_ROOT))
    print(json.dumps({"case": "scx-gpu --quota 30", **spun(
        [*sc.SCX_GPU, "run", "--tier", "batch", "--", *SPIN], batch, True)}))

CAPPED = "scx-gpu-cpu-time"
(CGROUP_ROOT / CAPPED).mkdir(exist_ok=True)
(CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
(CGROUP_ROOT / CAPPED / "cpu.max").write_text(f"{30_000 * NPROC} 100000")
try:
    print(json.dumps({"case": "stock, cpu.max 30%", **spun(
        ["sh", "-c", f'echo $$ > {CGROUP_ROOT / CAPPED}/cgroup.procs && exec "$@"', "sh",
         *SPIN], CAPPED, False)}))
finally:
    time.sleep(0.5)
    (CGROUP_ROOT / CAPPED).rmdir()
