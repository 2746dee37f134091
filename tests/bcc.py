"""bcc's tools as an independent referee of scx-gpu's numbers (in the test VM).

The guest has bookworm's bcc (0.26, clang 14) and the guest kernel's Debian
headers. That bcc cannot compile against them as it is: the kernel is built
with CONFIG_CC_MS_EXTENSIONS (-fms-extensions, for anonymous embedded
structs), and without it clang fails in include/linux/ns_common.h ("no member
named 'ns_id' in 'struct ns_common'") and include/linux/fs.h. So each tool
runs with the kernel's own flag added to bcc's compile flags, and with one
binding bug of bookworm's bcc mended (WRAPPER says which); nothing else of it
changed. A tool that bcc also ships built on libbpf (CO_RE_TOOLS: BTF and
CO-RE, compiled when bcc was) runs as that build: compiling runqlat in the
guest took minutes of emulated CPU.
"""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOOLS = Path("/usr/sbin")
CO_RE_TOOLS = ("runqlat",)  # of bookworm's libbpf-tools, the same options as bcc's
READY = "Tracing"
# Runs a bcc tool with the kernel's compile flags added to every BPF() it
# builds, and with bcc's uprobe attach called as libbcc declares it: bookworm's
# Python binding declares bpf_attach_uprobe with six arguments where libbcc
# 0.26 takes seven, so the reference counter offset is whatever the register
# holds (the kernel then refuses any other uprobe at that place: "ref_ctr_offset
# mismatch"). The binding is given the seventh argument, 0 as bcc means it.
WRAPPER = """
import ctypes, runpy, sys
import bcc
from bcc.libbcc import lib
flags = sys.argv[1].split()
build = bcc.BPF.__init__
def with_kernel_flags(self, *args, cflags=(), **kwargs):
    build(self, *args, cflags=[*cflags, *flags], **kwargs)
bcc.BPF.__init__ = with_kernel_flags
attach = lib.bpf_attach_uprobe
if len(attach.argtypes) == 6:
    attach.argtypes = [*attach.argtypes, ctypes.c_uint32]
    lib.bpf_attach_uprobe = lambda *args: attach(*args, 0)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def kernel_cflags() -> list[str]:
    """The compiler flags the running kernel was built with that its headers need."""
    config = Path(f"/lib/modules/{os.uname().release}/build/.config")
    assert config.is_file(), f"no kernel headers at {config.parent}: the guest image lacks them"
    found = re.search(r'^CONFIG_CC_MS_EXTENSIONS="([^"]*)"', config.read_text(), re.M)
    return [*found.group(1).split(), "-Wno-microsoft-anon-tag"] if found else []


@contextmanager
def tracing(tool: str, *args: str, timeout: float = 240) -> Iterator[list[str]]:
    """Run bcc's TOOL for the body's duration (started and ready before it,
    stopped with SIGINT after it); yields the list its output lines fill."""
    if tool in CO_RE_TOOLS:
        cmd = ["stdbuf", "-oL", str(TOOLS / tool), *args]  # C stdio: READY unbuffered
    else:
        cmd = [sys.executable, "-u", "-c", WRAPPER, " ".join(kernel_cflags()),
               str(TOOLS / f"{tool}-bpfcc"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:  # bcc's compile takes tens of seconds under emulation
        lines.append(line.rstrip("\n"))
        if line.startswith(READY) or time.monotonic() > deadline:
            break
    assert lines and lines[-1].startswith(READY), f"{tool} did not start:\n" + "\n".join(lines)
    try:
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        lines += rest.splitlines()


def runqlat_by_tid(lines: list[str]) -> dict[int, list[tuple[int, int, int]]]:
    """runqlat -L output: per thread, its (low_us, high_us, count) rows."""
    hists: dict[int, list[tuple[int, int, int]]] = {}
    rows: list[tuple[int, int, int]] = []
    for line in lines:
        if m := re.match(r"\s*tid = (\d+)", line):
            rows = hists.setdefault(int(m.group(1)), [])
        elif m := re.match(r"\s*(\d+) -> (\d+)\s*: (\d+)", line):
            rows.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    return hists


def funccount(lines: list[str]) -> dict[str, int]:
    """funccount output: calls per function."""
    counts: dict[str, int] = {}
    for line in lines:
        if m := re.match(r"(\w+)\s+(\d+)$", line.strip()):
            counts[m.group(1)] = int(m.group(2))
    return counts
