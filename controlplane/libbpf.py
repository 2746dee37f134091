"""ctypes binding of libbpf.so.1: every function scx-gpu calls, declared once.

Errors come back as LibbpfError carrying errno and libbpf's own message.
"""

import ctypes
import functools
import os
from ctypes import c_char_p, c_int, c_size_t, c_uint32
from typing import Any

from scx_gpu.errors import EnvironmentProblem, ScxGpuError

LIBBPF_SONAME = "libbpf.so.1"
# .struct_ops.link (attaching sched_ext schedulers) needs libbpf 1.2.
MIN_VERSION = (1, 2)

# name -> (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_major_version": (c_uint32, []),
    "libbpf_minor_version": (c_uint32, []),
    "libbpf_version_string": (c_char_p, []),
    "libbpf_strerror": (c_int, [c_int, c_char_p, c_size_t]),
}


class LibbpfError(ScxGpuError):
    """A libbpf call failed; errno is positive."""

    def __init__(self, what: str, errno: int) -> None:
        self.errno = errno
        super().__init__(f"{what}: {strerror(errno)} (errno {errno})")


def library_path() -> str:
    """The libbpf to load: $SCX_GPU_LIBBPF, else the soname for the linker."""
    return os.environ.get("SCX_GPU_LIBBPF", LIBBPF_SONAME)


@functools.cache
def lib() -> ctypes.CDLL:
    """libbpf with every signature in _SIGNATURES declared."""
    try:
        handle = ctypes.CDLL(library_path(), use_errno=True)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot load {library_path()} ({exc}): install libbpf >= "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} (Debian: libbpf1 from bookworm-backports) "
            "or point SCX_GPU_LIBBPF at one"
        ) from exc
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return handle


def version() -> tuple[int, int]:
    """(major, minor) of the loaded libbpf."""
    return int(lib().libbpf_major_version()), int(lib().libbpf_minor_version())


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
