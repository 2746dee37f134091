"""The libcuda files traced processes really map, probed as each appears.

At the start: every libcuda that discovery finds (linker cache, driver paths,
running processes, --cuda-lib). While tracing: the BPF side reports each
mmap of a libcuda file without probes (a program's own RPATH copy, a
wheel's, a container's) and holds a process of the traced command stopped
until the file is probed, so none of its launches is missed (polling
/proc/PID/maps could not promise that: a program may launch microseconds
after dlopen). A rescan of traced processes' maps catches, late, what the
watch cannot see. Whatever is not probed is said plainly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scx_gpu.bpf import libbpf, libcuda
from scx_gpu.tracer.session import TraceSession

Key = tuple[int, int]  # (the kernel's dev_t, inode number)
# An mmap under way returns within this, even on a loaded host; shorter for a
# process not held (any process may map a libcuda-named file, often).
MAP_WAIT_S = {True: 1.0, False: 0.1}
MAP_POLL_S = 0.001
# libcuda files a trace probes: a host has a few, any process may map more, and
# detaching a file's probes takes the kernel ~1.4 s (12 RCU waits) here.
MAX_LIBS = 16


def kernel_dev(st_dev: int) -> int:
    """The kernel's dev_t (major << 20 | minor) of a stat() st_dev."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


def _key(path: Path) -> Key | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return kernel_dev(st.st_dev), st.st_ino


def _wait_mapped(tgid: int, ino: int, held: bool) -> libcuda.CudaLib | None:
    """The file (by inode) in tgid's maps: reported as its mmap starts, it appears
    once the mmap returns (a held process stops just then)."""
    deadline = time.monotonic() + MAP_WAIT_S[held]
    proc = Path(f"/proc/{tgid}")
    while proc.exists():
        for lib in libcuda.mapped_by(proc):
            found = _key(lib.path)
            if found is not None and found[1] == ino:
                return lib
        if time.monotonic() > deadline:
            break
        time.sleep(MAP_POLL_S)
    return None


def stopped(tgid: int) -> bool:
    """Whether the process is stopped (by a signal)."""
    try:
        stat = Path(f"/proc/{tgid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].startswith("T")  # the state follows (comm)


def _resume(tgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(tgid, signal.SIGCONT)


class LibraryWatch:
    def __init__(self, session: TraceSession, log: Callable[[str], None]) -> None:
        self.session = session
        self.log = log
        self.watching = False
        self.unprobed: list[dict[str, Any]] = []  # what a traced process maps, not counted
        self._keys: set[Key] = set()  # files with probes (or tried)
        self._said: set[tuple[int, Key]] = set()  # (tgid, file) already reported

    def start(self, libs: Iterable[libcuda.CudaLib]) -> None:
        for lib in libs:
            self._probe(lib)
        try:
            self.session.watch_mappings()
            self.watching = True
        except libbpf.LibbpfError as exc:
            self.log(f"cannot watch for libcuda mappings ({exc}): a libcuda that a traced "
                     "process maps from elsewhere is found late, by a rescan; name it with "
                     "--cuda-lib")
        if not self.launch_probes():
            self.log("no launch probe attached yet (no libcuda found): launches count from "
                     "when a traced process maps one")

    def launch_probes(self) -> int:
        return sum(len(probed.launches) for probed in self.session.probed)

    def _probe(self, lib: libcuda.CudaLib, mapped: tuple[int, Key] | None = None) -> None:
        """Probe lib once; mapped: the process that maps it and the kernel's key."""
        found = _key(lib.path)
        keys = ({found} if found else set()) | ({mapped[1]} if mapped else set())
        if not keys or keys & self._keys:
            self._mark(keys)
            return
        if len(self.session.probed) >= MAX_LIBS:
            self._keys |= keys  # tried (not in probed_libs: that map would fill up)
            self.log(f"not probing {lib.path}: a trace probes at most {MAX_LIBS} files")
            if mapped is not None:
                self._not_counted(mapped[0], str(lib.path), mapped[1],
                                  f"beyond the {MAX_LIBS} libcuda files a trace probes")
            return
        probed = self.session.probe_driver(lib.path)
        self._mark(keys)
        self.log(f"probing {lib.path} ({lib.source}): {probed.describe()}")
        if mapped is not None and not probed.launches:
            self._not_counted(mapped[0], str(lib.path), mapped[1],
                              "in which no launch entry point could be probed")

    def _mark(self, keys: set[Key]) -> None:
        for dev, ino in keys - self._keys:
            self.session.mark_probed(dev, ino)
        self._keys |= keys

    def _not_counted(self, tgid: int, library: str, key: Key, why: str) -> None:
        if (tgid, key) in self._said:
            return
        self._said.add((tgid, key))
        self.unprobed.append({"pid": tgid, "library": library, "reason": why})
        self.log(f"pid {tgid} maps {library}, {why}: its launches are NOT counted")

    def poll(self) -> None:
        """Probe each libcuda reported since the last call; continue who was held."""
        for event in self.session.new_mappings():
            try:
                self._mapped(event)
            finally:
                if event["held"]:
                    _resume(int(event["tgid"]))

    def _mapped(self, event: np.void) -> None:
        tgid, key = int(event["tgid"]), (int(event["dev"]), int(event["ino"]))
        if key in self._keys or (tgid, key) in self._said:
            return
        lib = _wait_mapped(tgid, key[1], bool(event["held"]))
        if lib is not None:
            held = ", held until probed" if event["held"] else ""
            self._probe(libcuda.CudaLib(lib.path, f"mapped by pid {tgid}{held}"), (tgid, key))
            return
        name = event["name"].decode(errors="replace")
        self._not_counted(tgid, name, key, "which was unmapped before it could be probed")

    def _unprobed_mappings(self) -> Iterator[tuple[int, libcuda.CudaLib, Key]]:
        for tgid in self.session.traced():
            for lib in libcuda.mapped_by(Path(f"/proc/{tgid}")):
                key = _key(lib.path)
                if key is not None and key not in self._keys:
                    yield tgid, lib, key

    def rescan(self) -> None:
        """Probe, late, what traced processes map that the watch did not report."""
        for tgid, lib, key in self._unprobed_mappings():  # lazily: each file once
            self.log(f"pid {tgid} maps {lib.path}, found by a rescan: its launches before "
                     "now are NOT counted")
            self._probe(lib, (tgid, key))

    def report(self) -> None:
        """At the end: say plainly what could not be counted."""
        self.poll()
        for tgid, lib, key in self._unprobed_mappings():
            self._not_counted(tgid, str(lib.path), key, "which has no probes")
        if not self.launch_probes():
            self.log("no launch probe was attached: this trace counts no launches (if the "
                     "program uses CUDA, name its libcuda with --cuda-lib)")

    def close(self) -> None:
        """Stop watching and continue every process still held."""
        holding = self.session.unwatch_mappings() if self.watching else []
        self.watching = False
        for event in self.session.new_mappings():
            if event["held"]:
                _resume(int(event["tgid"]))
        # A hold whose report came after that drain (a program still running
        # as the link went) would never end: continue whoever is stopped.
        for tgid in holding:
            if stopped(tgid):
                _resume(tgid)
