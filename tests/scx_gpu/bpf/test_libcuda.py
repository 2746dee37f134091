"""libcuda discovery on the host: the rescans run on their own thread."""

import subprocess
import sys
import time

from scx_gpu.bpf import libcuda
from scx_gpu.workloads import program

STUB = program("libcuda.so.1")
HOLD = "import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); print(flush=True); time.sleep(60)"


def test_rescans_find_a_library_mapped_later_until_stopped():
    interval = 0.2
    scanner = libcuda.Rescanner([], interval).start()
    try:
        first = scanner.found()  # the scan made on start
        assert all(lib.path.resolve() != STUB.resolve() for lib in first), first
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(STUB)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "\n"
            deadline = time.monotonic() + 30
            later: list[libcuda.CudaLib] = []
            while time.monotonic() < deadline and not later:
                time.sleep(interval)
                later = [lib for lib in scanner.found() if lib.path.resolve() == STUB.resolve()]
            assert later and later[0].source == f"pid {holder.pid}", later
        finally:
            holder.kill()
            holder.wait()
    finally:
        scanner.close()
    time.sleep(5 * interval)  # a scan under way when it stopped may still report
    scanner.found()
    time.sleep(5 * interval)
    assert scanner.found() == []  # no scans after close()


def test_the_linker_cache_is_read_again_only_once_its_file_changed(tmp_path):
    cache, reads = tmp_path / "ld.so.cache", list[int]()
    cache.write_bytes(b"one")
    lib = libcuda.CudaLib(STUB, "ldconfig")
    failing = [True]

    def read() -> list[libcuda.CudaLib] | None:  # `ldconfig -p`: a fork each time
        reads.append(1)
        return None if failing[0] else [lib]
    linker = libcuda.LinkerCache(cache, read)
    assert linker() == [] and linker() == [] and len(reads) == 2  # failed: read again
    failing[0] = False
    assert linker() == linker() == [lib] and len(reads) == 3
    cache.write_bytes(b"two, longer")  # ldconfig rewrote it: a driver was installed
    assert linker() == [lib] and len(reads) == 4
    cache.unlink()  # nothing to compare with: read each time
    linker()
    linker()
    assert len(reads) == 6


def test_rescans_list_the_linker_cache_through_its_memo():
    scanner = libcuda.Rescanner([], 60)
    assert isinstance(scanner._linker, libcuda.LinkerCache)
