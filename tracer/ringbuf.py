"""Read a BPF ring buffer of fixed-size records straight from its mmap.

The kernel maps the data area twice back to back, so the bytes from the
consumer to the producer position are always contiguous: a batch of records
is one numpy view, with no per-event Python call.
"""

import mmap
import struct

import numpy as np

BUSY_BIT, DISCARD_BIT = 1 << 31, 1 << 30
HEADER = 8


class RingReader:
    def __init__(self, fd: int, size: int, record: np.dtype) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self.record = record
        self.stride = (HEADER + record.itemsize + 7) & ~7
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._page = page

    def _positions(self) -> tuple[int, int]:
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        prod = struct.unpack_from("<Q", self._data, 0)[0]
        return cons, prod

    def read(self) -> np.ndarray:
        """Every committed record since the last read (discarded ones dropped)."""
        cons, prod = self._positions()
        count = (prod - cons) // self.stride
        if count == 0:
            return np.empty(0, self.record)
        start = self._page + (cons & (self.size - 1))
        raw = np.frombuffer(self._data, np.uint8, count * self.stride, start)
        rows = raw.reshape(count, self.stride)
        lengths = rows[:, :4].copy().view("<u4")[:, 0]
        busy = np.flatnonzero(lengths & BUSY_BIT)
        ready = busy[0] if busy.size else count  # records after a busy one must wait
        keep = (lengths[:ready] & DISCARD_BIT) == 0
        out = rows[:ready, HEADER:HEADER + self.record.itemsize][keep].copy().view(self.record)
        struct.pack_into("<Q", self._cons, 0, cons + ready * self.stride)
        return np.asarray(out).reshape(-1)

    def close(self) -> None:
        self._cons.close()
        self._data.close()
