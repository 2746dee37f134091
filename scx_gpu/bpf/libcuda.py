"""Find the CUDA driver libraries (libcuda.so*) a host actually uses.

One implementation shared by the scheduler's detector and the tracer. Real
hosts keep libcuda in many places (/usr/local/nvidia/lib64, containers, pip
wheels), so look in the dynamic linker cache, in what running processes have
mapped (through /proc/PID/root for containers), in common driver paths, and
in explicit paths from the user.
"""

import glob
import os
import queue
import re
import shutil
import subprocess
import sysconfig
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scx_gpu.errors import UsageError

# The driver's launch entry points, in the order of the tracer's enum trace_api
# (tracer/trace_intf.h): the one counting layer (runtime calls land here).
LAUNCH_SYMBOLS = (
    "cuLaunchKernel", "cuLaunchKernel_ptsz",
    "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz",
    "cuGraphLaunch", "cuGraphLaunch_ptsz",
)
LIBCUDA_RE = re.compile(r"libcuda\.so(\.\d+)*$")
LD_SO_CACHE = Path("/etc/ld.so.cache")  # what `ldconfig -p` lists
COMMON_DIRS = (
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/compat",
    "/usr/lib/wsl/lib",
)


@dataclass(frozen=True)
class CudaLib:
    """A libcuda file: the path to open and where it was found."""

    path: Path
    source: str


def explicit(paths: Iterable[str | Path]) -> Iterator[CudaLib]:
    """User-given paths; each must exist."""
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise UsageError(f"--cuda-lib {path}: no such file")
        yield CudaLib(path, "option")


def ldconfig_libs() -> list[CudaLib] | None:
    """libcuda entries in the dynamic linker cache; None when `ldconfig -p` failed."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run(
            [ldconfig, "-p"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    libs = []
    for line in out.splitlines():
        _, arrow, target = line.partition(" => ")
        if arrow and LIBCUDA_RE.search(target.strip()):
            libs.append(CudaLib(Path(target.strip()), "ldconfig"))
    return libs


def from_ldconfig() -> list[CudaLib]:
    """ldconfig_libs(), none when it failed."""
    return ldconfig_libs() or []


class LinkerCache:
    """read()'s entries (`ldconfig -p`'s), read again only once the linker
    cache file has changed or the last read failed: each read forks the
    control plane, and beside a storm of runnable tasks the fork held the
    loader's loop for 1.5-3 s (its child waits for a CPU before it can exec)
    and launchers' tags expired."""

    def __init__(self, path: Path = LD_SO_CACHE,
                 read: Callable[[], list[CudaLib] | None] = ldconfig_libs) -> None:
        self.path, self.read = path, read
        self._stamp: tuple[int, int, int, int] | None = None
        self._libs: list[CudaLib] = []

    def __call__(self) -> list[CudaLib]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int, int] | None = (st.st_dev, st.st_ino, st.st_size,
                                                       st.st_mtime_ns)
        except OSError:
            stamp = None  # no cache file to compare: read each time
        if stamp is None or stamp != self._stamp:
            libs = self.read()
            self._stamp = stamp if libs is not None else None
            self._libs = libs if libs is not None else self._libs
        return self._libs


def _same_root(pid_dir: Path) -> bool:
    try:
        theirs, ours = (pid_dir / "root").stat(), Path("/").stat()
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def mapped_by(pid_dir: Path) -> Iterator[CudaLib]:
    """libcuda files one process maps (none if it is gone); a container's through its root."""
    try:
        maps = (pid_dir / "maps").read_text()
    except OSError:
        return
    if "libcuda.so" not in maps:  # most processes: no line to parse
        return
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and LIBCUDA_RE.search(fields[5]):
            # A host path outlives the process; a container's needs its root.
            prefix = "" if _same_root(pid_dir) else f"{pid_dir}/root"
            yield CudaLib(Path(prefix + fields[5]), f"pid {pid_dir.name}")


def from_process_maps(proc: Path = Path("/proc")) -> Iterator[CudaLib]:
    """libcuda files mapped by running processes."""
    for pid_dir in proc.iterdir():
        if pid_dir.name.isdigit():
            yield from mapped_by(pid_dir)


def from_common_dirs() -> Iterator[CudaLib]:
    """Driver install locations and pip wheels' nvidia/*/lib folders."""
    site = sysconfig.get_paths()["purelib"]
    dirs = [*COMMON_DIRS, *glob.glob(os.path.join(site, "nvidia", "*", "lib"))]
    for d in dirs:
        for candidate in sorted(glob.glob(os.path.join(d, "libcuda.so*"))):
            if LIBCUDA_RE.search(candidate):
                yield CudaLib(Path(candidate), "path")


def discover(paths: Iterable[str | Path] = (), scan_processes: bool = True,
             linker: Callable[[], Iterable[CudaLib]] = from_ldconfig) -> list[CudaLib]:
    """Every distinct libcuda file (by inode), explicit paths first."""
    sources: list[Iterable[CudaLib]] = [explicit(paths), linker(), from_common_dirs()]
    if scan_processes:
        sources.append(from_process_maps())
    seen: set[tuple[int, int]] = set()
    found: list[CudaLib] = []
    for source in sources:
        for lib in source:
            try:
                st = lib.path.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                found.append(lib)
    return found


class Rescanner:
    """discover() now, then every interval_s on a thread of its own.

    Reading every /proc/PID/maps takes seconds on a loaded host; in the
    control plane's loop it would hold back the detector windows that keep
    launching threads tagged.
    """

    def __init__(self, paths: Iterable[str | Path], interval_s: float) -> None:
        self.paths = list(paths)
        self.interval_s = interval_s
        self._linker = LinkerCache()
        self._found: queue.SimpleQueue[list[CudaLib]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, name="libcuda-rescan", daemon=True)

    def start(self) -> "Rescanner":
        self._found.put(discover(self.paths, linker=self._linker))
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # not joined: a scan under way must not delay detaching

    def _scan(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._found.put(discover(self.paths, linker=self._linker))

    def found(self) -> list[CudaLib]:
        """Everything the scans since the last call found (repeats included)."""
        libs: list[CudaLib] = []
        while True:
            try:
                libs.extend(self._found.get_nowait())
            except queue.Empty:
                return libs
