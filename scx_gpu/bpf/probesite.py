"""Where on a function a uprobe costs least: past leading instructions the kernel
would single-step, onto one it emulates.

A uprobe hit on an instruction the kernel emulates (arch/x86/kernel/uprobes.c:
push of a register, jmp/jcc/call with a relative target, nop) takes one trap;
any other instruction is single-stepped out of line, a second trap (#DB) and
a second return to user space. Drivers start their entry points with such
instructions: endbr64 in a CET build, and a compare of a global state word
(`cmpl $imm, disp(%rip)`, as in the NVIDIA driver) before the branch to the
real work. Both leave every register but the flags, the stack and memory as
they were, so a probe on the first emulated instruction after them sees what
a probe on the entry sees: the same arguments, the same return address at sp.

The probe moves only when that is certain: the symbol is found once in the
ELF file, the instructions skipped are exactly the ones above, the landing
instruction lies inside the function, and no relative branch in the function
targets the skipped bytes or the landing instruction (past the decoded head,
read at every byte, so never missed; a false alarm only keeps the probe at
the entry). Otherwise, or with SCX_GPU_UPROBE_AT_ENTRY=1 set, the probe
stays on the entry. Jumps from other functions into a function's first
bytes are not searched for: compilers enter functions at their symbol.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import chain
from pathlib import Path

AT_ENTRY_ENV = "SCX_GPU_UPROBE_AT_ENTRY"
ENDBR64 = b"\xf3\x0f\x1e\xfa"
MAX_SKIP = 32      # bytes of leading instructions worth stepping over
MAX_SCAN = 1 << 16  # bytes of a function searched for branches into its head

_EM_X86_64 = 62
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC = 2
_SHN_UNDEF = 0
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
Elf = bytes | mmap.mmap


def _skipped_length(code: bytes, at: int) -> int:
    """Length of the instruction at `at` if it changes nothing but the flags, else 0."""
    if code.startswith(ENDBR64, at):
        return len(ENDBR64)
    rex = 1 if code[at:at + 1] == b"\x48" else 0
    opcode, modrm = code[at + rex:at + rex + 1], code[at + rex + 1:at + rex + 2]
    if modrm != b"\x3d":  # mod 00, reg 7 (cmp), rm 101: disp32(%rip)
        return 0
    # cmp $imm32 / $imm8 (sign-extended) / byte $imm8 with disp32(%rip)
    imm = {b"\x81": 4, b"\x83": 1, b"\x80": 0 if rex else 1}.get(opcode, 0)
    return rex + 2 + 4 + imm if imm else 0


def _emulated_length(code: bytes, at: int) -> int:
    """Length of the instruction at `at` if the kernel emulates it, else 0."""
    first = code[at] if at < len(code) else None
    if first is None:
        return 0
    if 0x50 <= first <= 0x57 or first == 0x90:  # push %reg, nop
        return 1
    if first == 0x41 and at + 1 < len(code) and 0x50 <= code[at + 1] <= 0x57:
        return 2  # push %r8..%r15
    if 0x70 <= first <= 0x7F or first == 0xEB:  # jcc, jmp rel8
        return 2
    if first in (0xE8, 0xE9):  # call, jmp rel32
        return 5
    if first == 0x0F and at + 1 < len(code) and 0x80 <= code[at + 1] <= 0x8F:
        return 6  # jcc rel32
    return 0


def _branch_targets(code: bytes, starts: Iterable[int]) -> Iterator[int]:
    """Targets of the relative jmp/jcc/call decodable at each of starts."""
    for i in starts:
        b = code[i]
        if (0x70 <= b <= 0x7F or b == 0xEB) and i + 2 <= len(code):
            yield i + 2 + struct.unpack_from("<b", code, i + 1)[0]
        elif b in (0xE8, 0xE9) and i + 5 <= len(code):
            yield i + 5 + struct.unpack_from("<i", code, i + 1)[0]
        elif b == 0x0F and i + 6 <= len(code) and 0x80 <= code[i + 1] <= 0x8F:
            yield i + 6 + struct.unpack_from("<i", code, i + 2)[0]


def probe_offset(code: bytes) -> int:
    """Bytes from a function's start (code: its bytes, all of them) to the
    cheapest safe probe site; 0 keeps the probe on the entry."""
    at = 0
    while at < MAX_SKIP and (length := _skipped_length(code, at)):
        at += length
    landing = _emulated_length(code, at)
    if not at or not landing or at + landing > len(code):
        return 0
    # Past the decoded head instruction boundaries are unknown: try every byte.
    starts = chain((at,), range(at + landing, min(len(code), MAX_SCAN)))
    if any(0 < target <= at for target in _branch_targets(code, starts)):
        return 0
    return at


def _sections(elf: Elf) -> list[tuple[int, ...]] | None:
    if len(elf) < _EHDR.size or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return None  # not a 64-bit little-endian ELF file
    header = _EHDR.unpack_from(elf)
    machine, shoff, shentsize, shnum = header[2], header[6], header[11], header[12]
    if machine != _EM_X86_64 or shentsize != _SHDR.size or shoff + shnum * _SHDR.size > len(elf):
        return None
    return [_SHDR.unpack_from(elf, shoff + i * _SHDR.size) for i in range(shnum)]


def _function_bytes(elf: Elf, symbol: str) -> tuple[int, bytes] | None:
    """The file offset and bytes of symbol's one definition as libbpf resolves it
    (.dynsym, then .symtab; a versioned name matches), or None if it is missing
    or ambiguous."""
    sections = _sections(elf)
    if sections is None:
        return None
    wanted = symbol.encode()
    for table_type in (_SHT_DYNSYM, _SHT_SYMTAB):
        found: set[tuple[int, int, int]] = set()
        for sh in sections:
            if sh[1] != table_type or sh[6] >= len(sections):
                continue
            strtab = sections[sh[6]]
            names = elf[strtab[4]:strtab[4] + strtab[5]]
            table = elf[sh[4]:sh[4] + sh[5] - sh[5] % _SYM.size]
            for name, info, _, shndx, value, size in _SYM.iter_unpack(table):
                end = names.find(b"\0", name)
                full = names[name:end if end >= 0 else None]
                if (info & 0xF == _STT_FUNC and shndx != _SHN_UNDEF and shndx < len(sections)
                        and (full == wanted or full.startswith(wanted + b"@"))):
                    found.add((value, size, shndx))
        if found:
            if len(found) != 1:
                return None
            value, size, shndx = found.pop()
            sec = sections[shndx]
            start = value - sec[3] + sec[4]
            if size == 0 or start < 0 or start + size > len(elf):
                return None
            return start, elf[start:start + size]
    return None


@lru_cache(maxsize=256)
def _cached(path: str, _identity: tuple[int, int, int, int],
            symbol: str) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as elf:
            found = _function_bytes(elf, symbol)
    except (OSError, ValueError, struct.error):
        return None
    return (found[0], probe_offset(found[1])) if found is not None else None


def _site(binary: Path, symbol: str) -> tuple[int, int] | None:
    """(symbol's file offset, the probe's offset past it), None if not found once."""
    try:
        st = binary.stat()
    except OSError:
        return None
    found = _cached(str(binary), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), symbol)
    if found is not None and os.environ.get(AT_ENTRY_ENV, "") not in ("", "0"):
        return found[0], 0
    return found


def symbol_probe_offset(binary: Path, symbol: str) -> int:
    """Bytes past symbol's entry in binary where its uprobe costs least (0: the entry)."""
    found = _site(binary, symbol)
    return found[1] if found else 0


def probe_sites(binary: Path, symbols: Iterable[str]) -> dict[str, int]:
    """The file offsets where the symbols' uprobes cost least, for those found once
    in binary (the offsets a uprobe_multi link takes)."""
    sites = {}
    for symbol in symbols:
        found = _site(binary, symbol)
        if found:
            sites[symbol] = found[0] + found[1]
    return sites
