"""Which libcuda files the detector may probe.

A probe hit puts the calling thread in the gpu tier, ahead of everyone else's
work, and the probe fires on entry: any user who can make a probed file run
could take that tier. So only files the operator trusts are probed: owned by
root and writable by nobody else (their folder too), and found in the linker
cache, a driver path, an explicit --cuda-lib, or under a --trusted-lib-dir
(a container root, say). A file a process merely has mapped is not enough.
"""

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from scx_gpu.controlplane.libcuda import CudaLib

OPERATOR_SOURCES = ("option", "ldconfig", "path")  # libcuda.discover()'s own sources


def _not_roots_alone(st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    return None


def untrusted(lib: CudaLib, trusted_dirs: Iterable[Path]) -> str | None:
    """Why lib must not be probed, or None when it may be."""
    real = Path(os.path.realpath(lib.path))
    try:
        problem = _not_roots_alone(real.stat())
        folder = None if problem else _not_roots_alone(real.parent.stat())
    except OSError as exc:
        return f"cannot check it: {exc.strerror}"
    if problem:
        return problem
    if folder:
        return f"its folder {real.parent} is {folder}"
    if lib.source in OPERATOR_SOURCES or any(real.is_relative_to(d) for d in trusted_dirs):
        return None
    return ("only mapped by a process, outside the linker cache, the driver paths and "
            "--trusted-lib-dir")
