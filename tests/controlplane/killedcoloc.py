"""A loader's co-location against fake cgroup and /proc/irq trees, held until killed:
`python -m tests.controlplane.killedcoloc STATE CGROUP_ROOT IRQ_ROOT BATCH GPU`.

Prints "ready" once everything is applied.
"""

import sys
import time
from pathlib import Path

from scx_gpu.controlplane import colocation, irqsteer
from scx_gpu.controlplane.config import Config

HOLD_S = 600.0
CONFIG = Config(batch_io_weight=10, batch_io_max=["8:0 wbps=1m"], batch_mem_high="64M",
                gpu_mem_low="max", irq_steer=True, irq_avoid_cpus="0", irq_patterns=["nvme*"])


def main() -> None:
    state, cgroup_root, irq_root, batch, gpu = map(Path, sys.argv[1:6])
    # The fake trees, as the test's monkeypatch sets them in its own process.
    vars(colocation).update(STATE=state, CGROUP_ROOT=cgroup_root)
    irqsteer.IRQ_ROOT = irq_root
    with colocation.applied(CONFIG, lambda line: None, [batch], [gpu]):
        print("ready", flush=True)
        time.sleep(HOLD_S)


if __name__ == "__main__":
    main()
