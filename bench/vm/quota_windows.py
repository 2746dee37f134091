"""The batch quota against the detector's windows, in the test VM.

Batch hogs under `--quota 30` with the default detector windows, with rare
windows (`--detect-period-ms 5000`) and with no libcuda to probe; prints
batch's share of all CPUs in each case. On 2026-11-29 (main at 0ca9d9c):
0.32, 0.59-0.64 and 0.71-0.77: the quota holds only while per-entry-point
windows keep the control plane busy (docs/results/vm/README.md).

    scx-gpu vm run --copy bench/vm/quota_windows.py:/root/q.py -- python3 /root/q.py
"""
import json
import time

from scx_gpu.bench import noise
from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.cgroups import cpu_seconds
from scx_gpu.controlplane.tiers import OWN_ROOT
from scx_gpu.controlplane.topology import NPROC


def share(seconds: float) -> float:
    cg = OWN_ROOT / "batch"
    before, start = cpu_seconds(cg), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(cg) - before) / ((time.monotonic() - start) * NPROC)


for name, extra in [("default", []), ("period 5 s", ["--detect-period-ms", "5000"]),
                    ("no cuda lib", None)]:
    args = ["--quota", "30", *(extra or [])]
    with sc.loaded(*args, cuda_lib=extra is not None), noise.hogs(2 * NPROC, tier="batch"):
        got = [share(4) for _ in range(2)]
        hits = sc.status()["scx_gpu"]["totals"]
    keep = ("detector_hits", "batch_throttled_ms", "floor_dispatches", "slice_kicks",
            "classifications", "cpu_mismatches")
    print(json.dumps({"case": name, "share": got, **{k: hits[k] for k in keep},
                      "batch_runs": hits["tiers"]["batch"]["runs"],
                      "gpu_runs": hits["tiers"]["gpu"]["runs"]}), flush=True)
