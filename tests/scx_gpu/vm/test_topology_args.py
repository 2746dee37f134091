"""`scx-gpu vm run --topology`: parsing and the QEMU arguments (no VM)."""

import pytest

from scx_gpu.errors import UsageError
from scx_gpu.vm import topology as vt
from tests.helpers import assert_one_line_error, scx_gpu


def test_two_sockets_two_nodes_memory_split():
    topo = vt.parse("sockets=2,cores=2,threads=2")
    assert topo == vt.Topology(2, 2, 2) and topo.cpus == 8
    args = vt.qemu_args(topo, "1G")
    assert args[:4] == ["-smp", "8,sockets=2,cores=2,threads=2", "-m", "1024M"]
    assert args[4:] == [
        "-object", "memory-backend-ram,id=node0-mem,size=512M",
        "-numa", "node,nodeid=0,memdev=node0-mem", "-numa", "cpu,node-id=0,socket-id=0",
        "-object", "memory-backend-ram,id=node1-mem,size=512M",
        "-numa", "node,nodeid=1,memdev=node1-mem", "-numa", "cpu,node-id=1,socket-id=1"]


def test_uneven_memory_and_omitted_levels():
    topo = vt.parse("sockets=3")
    assert topo == vt.Topology(3, 1, 1)
    sizes = [a for a in vt.qemu_args(topo, "1000") if a.startswith("memory-backend")]
    assert [s.rsplit("=", 1)[1] for s in sizes] == ["333M", "333M", "334M"]


@pytest.mark.parametrize("spec", ["sockets=0", "cores=x", "nodes=2", "sockets", "sockets=65"])
def test_bad_topology(spec):
    with pytest.raises(UsageError, match="--topology"):
        vt.parse(spec)


@pytest.mark.parametrize("mem", ["1T", "0", "lots", "2M"])
def test_bad_memory_for_the_nodes(mem):
    with pytest.raises(UsageError, match="--mem"):
        vt.qemu_args(vt.parse("sockets=4"), mem)


def test_cli_rejects_a_topology_that_disagrees_with_cpus():
    proc = scx_gpu("vm", "run", "--cpus", "4", "--topology", "sockets=2,cores=2,threads=2",
                   "--", "true")
    assert_one_line_error(proc, 2, ["--cpus 4", "8 vCPUs"])


def test_cli_rejects_a_bad_topology_before_booting():
    assert_one_line_error(scx_gpu("vm", "run", "--topology", "sockets=two", "--", "true"), 2,
                          ["--topology"])
