"""Where a uprobe goes on a function: the instruction check, and the stub driver's ELF."""

import random
import struct

import pytest

from scx_gpu.bpf import probesite
from scx_gpu.workloads import program

ENDBR64 = bytes.fromhex("f30f1efa")
CMP_STATE = bytes.fromhex("813d3e938d0100ba1c32")  # cmpl $0x321cba00,0x18d933e(%rip)
JE_SLOW = bytes.fromhex("740c")
JMP_TABLE = bytes.fromhex("ff25c6187e01")  # jmp *0x17e18c6(%rip)
PUSH_RBP, PUSH_R15 = b"\x55", b"\x41\x57"
MOV_RBP_RSP = bytes.fromhex("4889e5")
RET = b"\xc3"


@pytest.mark.parametrize(("code", "offset"), [
    # CET prologues: the probe moves onto the emulated instruction after endbr64
    (ENDBR64 + PUSH_RBP + MOV_RBP_RSP + RET, 4),
    (ENDBR64 + PUSH_R15 + RET, 4),
    (ENDBR64 + bytes.fromhex("e9 00000000"), 4),  # a thunk: endbr64; jmp
    # the NVIDIA driver's (535) entry points, with and without CET
    (CMP_STATE + JE_SLOW + JMP_TABLE + bytes(8) + RET, 10),
    (ENDBR64 + CMP_STATE + JE_SLOW + JMP_TABLE + bytes(8) + RET, 14),
    (ENDBR64 + CMP_STATE + PUSH_RBP + RET, 14),
])
def test_probe_skips_to_an_emulated_instruction(code, offset):
    assert probesite.probe_offset(code) == offset


@pytest.mark.parametrize("code", [
    PUSH_RBP + MOV_RBP_RSP + RET,            # no endbr64: the entry is emulated already
    MOV_RBP_RSP + RET,                       # nothing to skip
    ENDBR64 + MOV_RBP_RSP + RET,             # what follows is single-stepped anyway
    ENDBR64 + b"\x48\x50" + RET,             # REX.W push: not one the kernel emulates
    ENDBR64 + b"\x66" + CMP_STATE + JE_SLOW,  # 16-bit compare: not decoded, not skipped
    ENDBR64,                                 # too short: nothing after endbr64
    ENDBR64 + bytes.fromhex("0f85 0000"),    # too short: a jcc rel32 cut off
    CMP_STATE[:6],                           # too short: a compare cut off
    b"",
])
def test_probe_stays_on_the_entry(code):
    assert probesite.probe_offset(code) == 0


def test_a_branch_into_the_head_keeps_the_probe_on_the_entry():
    head = ENDBR64 + PUSH_RBP + MOV_RBP_RSP
    loop_back = b"\xeb" + struct.pack("<b", 4 - (len(head) + 2))  # jmp back to the push
    assert probesite.probe_offset(head + loop_back + RET) == 0
    into_cmp = ENDBR64 + CMP_STATE + JE_SLOW
    near = b"\x0f\x84" + struct.pack("<i", 6 - (len(into_cmp) + 6))  # je into the cmp
    assert probesite.probe_offset(into_cmp + near + RET) == 0
    forward = b"\xeb" + struct.pack("<b", 1)  # a branch past the head is fine
    assert probesite.probe_offset(head + forward + b"\x90" + RET) == 4


def test_the_stub_driver_is_cet_built_and_shaped_like_the_real_one(monkeypatch):
    monkeypatch.delenv(probesite.AT_ENTRY_ENV, raising=False)
    stub = program("libcuda.so.1")
    # endbr64 (4) + the state compare (10), then the branch or a push
    for symbol in ("cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch", "cuStreamSynchronize",
                   "cuCtxSynchronize"):
        assert probesite.symbol_probe_offset(stub, symbol) == 14, symbol
    # endbr64, then a tail jump to the unsuffixed entry point
    for symbol in ("cuLaunchKernel_ptsz", "cuLaunchKernelEx_ptsz", "cuGraphLaunch_ptsz"):
        assert probesite.symbol_probe_offset(stub, symbol) == 4, symbol


def test_entry_when_asked_or_unsure(monkeypatch, tmp_path):
    stub = program("libcuda.so.1")
    monkeypatch.setenv(probesite.AT_ENTRY_ENV, "1")
    assert probesite.symbol_probe_offset(stub, "cuLaunchKernel") == 0
    monkeypatch.delenv(probesite.AT_ENTRY_ENV)
    assert probesite.symbol_probe_offset(stub, "cuNoSuchFunction") == 0
    assert probesite.symbol_probe_offset(stub, "scx_stub_driver_state") == 0  # data, not code
    junk = tmp_path / "libcuda.so.1"
    junk.write_bytes(b"\x7fELF" + bytes(200))
    assert probesite.symbol_probe_offset(junk, "cuLaunchKernel") == 0
    assert probesite.symbol_probe_offset(tmp_path / "missing.so", "cuLaunchKernel") == 0


def test_a_damaged_elf_file_is_never_an_error(tmp_path, monkeypatch):
    """Other users' files are parsed: truncated or corrupted, they only keep the entry."""
    monkeypatch.delenv(probesite.AT_ENTRY_ENV, raising=False)
    good = program("libcuda.so.1").read_bytes()
    rng = random.Random(14)
    damaged = [good[:n] for n in (1, 5, 63, 64, 65, len(good) // 2, len(good) - 1)]
    shoff = struct.unpack_from("<Q", good, 0x28)[0]
    regions = [(0, 64), (shoff, len(good)), (0, len(good))]  # ELF header, section headers
    for _ in range(300):
        copy = bytearray(good)
        start, end = rng.choice(regions)
        for _ in range(rng.randint(1, 8)):
            copy[rng.randrange(start, end)] = rng.randrange(256)
        damaged.append(bytes(copy))
    for i, data in enumerate(damaged):
        path = tmp_path / f"libcuda.so.{i}"
        path.write_bytes(data)
        assert probesite.symbol_probe_offset(path, "cuLaunchKernel") in (0, 14)


def test_probe_sites_are_file_offsets_past_the_skipped_head(monkeypatch):
    # A uprobe_multi link takes file offsets: each lands after the skipped bytes.
    monkeypatch.delenv(probesite.AT_ENTRY_ENV, raising=False)
    stub = program("libcuda.so.1")
    elf = stub.read_bytes()
    sites = probesite.probe_sites(stub, ["cuLaunchKernel", "cuGraphLaunch_ptsz", "cuNoSuch"])
    assert list(sites) == ["cuLaunchKernel", "cuGraphLaunch_ptsz"]
    launch = sites["cuLaunchKernel"]
    assert elf[launch - 14:launch - 10] == ENDBR64 and elf[launch - 10:launch - 8] == CMP_STATE[:2]
    assert elf[sites["cuGraphLaunch_ptsz"] - 4:sites["cuGraphLaunch_ptsz"]] == ENDBR64
    monkeypatch.setenv(probesite.AT_ENTRY_ENV, "1")
    entry = probesite.probe_sites(stub, ["cuLaunchKernel"])["cuLaunchKernel"]
    assert entry == launch - 14 and elf[entry:entry + 4] == ENDBR64
