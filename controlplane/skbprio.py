"""Mark the batch tier's packets: a cgroup BPF egress program sets skb->priority.

Four instructions, assembled here (no compiler at run time): store the
batch class id in skb->priority and let the packet pass. Attached to a
cgroup v2 directory it marks every packet its tasks' sockets send, after
the socket's own SO_PRIORITY (so a batch task cannot opt out), and
netshape's HTB hierarchy sorts by it. The attachment is a BPF link owned
by this process: when the process ends, however it ends, the kernel
detaches it.
"""

import ctypes
import os
import struct
from collections.abc import Callable
from pathlib import Path

from scx_gpu.errors import EnvironmentProblem

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD, BPF_LINK_CREATE = 5, 28
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_CGROUP_INET_EGRESS = 1
SKB_PRIORITY_OFF = 32      # offsetof(struct __sk_buff, priority)
VERDICT_PASS = 1
PROG_NAME = b"scx_gpu_skbprio"
LOAD_ATTR_SIZE = 72        # up to and including expected_attach_type
LINK_ATTR_SIZE = 16


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(priority: int) -> bytes:
    """r2 = priority; skb->priority = r2; return PASS."""
    mov64_imm, stx_w, exit_ = 0xB7, 0x63, 0x95
    return (_insn(mov64_imm, dst=2, imm=priority)
            + _insn(stx_w, dst=1, src=2, off=SKB_PRIORITY_OFF)
            + _insn(mov64_imm, dst=0, imm=VERDICT_PASS)
            + _insn(exit_))


_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = int(_libc.syscall(SYS_BPF, cmd, attr, len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise EnvironmentProblem(f"{what}: {os.strerror(err)} (scx-gpu load needs root and a "
                                 "kernel with cgroup BPF, CONFIG_CGROUP_BPF)")
    return ret


def _load(priority: int) -> int:
    code = program(priority)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(LOAD_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_CGROUP_SKB, len(code) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    struct.pack_into("<16sI", attr, 48, PROG_NAME, 0)  # prog_name, prog_ifindex
    struct.pack_into("<I", attr, 68, BPF_CGROUP_INET_EGRESS)  # expected_attach_type
    return _bpf(BPF_PROG_LOAD, attr, "loading the packet-marking BPF program")


def _link(prog_fd: int, cgroup_fd: int, cgroup: Path) -> int:
    attr = ctypes.create_string_buffer(LINK_ATTR_SIZE)
    struct.pack_into("<IIII", attr, 0, prog_fd, cgroup_fd, BPF_CGROUP_INET_EGRESS, 0)
    return _bpf(BPF_LINK_CREATE, attr, f"attaching the packet-marking program to {cgroup}")


def mark(cgroups: list[Path], priority: int) -> Callable[[], None]:
    """Mark the packets of every task under each cgroup; returns the undo."""
    fds: list[int] = []

    def undo() -> None:
        while fds:
            os.close(fds.pop())

    try:
        fds.append(_load(priority))
        for cgroup in cgroups:
            cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fds.append(_link(fds[0], cgroup_fd, cgroup))
            finally:
                os.close(cgroup_fd)
    except BaseException:
        undo()
        raise
    return undo
