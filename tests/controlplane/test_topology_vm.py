"""The topology module reads the test VM's emulated two-socket topology: 8
vCPUs as 2 sockets x 2 cores x 2 threads, a NUMA node per socket (in the boot
of the scheduler's domain tests)."""

import json
from dataclasses import asdict

import pytest

from scx_gpu.controlplane import topology

pytestmark = [pytest.mark.vm(topology="sockets=2,cores=2,threads=2"), pytest.mark.root]


def test_reads_two_nodes_two_llcs_and_smt_pairs_in_the_vm():
    read = topology.read_cpus()
    cpus, domains = [asdict(c) for c in read], topology.llc_domains(read)
    print(json.dumps({"cpus": cpus, "domains": domains}))
    assert [c["cpu"] for c in cpus] == list(range(8)) and all(c["online"] for c in cpus), cpus
    assert [c["node"] for c in cpus] == [0] * 4 + [1] * 4, cpus
    assert [c["llc"] for c in cpus] == [(0, 1, 2, 3)] * 4 + [(4, 5, 6, 7)] * 4, cpus
    assert all(c["llc_level"] == 3 for c in cpus), cpus
    assert [c["siblings"] for c in cpus] == [(c - c % 2, c - c % 2 + 1) for c in range(8)], cpus
    assert domains == {c: c // 4 for c in range(8)}, domains
