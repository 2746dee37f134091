"""Typed access to BPF maps by file descriptor (loaded or pinned)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from typing import TypeVar

from scx_gpu.bpf import libbpf
from scx_gpu.errors import EnvironmentProblem

T = TypeVar("T", bound=ctypes.Structure | ctypes._SimpleCData)  # type: ignore[type-arg]
ENOENT = 2
BPF_ANY = 0


def open_pinned(path: str) -> int:
    """fd of a map pinned in bpffs; the caller closes it."""
    fd = libbpf.lib().bpf_obj_get(path.encode())
    if fd < 0:
        err = ctypes.get_errno()
        if err == ENOENT:
            raise EnvironmentProblem(f"{path} not found: is `scx-gpu load` running?")
        raise libbpf.LibbpfError(f"open pinned map {path}", err)
    return int(fd)


def lookup(fd: int, key: ctypes._CData, value_type: type[T]) -> T | None:
    value = value_type()
    ret = libbpf.lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if ret < 0 and -ret == ENOENT:
        return None
    libbpf.check(ret, "bpf_map_lookup_elem")
    return value


def read_percpu(fd: int, key: ctypes._CData, value_size: int, ncpus: int) -> tuple[bytes, int]:
    """Every possible CPU's value, raw, and the stride between them (each value is
    padded to 8 bytes, as the kernel lays them out)."""
    stride = (value_size + 7) & ~7
    buf = ctypes.create_string_buffer(stride * ncpus)
    libbpf.check(libbpf.lib().bpf_map_lookup_elem(fd, ctypes.byref(key), buf),
                 "bpf_map_lookup_elem (per-CPU)")
    return buf.raw, stride


def lookup_percpu(fd: int, key: ctypes._CData, value_type: type[T], ncpus: int) -> list[T]:
    """One value per possible CPU."""
    raw, stride = read_percpu(fd, key, ctypes.sizeof(value_type), ncpus)
    return [value_type.from_buffer_copy(raw, i * stride)  # type: ignore[misc]
            for i in range(ncpus)]


def sum_percpu(fd: int, key: ctypes._CData, value_type: type[T], ncpus: int) -> T:
    """Every possible CPU's value added up, for a value that is all u64 counters
    (summed in C: the loader reads its statistics every second, in the gpu tier)."""
    size = ctypes.sizeof(value_type)
    raw, stride = read_percpu(fd, key, size, ncpus)
    words = memoryview(raw).cast("Q")
    per_cpu = [words[i * stride // 8:(i * stride + size) // 8] for i in range(ncpus)]
    totals = (ctypes.c_uint64 * (size // 8))(*map(sum, zip(*per_cpu, strict=True)))
    return value_type.from_buffer_copy(totals)  # type: ignore[return-value]


def update(fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
    libbpf.check(libbpf.lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value),
                                                  BPF_ANY), "bpf_map_update_elem")


def delete(fd: int, key: ctypes._CData) -> None:
    """Remove key; one that is not there is no error."""
    ret = libbpf.lib().bpf_map_delete_elem(fd, ctypes.byref(key))
    if ret < 0 and -ret == ENOENT:
        return
    libbpf.check(ret, "bpf_map_delete_elem")


def keys(fd: int, key_type: type[T]) -> Iterator[T]:
    prev: T | None = None
    while True:
        nxt = key_type()
        ret = libbpf.lib().bpf_map_get_next_key(
            fd, ctypes.byref(prev) if prev is not None else None, ctypes.byref(nxt))
        if ret < 0:
            return
        yield nxt
        prev = nxt


def close(fd: int) -> None:
    os.close(fd)
