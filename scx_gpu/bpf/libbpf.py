"""ctypes binding of libbpf.so.1: every function scx-gpu calls, declared once.

Calls that fail raise LibbpfError carrying errno and what libbpf printed
just before (the verifier log, a missing symbol, ...).
"""

import collections
import ctypes
import ctypes.util
import functools
import os
import re
import threading
from collections.abc import Iterator
from ctypes import (
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_ulong,
    c_void_p,
)
from typing import Any

from scx_gpu.errors import EnvironmentProblem, ScxGpuError

LIBBPF_SONAME = "libbpf.so.1"
# .struct_ops.link (attaching sched_ext schedulers) needs libbpf 1.2.
MIN_VERSION = (1, 2)
BTF_KIND_VAR, BTF_KIND_DATASEC = 14, 15
LOG_LINES = 200
MESSAGE_MAX = 1 << 20
LIBBPF_DEBUG = 2  # enum libbpf_print_level: WARN 0, INFO 1, DEBUG 2


class BpfUprobeOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
        ("attach_mode", c_int),
    ]


class BpfUprobeMultiOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("syms", POINTER(c_char_p)),
        ("offsets", POINTER(c_ulong)),
        ("ref_ctr_offsets", POINTER(c_uint64)),
        ("cookies", POINTER(c_uint64)),
        ("cnt", c_size_t),
        ("retprobe", c_bool),
    ]


class BpfTestRunOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BtfType(Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfVarSecinfo(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class BpfProgInfo(Structure):
    """struct bpf_prog_info (UAPI) up to verified_insns (5.16), at offset 216:
    the kernel fills the prefix it is given."""

    _fields_ = [("_before", ctypes.c_uint8 * 216), ("verified_insns", c_uint32)]


PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
VP, CP, INT, U32, SZ = c_void_p, c_char_p, c_int, c_uint32, c_size_t

# name -> (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_major_version": (U32, []),
    "libbpf_minor_version": (U32, []),
    "libbpf_strerror": (INT, [INT, CP, SZ]),
    "libbpf_set_print": (VP, [PRINT_FN]),
    "libbpf_num_possible_cpus": (INT, []),
    "bpf_object__open_file": (VP, [CP, VP]),
    "bpf_object__load": (INT, [VP]),
    "bpf_object__close": (None, [VP]),
    "bpf_object__btf": (VP, [VP]),
    "bpf_object__find_map_by_name": (VP, [VP, CP]),
    "bpf_object__find_program_by_name": (VP, [VP, CP]),
    "bpf_object__next_program": (VP, [VP, VP]),
    "bpf_map__fd": (INT, [VP]),
    "bpf_map__value_size": (U32, [VP]),
    "bpf_map__initial_value": (VP, [VP, POINTER(SZ)]),
    "bpf_map__pin": (INT, [VP, CP]),
    "bpf_map__unpin": (INT, [VP, CP]),
    "bpf_map__attach_struct_ops": (VP, [VP]),
    "bpf_map__set_max_entries": (INT, [VP, U32]),
    "bpf_map__set_autocreate": (INT, [VP, c_bool]),
    "bpf_program__name": (CP, [VP]),
    "bpf_program__attach": (VP, [VP]),
    "bpf_program__attach_uprobe_opts": (VP, [VP, INT, CP, SZ, POINTER(BpfUprobeOpts)]),
    "bpf_program__attach_uprobe_multi": (VP, [VP, INT, CP, CP, POINTER(BpfUprobeMultiOpts)]),
    "bpf_program__set_autoload": (INT, [VP, c_bool]),
    "bpf_program__fd": (INT, [VP]),
    "bpf_prog_get_info_by_fd": (INT, [INT, POINTER(BpfProgInfo), POINTER(U32)]),
    "bpf_prog_test_run_opts": (INT, [INT, POINTER(BpfTestRunOpts)]),
    "bpf_link__destroy": (INT, [VP]),
    "bpf_obj_get": (INT, [CP]),
    "bpf_map_lookup_elem": (INT, [INT, VP, VP]),
    "bpf_map_update_elem": (INT, [INT, VP, VP, c_uint64]),
    "bpf_map_get_next_key": (INT, [INT, VP, VP]),
    "bpf_map_delete_elem": (INT, [INT, VP]),
    "btf__find_by_name_kind": (INT, [VP, CP, U32]),
    "btf__type_by_id": (POINTER(BtfType), [VP, U32]),
    "btf__name_by_offset": (CP, [VP, U32]),
}

# Functions newer than MIN_VERSION: declared where the loaded libbpf has them.
_SINCE = {"bpf_program__attach_uprobe_multi": (1, 3)}

_log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
_log_lock = threading.Lock()


class LibbpfError(ScxGpuError):
    """A libbpf call failed; errno is positive, log holds libbpf's messages."""

    def __init__(self, what: str, errno: int, log: list[str] | None = None) -> None:
        self.errno = errno
        self.log = log or []
        detail = f": {self.log[-1]}" if self.log else ""
        super().__init__(f"{what}: {strerror(errno)} (errno {errno}){detail}")


def library_path() -> str:
    """The libbpf to load: $SCX_GPU_LIBBPF, else the soname for the linker."""
    return os.environ.get("SCX_GPU_LIBBPF", LIBBPF_SONAME)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.vsnprintf.restype = c_int
    libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
    return libc


@functools.cache
def _message_buffer() -> ctypes.Array[ctypes.c_char]:
    # One, used under _log_lock: a fresh MiB for each message cost seconds a
    # load under emulation.
    return ctypes.create_string_buffer(MESSAGE_MAX)


def _print_messages(level: int, fmt: bytes, args: int) -> int:
    # Debug messages (thousands a load) are left out, as libbpf's own printer
    # does; warnings carry the errors. On x86-64 a va_list argument is a
    # pointer; vsnprintf formats it for us. Verifier logs come as one
    # message; the error is at its end.
    if level >= LIBBPF_DEBUG:
        return 0
    with _log_lock:
        buf = _message_buffer()
        _libc().vsnprintf(buf, MESSAGE_MAX, fmt, args)
        _log.extend(line for line in buf.value.decode(errors="replace").splitlines() if line)
    return 0


_print = PRINT_FN(_print_messages)


@functools.cache
def lib() -> ctypes.CDLL:
    """libbpf with every signature in _SIGNATURES declared and its log captured."""
    try:
        handle = ctypes.CDLL(library_path(), use_errno=True)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot load {library_path()} ({exc}): install libbpf >= "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} (Debian: libbpf1 from bookworm-backports) "
            "or point SCX_GPU_LIBBPF at one"
        ) from exc
    for name, (restype, argtypes) in _SIGNATURES.items():
        if name in _SINCE and version_of(handle) < _SINCE[name]:
            continue
        fn = getattr(handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
    handle.libbpf_set_print(_print)
    return handle


def take_log() -> list[str]:
    """libbpf's messages since the last call."""
    with _log_lock:
        lines = list(_log)
        _log.clear()
    return lines


def version_of(handle: ctypes.CDLL) -> tuple[int, int]:
    return int(handle.libbpf_major_version()), int(handle.libbpf_minor_version())


def version() -> tuple[int, int]:
    """(major, minor) of the loaded libbpf."""
    return version_of(lib())


def has_uprobe_multi() -> bool:
    """Whether libbpf and the kernel (6.6 and later) attach uprobe_multi links."""
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    kernel = (int(release[1]), int(release[2])) if release else (0, 0)
    return version() >= _SINCE["bpf_program__attach_uprobe_multi"] and kernel >= (6, 6)


def require_version() -> None:
    """Raise unless the loaded libbpf can attach sched_ext schedulers."""
    if version() < MIN_VERSION:
        have = ".".join(map(str, version()))
        raise EnvironmentProblem(
            f"libbpf {have} is too old (need >= {MIN_VERSION[0]}.{MIN_VERSION[1]} for "
            ".struct_ops.link): install libbpf1 from bookworm-backports"
        )


def strerror(errno: int) -> str:
    """libbpf's text for a (positive) errno, libbpf-specific codes included."""
    buf = ctypes.create_string_buffer(256)
    lib().libbpf_strerror(errno, buf, len(buf))
    return buf.value.decode(errors="replace")


def check(ret: int, what: str) -> int:
    """Raise LibbpfError for a negative libbpf return value."""
    if ret < 0:
        raise LibbpfError(what, -ret if ret != -1 else ctypes.get_errno(), take_log())
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    """Raise LibbpfError for a NULL pointer from libbpf (errno says why)."""
    if not ptr:
        raise LibbpfError(what, ctypes.get_errno() or 22, take_log())
    return ptr


def num_possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def datasec_vars(btf: int, section: str) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each variable in a BTF data section (.rodata, .bss)."""
    sec_id = check(lib().btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC),
                   f"BTF section {section}")
    sec = lib().btf__type_by_id(btf, sec_id)
    vlen = sec.contents.info & 0xFFFF
    infos = ctypes.cast(ctypes.addressof(sec.contents) + ctypes.sizeof(BtfType),
                        POINTER(BtfVarSecinfo))
    for i in range(vlen):
        var = lib().btf__type_by_id(btf, infos[i].type)
        name = lib().btf__name_by_offset(btf, var.contents.name_off).decode()
        yield name, infos[i].offset, infos[i].size
