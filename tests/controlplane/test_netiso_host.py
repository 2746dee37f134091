"""Network isolation on the host kernel, in network namespaces (root).

Senders in namespace A, receivers in B, a router R between them whose link
toward B is a 100 Mbit/s token bucket (the bottleneck a real NIC would be).
A's device carries the HTB hierarchy, shaped just under the bottleneck; a
cgroup v2 directory holds the batch senders, whose packets the cgroup BPF
program marks. GSO is capped on A's device: at 100 Mbit/s one 64 KB GSO
packet is 5 ms of link, which no priority can interrupt.
"""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS

from scx_gpu.controlplane import netshape, skbprio
from scx_gpu.controlplane.tiers import CGROUP_ROOT

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
BOTTLENECK = "100mbit"
LINK_RATE = "95mbit"
LINK_BPS = 95 * 10**6
MTU_MS = 1514 * 8 / 100e6 * 1e3  # one full frame on the bottleneck
SECONDS = 5.0
A_IP, B_IP = "10.77.1.1", "10.77.2.2"


@dataclass
class Net:
    a: str
    b: str
    r: str
    batch: Path
    normal: Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _cleanup(net: Net) -> None:
    for ns in (net.a, net.b, net.r):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    for group in (net.batch, net.normal, net.batch.parent):
        if group.is_dir():
            group.rmdir()


