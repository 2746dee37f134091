"""Disk and memory load for the co-location VM tests: `python -m tests.controlplane.colocload`.

reader FILE SECONDS          random 4 KB direct reads; prints latency percentiles
writer FILE SECONDS THREADS  random 256 KB direct writes; prints MB/s
holder FILE                  maps FILE and touches every page once a second
hog BYTES SECONDS HOLD       allocates BYTES in chunks (touched, each printed) and holds
                             them HOLD seconds, or stops at SECONDS
"""

import json
import mmap
import os
import random
import sys
import threading
import time

PAGE = 4096
READ = 4096
WRITE = 256 << 10
CHUNK = 4 << 20
# The kernel faults a whole chunk in at once: a Python loop touching each page took the
# hog 20 s to reach 584 of 628 MB under emulation, too slow to press on the page cache.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
HOLD_PERIOD_S = 1.0  # a working set in use, not a hot loop the kernel always keeps


def _direct(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_DIRECT)


def reader(path: str, seconds: float) -> None:
    fd = _direct(path, os.O_RDONLY)
    blocks = os.fstat(fd).st_size // READ
    buf = mmap.mmap(-1, READ)  # page-aligned, as O_DIRECT needs
    lat: list[float] = []
    end = time.monotonic() + seconds
    while (t0 := time.monotonic()) < end:
        os.preadv(fd, [buf], random.randrange(blocks) * READ)
        lat.append(time.monotonic() - t0)
    lat.sort()
    print(json.dumps({"n": len(lat), "p50_ms": lat[len(lat) // 2] * 1e3,
                      "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}), flush=True)


def writer(path: str, seconds: float, threads: int) -> None:
    fd = _direct(path, os.O_WRONLY)
    blocks = os.fstat(fd).st_size // WRITE
    written = [0] * threads
    end = time.monotonic() + seconds

    def run(i: int) -> None:
        buf = mmap.mmap(-1, WRITE)
        buf.write(os.urandom(WRITE))
        while time.monotonic() < end:
            written[i] += os.pwritev(fd, [buf], random.randrange(blocks) * WRITE)
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    print("ready", flush=True)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"mb_s": sum(written) / seconds / 1e6}), flush=True)


def holder(path: str) -> None:
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    size = len(mapped)
    first = True
    while True:
        total = 0
        for off in range(0, size, PAGE):
            total += mapped[off]
        if first:
            print("ready", flush=True)
            first = False
        time.sleep(HOLD_PERIOD_S)


def hog(nbytes: int, seconds: float, hold_s: float) -> None:
    chunks: list[mmap.mmap] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(chunks) * CHUNK < nbytes:
        chunk = mmap.mmap(-1, CHUNK)
        chunk.madvise(MADV_POPULATE_WRITE)
        chunks.append(chunk)
        print(json.dumps({"allocated": len(chunks) * CHUNK}), flush=True)  # if OOM-killed
    end = min(end, time.monotonic() + hold_s)
    while time.monotonic() < end:
        time.sleep(0.1)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "reader":
        reader(args[0], float(args[1]))
    elif mode == "writer":
        writer(args[0], float(args[1]), int(args[2]))
    elif mode == "holder":
        holder(args[0])
    elif mode == "hog":
        hog(int(args[0]), float(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
