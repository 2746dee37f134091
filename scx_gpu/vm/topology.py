"""An emulated CPU topology for the test VM: sockets, cores, threads, and
one NUMA node per socket (as on a two-socket GPU server), as QEMU arguments.

QEMU gives each socket its own L3 (its default L3 is shared per die, and a
socket holds one die), so the guest sees one LLC per node.
"""

import re
from dataclasses import dataclass

from scx_gpu.errors import UsageError

LEVELS = ("sockets", "cores", "threads")
MEM_UNITS = {"M": 1, "G": 1024}
MAX_CPUS = 64


@dataclass(frozen=True)
class Topology:
    sockets: int
    cores: int    # per socket
    threads: int  # per core

    @property
    def cpus(self) -> int:
        return self.sockets * self.cores * self.threads


def parse(spec: str) -> Topology:
    """sockets=S,cores=C,threads=T (each omitted level is 1)."""
    counts = dict.fromkeys(LEVELS, 1)
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key not in LEVELS or not value.isdigit() or int(value) < 1:
            raise UsageError(f"--topology {spec}: expected sockets=S,cores=C,threads=T "
                             f"with counts of at least 1, got {part!r}")
        counts[key] = int(value)
    topo = Topology(**counts)
    if topo.cpus > MAX_CPUS:
        raise UsageError(f"--topology {spec}: {topo.cpus} vCPUs, at most {MAX_CPUS}")
    return topo


def mem_mib(mem: str) -> int:
    """QEMU's memory size (a number with an M or G suffix; plain: MiB) in MiB."""
    match = re.fullmatch(r"(\d+)([MG]?)", mem.strip().upper())
    if not match or int(match[1]) == 0:
        raise UsageError(f"--mem {mem}: expected a size such as 1G or 1536M")
    return int(match[1]) * MEM_UNITS.get(match[2], 1)


def qemu_args(topo: Topology, mem: str) -> list[str]:
    """-smp with the topology, and a NUMA node per socket owning its CPUs and
    an equal share of the memory (the last node takes the remainder)."""
    total = mem_mib(mem)
    share = total // topo.sockets
    if share < 1:
        raise UsageError(f"--mem {mem}: too little memory for {topo.sockets} NUMA nodes")
    args = ["-smp", f"{topo.cpus},sockets={topo.sockets},cores={topo.cores},"
                    f"threads={topo.threads}", "-m", f"{total}M"]
    for node in range(topo.sockets):
        size = share if node < topo.sockets - 1 else total - share * (topo.sockets - 1)
        args += ["-object", f"memory-backend-ram,id=node{node}-mem,size={size}M",
                 "-numa", f"node,nodeid={node},memdev=node{node}-mem",
                 "-numa", f"cpu,node-id={node},socket-id={node}"]
    return args
