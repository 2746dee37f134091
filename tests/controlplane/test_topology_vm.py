"""The topology module reads the test VM's emulated two-socket topology.

It boots its own VM (the session's shared VM has 2 flat vCPUs): 8 vCPUs as
2 sockets x 2 cores x 2 threads, a NUMA node per socket; about 15 s.
"""

import json

import pytest

from tests.helpers import scx_gpu

pytestmark = [pytest.mark.vm(host=True), pytest.mark.root]

TOPOLOGY = "sockets=2,cores=2,threads=2"
READ = ("import json; from dataclasses import asdict; "
        "from scx_gpu.controlplane import topology as t; cpus = t.read_cpus(); "
        "print('TOPOLOGY', json.dumps({'cpus': [asdict(c) for c in cpus], "
        "'domains': t.llc_domains(cpus)}))")


def test_reads_two_nodes_two_llcs_and_smt_pairs_in_the_vm():
    proc = scx_gpu("vm", "run", "--topology", TOPOLOGY, "--timeout", "300", "--",
                   "python3", "-c", READ)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("TOPOLOGY ")]
    assert len(lines) == 1, proc.stdout
    read = json.loads(lines[0].removeprefix("TOPOLOGY "))
    print(json.dumps(read))
    cpus = read["cpus"]
    assert [c["cpu"] for c in cpus] == list(range(8)) and all(c["online"] for c in cpus), cpus
    assert [c["node"] for c in cpus] == [0] * 4 + [1] * 4, cpus
    assert [c["llc"] for c in cpus] == [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4, cpus
    assert all(c["llc_level"] == 3 for c in cpus), cpus
    assert [c["siblings"] for c in cpus] == [[c - c % 2, c - c % 2 + 1] for c in range(8)], cpus
    assert read["domains"] == {str(c): c // 4 for c in range(8)}, read["domains"]
