"""Driver probes placed past the entry (probesite), on the host kernel: the kernel
reports them where probesite put them, every launch is still counted once, and
every sync still pairs its entry with its return (a uretprobe placed too)."""

import json
import subprocess

import pytest

from scx_gpu.bpf import probesite
from scx_gpu.tracer.events import EV_LAUNCH, EV_SYNC_ENTER, EV_SYNC_EXIT
from scx_gpu.tracer.session import TraceSession
from scx_gpu.workloads import program

pytestmark = pytest.mark.root
LAUNCHER, STUB = program("launcher"), program("libcuda.so.1")
# What --api all calls: the three launch entry points, a stream sync every token.
SYMBOLS = ("cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch", "cuStreamSynchronize")
PER_TOKEN = 9


def _symbol_offsets() -> dict[str, int]:
    """File offsets of the stub's symbols (its .text has addresses equal to offsets)."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(STUB)], capture_output=True,
                         text=True, check=True).stdout
    return {name: int(value, 16) for value, _, name in (line.split() for line in out.splitlines())}


def _probed_offsets() -> set[int]:
    """Offsets in the stub of every uprobe link the kernel holds."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {link["offset"] for link in json.loads(out) if link.get("file") == str(STUB)}


@pytest.mark.parametrize(("at_entry", "work_us"), [(False, 0), (False, 50), (True, 0)])
def test_every_launch_counted_once(monkeypatch, at_entry, work_us):
    monkeypatch.delenv(probesite.AT_ENTRY_ENV, raising=False)
    if at_entry:
        monkeypatch.setenv(probesite.AT_ENTRY_ENV, "1")
    skips = {s: probesite.symbol_probe_offset(STUB, s) for s in SYMBOLS}
    assert (all(skips.values()) if not at_entry else not any(skips.values())), skips
    session = TraceSession(ring_mb=512)
    try:
        session.probe_driver(STUB)
        symbols = _symbol_offsets()
        assert {symbols[s] + skips[s] for s in SYMBOLS} <= _probed_offsets()
        out = subprocess.run([str(LAUNCHER), "--cuda-lib", str(STUB), "--threads", "2",
                              "--api", "all", "--launches", str(PER_TOKEN), "--duration", "1",
                              "--work-us", str(work_us), "--gpu-wait-us", "0"],
                             capture_output=True, text=True, check=True).stdout
        events, drops = session.drain(), session.drops()
    finally:
        session.close()
    assert drops == 0
    report = json.loads(out)
    launches = events[events["type"] == EV_LAUNCH]
    assert report["pid"] not in set(launches["tid"])
    for tid, count in zip(report["tids"], report["thread_launches"], strict=True):
        assert count > 1000
        assert int((launches["tid"] == tid).sum()) == count, tid
        mine = events[events["tid"] == tid]
        for kind in (EV_SYNC_ENTER, EV_SYNC_EXIT):
            assert int((mine["type"] == kind).sum()) == count // PER_TOKEN, (tid, kind)
