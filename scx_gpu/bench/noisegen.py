"""Built-in noise, for machines without stress-ng, iperf3 or fio.

python3 -m scx_gpu.bench.noisegen cpu|net|disk --workers N [--dir DIR]
  cpu:  N busy loops.
  net:  N loopback TCP pairs, each sending 64 KiB buffers as fast as it can.
  disk: N writers of random 4 KiB blocks into a 256 MiB file, fdatasync
        every 16 writes.
Runs until killed (the benchmark kills its whole cgroup).
"""

import argparse
import os
import random
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from scx_gpu.controlplane.topology import NPROC

CHUNK = 64 << 10
BLOCK = 4 << 10
FILE_BYTES = 256 << 20
SYNC_EVERY = 16


def cpu() -> None:
    while True:
        pass


def net() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(server.getsockname())
    receiver, _ = server.accept()

    def drain() -> None:
        while receiver.recv(CHUNK):
            pass

    threading.Thread(target=drain, daemon=True).start()
    payload = b"\0" * CHUNK
    while True:
        sender.sendall(payload)


def disk(directory: Path) -> None:
    path = directory / f"noise-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    path.unlink()  # gone when we are
    os.ftruncate(fd, FILE_BYTES)
    block = os.urandom(BLOCK)
    blocks = FILE_BYTES // BLOCK
    while True:
        for _ in range(SYNC_EVERY):
            os.pwrite(fd, block, random.randrange(blocks) * BLOCK)
        os.fdatasync(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("cpu", "net", "disk"))
    parser.add_argument("--workers", type=int, default=NPROC)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args(argv)
    directory: Path = args.dir
    work: Callable[[], None] = {"cpu": cpu, "net": net, "disk": lambda: disk(directory)}[args.kind]
    children = []
    for _ in range(max(1, args.workers)):
        pid = os.fork()
        if pid == 0:
            work()
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
