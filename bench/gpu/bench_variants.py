"""`scx-gpu bench` with policies that take the fallback's renice apart, to
see which of its parts brings the gain (run as root on the GPU machine, like `scx-gpu bench`).

    python3 bench/gpu/bench_variants.py bench run --policy ... (scx-gpu's arguments)

Beside the bench's own policies (stock, batch-idle, gpu-nice: nice -20 on
the whole workload from its start, fallback-undeclared: launching threads
reniced to -10 once the detector sees them launch):

  nice-10             the whole workload at nice -10 from its start: what the
                      fallback's renice gives with no detection and no delay
  fallback-process    the fallback tagging and renicing the launcher's whole
                      process (--scope process) instead of the launching thread
  fallback-always     the fallback with its launch probes attached all the time
                      (window = period), so tags never wait for a window
"""

from scx_gpu import cli
from scx_gpu.bench import policies
from scx_gpu.bench.policies import MAINLINE, Policy

EXTRA = (
    Policy("nice-10", prefix=("nice", "-n", "-10")),
    Policy("fallback-process", scheduler=(*MAINLINE, "--scope", "process")),
    Policy("fallback-always", scheduler=(*MAINLINE, "--detect-window-ms", "1000",
                                         "--detect-period-ms", "1000")),
)

if __name__ == "__main__":
    policies.POLICIES.update({p.name: p for p in EXTRA})
    cli.main()
