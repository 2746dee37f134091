"""Issue 18 item 3 on real GPUs: which /dev/nvidiaN files a CUDA process holds
open, and the locality controlplane.topology reads for them, against what
nvidia-smi says. Run as root from the repository on the lent machine:
    PYTHONPATH=$PWD python3 bench/gpu/gpu_map.py $OUT/gpu-map.json
One holder process per case (a tensor on one device, then asleep); each case
records every /dev/nvidia* file it holds and maps, the minors topology.used_gpu_minors
finds, the GPUs and local CPUs it maps them to, and the driver's own view.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from scx_gpu.controlplane import topology

HOLD = ("import sys, time, torch\n"
        "x = [torch.ones(1, device=d) for d in sys.argv[1].split(',')]; torch.cuda.init()\n"
        "print('ready', flush=True); time.sleep(600)\n")


def _smi(*args: str) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True,
                          check=False).stdout


def _driver_view() -> dict[str, Any]:
    """The driver's files and sysfs, raw, for each GPU it knows."""
    gpus = {}
    for entry in sorted(Path("/proc/driver/nvidia/gpus").glob("*")):
        info = (entry / "information").read_text()
        device = Path("/sys/bus/pci/devices") / entry.name.lower()
        gpus[entry.name] = {
            "information": info,
            "numa_node": (device / "numa_node").read_text().strip(),
            "local_cpulist": (device / "local_cpulist").read_text().strip(),
        }
    return gpus


def _held(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/dev/nvidia"):
            targets.add(target)
    return sorted(targets)


def _mapped(pid: int) -> list[str]:
    """The process's mappings of /dev/nvidiaN files (not nvidiactl or nvidia-uvm)."""
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if topology.GPU_DEVICE.search(line)]


def _case(device: str, env: dict[str, str], cpus: list[topology.Cpu]) -> dict[str, Any]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, device], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, **env})
    try:
        assert holder.stdout is not None
        ready = holder.stdout.readline().strip() == "ready"
        gpus = topology.process_gpus(holder.pid)
        return {"device": device, "env": env, "ready": ready, "held": _held(holder.pid),
                "mapped": _mapped(holder.pid),
                "minors": list(topology.used_gpu_minors(holder.pid)),
                "gpus": [vars(g) for g in gpus], "local_cpus": list(topology.gpu_cpus(gpus, cpus))}
    finally:
        holder.kill()
        holder.wait()


def main(out: Path) -> None:
    cpus = topology.read_cpus()
    known = topology.read_gpus()
    cases: list[tuple[str, dict[str, str]]] = [("cuda:0", {})]
    if len(known) > 1:
        cases += [("cuda:1", {}), ("cuda:0", {"CUDA_VISIBLE_DEVICES": "1"})]
        cases.append(("cuda:0,cuda:1", {}))
    cases.append(("cpu", {}))  # the driver initialised, no device used
    report = {
        "smi_query": _smi("--query-gpu=index,pci.bus_id,name", "--format=csv,noheader"),
        "smi_minor": [line.strip() for line in _smi("-q").splitlines()
                      if "Minor Number" in line or "Bus Id" in line],
        "smi_topo": _smi("topo", "-m"),
        "driver": _driver_view(),
        "read_gpus": {m: vars(g) for m, g in known.items()},
        "cpus": len(cpus), "nodes": sorted({c.node for c in cpus if c.node is not None}),
        "cases": [_case(device, env, cpus) for device, env in cases],
    }
    out.write_text(json.dumps(report, indent=1, default=list))
    print(json.dumps(report["cases"], indent=1, default=list))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