@pytest.fixture
def net() -> Iterator[Net]:
    tag = f"t16n{os.getpid()}"
    base = CGROUP_ROOT / tag
    net = Net(f"{tag}a", f"{tag}b", f"{tag}r", base / "batch", base / "normal")
    try:
        for ns in (net.a, net.b, net.r):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "va", "netns", net.a, "type", "veth", "peer", "ra", "netns", net.r)
        _ip("link", "add", "vb", "netns", net.b, "type", "veth", "peer", "rb", "netns", net.r)
        for ns, dev, addr in ((net.a, "va", f"{A_IP}/24"), (net.r, "ra", "10.77.1.254/24"),
                              (net.r, "rb", "10.77.2.254/24"), (net.b, "vb", f"{B_IP}/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", net.a, "route", "add", "default", "via", "10.77.1.254")
        _ip("-n", net.b, "route", "add", "default", "via", "10.77.2.254")
        _ip("-n", net.a, "link", "set", "va", "gso_max_segs", "1")
        subprocess.run(["ip", "netns", "exec", net.r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True)
        with NetNS(net.r) as ipr:
            ipr.tc("add", "tbf", ipr.link_lookup(ifname="rb")[0], 0x10000,
                   rate=netshape.parse_rate(BOTTLENECK, "bottleneck") // 8,
                   burst=3028, latency=50_000)
        for group in (net.batch, net.normal):
            group.mkdir(parents=True)
        yield net
    finally:
        _cleanup(net)


class Flows:
    """Processes of one measurement, in their namespaces and cgroups."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.procs: list[subprocess.Popen[str]] = []
        self.port = 5000

    def start(self, ns: str, group: Path | None, *args: str) -> subprocess.Popen[str]:
        join = f"echo $$ > {group / 'cgroup.procs'} && " if group else ""
        cmd = (f"{join}exec ip netns exec {ns} {sys.executable} -m tests.controlplane.netflows "
               + " ".join(args))
        proc = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.procs.append(proc)
        return proc

    def server(self, mode: str, *args: str) -> tuple[subprocess.Popen[str], str]:
        self.port += 1
        proc = self.start(self.net.b, None, mode, str(self.port), *args)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc, str(self.port)

    def rr(self, group: Path) -> subprocess.Popen[str]:
        _, port = self.server("echo")
        return self.start(self.net.a, group, "rr", B_IP, port, str(SECONDS))

    def bulk(self, group: Path) -> subprocess.Popen[str]:
        sink, port = self.server("sink", str(SECONDS))
        self.start(self.net.a, group, "bulk", B_IP, port, str(SECONDS))
        return sink

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=SECONDS + 30)
    value: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return value


def measure(net: Net, rr: Path | None = None, normal_bulk: bool = False,
            batch_bulk: bool = False) -> dict[str, float]:
    """Run the chosen flows together; round trips (ms) and rates (Mbit/s)."""
    flows = Flows(net)
    try:
        started = {}
        if rr:
            started["rr"] = flows.rr(rr)
        if normal_bulk:
            started["normal"] = flows.bulk(net.normal)
        if batch_bulk:
            started["batch"] = flows.bulk(net.batch)
        got: dict[str, float] = {}
        for name, proc in started.items():
            value = _result(proc)
            if name == "rr":
                got.update(rr_p50_ms=value["p50_ms"], rr_p99_ms=value["p99_ms"])
            else:
                got[f"{name}_mbit"] = value["bps"] / 1e6
        return got
    finally:
        flows.close()


def isolate(ipr: IPRoute, net: Net, batch_rate: str = "") -> Callable[[], None]:
    """Shape A's device and mark the batch cgroup; returns the undo."""
    undo_shape = netshape.shape(ipr, netshape.plan("va", LINK_RATE, 95, batch_rate))
    undo_mark = skbprio.mark([net.batch], netshape.BATCH_CLASS)

    def undo() -> None:
        undo_mark()
        undo_shape()
    return undo


def _leftovers(ipr: IPRoute, net: Net) -> list[str]:
    index = ipr.link_lookup(ifname="va")[0]
    found = [f"qdisc {q.get_attr('TCA_KIND')} {q['handle']:#x}" for q in ipr.get_qdiscs(index)
             if q["handle"] != 0]
    found += [f"class {c['handle']:#x}" for c in ipr.get_classes(index)]
    found += [f"filter {f['handle']:#x}" for f in ipr.get_filters(index)]
    progs = subprocess.run(["bpftool", "-j", "cgroup", "show", str(net.batch)],
                           capture_output=True, text=True, check=True).stdout
    found += [f"cgroup program {p['name']}" for p in json.loads(progs.strip() or "[]")]
    return found


def best_rr(net: Net, batch_bulk: bool) -> dict[str, float]:
    """The better of two runs: other work on the machine inflates a round trip, never shortens
    it."""
    return min((measure(net, rr=net.normal, batch_bulk=batch_bulk) for _ in range(2)),
               key=lambda got: got["rr_p99_ms"])


def test_batch_egress_yields_the_link_and_keeps_its_ceiling(net):
    alone = best_rr(net, batch_bulk=False)
    plain = {**measure(net, rr=net.normal, batch_bulk=True),
             **measure(net, normal_bulk=True, batch_bulk=True)}
    with NetNS(net.a) as ipr:
        undo = isolate(ipr, net)
        try:
            iso = {**best_rr(net, batch_bulk=True),
                   **measure(net, normal_bulk=True, batch_bulk=True)}
            fill = measure(net, batch_bulk=True)
            installed = _leftovers(ipr, net)
        finally:
            undo()
        undo = isolate(ipr, net, batch_rate="20mbit")
        try:
            ceiling = measure(net, batch_bulk=True)
        finally:
            undo()
        left = _leftovers(ipr, net)
    print(f"request/response p99: alone {alone['rr_p99_ms']:.2f} ms, beside batch bulk "
          f"{plain['rr_p99_ms']:.2f} ms without isolation, {iso['rr_p99_ms']:.2f} ms with")
    print(f"normal vs batch bulk, Mbit/s: without {plain['normal_mbit']:.1f} / "
          f"{plain['batch_mbit']:.1f}, with {iso['normal_mbit']:.1f} / {iso['batch_mbit']:.1f}")
    print(f"batch bulk alone: {fill['batch_mbit']:.1f} Mbit/s of a {LINK_RATE} link; "
          f"under a 20mbit ceiling {ceiling['batch_mbit']:.1f}")
    # Without isolation the requests queue behind the bulk transfer (the setup works) ...
    assert plain["rr_p99_ms"] > 20 * MTU_MS, (alone, plain)
    # ... with it they wait behind at most the batch packet on the wire (one MTU time).
    assert iso["rr_p99_ms"] <= 1.5 * alone["rr_p99_ms"] + MTU_MS, (alone, plain, iso)
    assert iso["normal_mbit"] >= 0.9 * (iso["normal_mbit"] + iso["batch_mbit"]), iso
    assert fill["batch_mbit"] >= 0.85 * LINK_BPS / 1e6, fill
    assert 0.7 * 20 <= ceiling["batch_mbit"] <= 1.05 * 20, ceiling
    assert len(installed) == 5 and "cgroup program scx_gpu_skbprio" in installed, installed
    assert left == [], left
