"""Each CPU's scheduling domain and SMT sibling, from fake /sys trees."""

from pathlib import Path

import pytest

from scx_gpu.controlplane import placement as pl
from scx_gpu.controlplane import topology as tp
from scx_gpu.errors import UsageError
from tests.controlplane.test_topology import _cache, _cpu, _machine, two_sockets


def _server(root: Path, sockets: int, cores: int, llcs_per_socket: int = 1,
            threads: int = 2) -> None:
    """CPUs numbered as Linux numbers a real server: each core's first thread
    first (0 .. sockets*cores-1), then its second threads; a node per socket."""
    first = sockets * cores
    cpu_of = {(s, c, t): t * first + s * cores + c
              for s in range(sockets) for c in range(cores) for t in range(threads)}
    nodes = {s: ",".join(str(cpu_of[s, c, t]) for c in range(cores) for t in range(threads))
             for s in range(sockets)}
    _machine(root, f"0-{first * threads - 1}", f"0-{first * threads - 1}", nodes)
    per_llc = cores // llcs_per_socket
    for (s, c, _t), cpu in cpu_of.items():
        _cpu(root, cpu, ",".join(str(cpu_of[s, c, u]) for u in range(threads)))
        llc = [cpu_of[s, k, u] for k in range(c - c % per_llc, c - c % per_llc + per_llc)
               for u in range(threads)]
        _cache(root, cpu, 0, 3, "Unified", ",".join(map(str, llc)))


def test_two_sockets_two_domains(tmp_path):
    two_sockets(tmp_path)
    place = pl.placement(tp.read_cpus(tmp_path))
    assert place.nr_domains == 2
    assert place.cpu_domain == (0, 0, 0, 0, 1, 1, 1, 1)
    assert place.cpu_sibling == tuple(range(8))  # shared: no sibling rule
    assert place.describe() == "2 scheduling domains: 0-3 | 4-7"


def test_exclusive_smt_names_each_cpus_sibling(tmp_path):
    two_sockets(tmp_path)
    place = pl.placement(tp.read_cpus(tmp_path), "exclusive")
    assert place.cpu_sibling == (1, 0, 3, 2, 5, 4, 7, 6)


def test_one_llc_is_one_domain(tmp_path):
    _machine(tmp_path, "0-3", "0-3", {0: "0-3"})
    for cpu in range(4):
        _cpu(tmp_path, cpu, str(cpu))
        _cache(tmp_path, cpu, 0, 3, "Unified", "0-3")
    place = pl.placement(tp.read_cpus(tmp_path), "exclusive")
    assert place.nr_domains == 1 and place.cpu_domain == (0,) * 4
    assert place.cpu_sibling == (0, 1, 2, 3)  # no SMT: nobody's sibling
    assert place.describe() == "1 scheduling domain: 0-3"


def test_a_224_cpu_server_has_a_domain_per_socket(tmp_path):
    # 2 sockets x 56 cores x 2 threads, one L3 per socket (Sapphire Rapids).
    _server(tmp_path, sockets=2, cores=56)
    place = pl.placement(tp.read_cpus(tmp_path), "exclusive")
    assert place.nr_domains == 2 and len(place.cpu_domain) == 224
    assert place.describe() == "2 scheduling domains: 0-55,112-167 | 56-111,168-223"
    assert place.cpu_sibling[0] == 112 and place.cpu_sibling[167] == 55


def test_more_llcs_than_domains_fall_back_to_nodes(tmp_path):
    _server(tmp_path, sockets=2, cores=8, llcs_per_socket=4)
    cpus = tp.read_cpus(tmp_path)
    assert len(set(pl.sched_domains(cpus).values())) == 8
    by_node = pl.sched_domains(cpus, max_domains=4)
    assert by_node == {c.cpu: c.node for c in cpus}
    assert set(by_node.values()) == {0, 1}


def test_exclusive_refuses_cores_of_more_than_two_threads(tmp_path):
    _server(tmp_path, sockets=1, cores=2, threads=4)
    cpus = tp.read_cpus(tmp_path)
    assert pl.placement(cpus).nr_domains == 1  # shared: fine
    with pytest.raises(UsageError, match="--gpu-smt shared"):
        pl.placement(cpus, "exclusive")
