"""The scheduler's view of the topology: each CPU's scheduling domain and
SMT sibling, as the read-only arrays it is loaded with.

A domain is an LLC (topology.llc_domains); a machine with more LLCs than the
scheduler has domains (intf.MAX_DOMS) gets one per NUMA node instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from scx_gpu.controlplane import intf
from scx_gpu.controlplane.topology import Cpu, format_cpulist, llc_domains
from scx_gpu.errors import UsageError

SMT_MODES = {"shared": intf.Smt.SHARED, "exclusive": intf.Smt.EXCLUSIVE}


@dataclass(frozen=True)
class Placement:
    nr_domains: int
    cpu_domain: tuple[int, ...]   # by CPU number, every possible CPU
    cpu_sibling: tuple[int, ...]  # by CPU number: its SMT sibling, itself when none

    def domain_cpus(self) -> list[tuple[int, ...]]:
        """The CPUs of each domain, in domain order."""
        return [tuple(c for c, d in enumerate(self.cpu_domain) if d == dom)
                for dom in range(self.nr_domains)]

    def describe(self) -> str:
        spans = " | ".join(format_cpulist(cpus) for cpus in self.domain_cpus())
        return f"{self.nr_domains} scheduling domain{'s' * (self.nr_domains != 1)}: {spans}"


def node_domains(cpus: list[Cpu]) -> dict[int, int]:
    """A dense domain number per NUMA node (CPUs without one share the last)."""
    nodes = sorted({c.node for c in cpus if c.node is not None})
    index = {node: i for i, node in enumerate(nodes)}
    return {c.cpu: index[c.node] if c.node is not None else len(nodes) for c in cpus}


def sched_domains(cpus: list[Cpu], max_domains: int = intf.MAX_DOMS) -> dict[int, int]:
    """Each CPU's domain: its LLC's, or its node's when LLCs outnumber max_domains."""
    domains = llc_domains(cpus)
    if len(set(domains.values())) <= max_domains:
        return domains
    domains = node_domains(cpus)
    if len(set(domains.values())) > max_domains:
        raise UsageError(f"{len(set(domains.values()))} NUMA nodes: the scheduler has at most "
                         f"{max_domains} domains")
    return domains


def smt_siblings(cpus: list[Cpu]) -> dict[int, int]:
    """Each CPU's SMT sibling (itself when it has none); --gpu-smt exclusive
    knows cores of two threads only."""
    siblings = {}
    for c in cpus:
        others = [s for s in c.siblings if s != c.cpu]
        if len(others) > 1:
            raise UsageError(f"--gpu-smt exclusive: CPU {c.cpu} shares its core with "
                             f"{len(others)} others; only two-thread cores are supported "
                             "(use --gpu-smt shared)")
        siblings[c.cpu] = others[0] if others else c.cpu
    return siblings


def placement(cpus: list[Cpu], smt: str = "shared") -> Placement:
    if len(cpus) > intf.MAX_CPUS:
        raise UsageError(f"{len(cpus)} possible CPUs: the scheduler handles at most "
                         f"{intf.MAX_CPUS}")
    domains = sched_domains(cpus)
    siblings = smt_siblings(cpus) if SMT_MODES[smt] == intf.Smt.EXCLUSIVE else {}
    size = max(c.cpu for c in cpus) + 1
    return Placement(len(set(domains.values())),
                     tuple(domains.get(cpu, 0) for cpu in range(size)),
                     tuple(siblings.get(cpu, cpu) for cpu in range(size)))

