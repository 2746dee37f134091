"""Counters between two snapshots."""

import ctypes
import random

from scx_gpu.controlplane.intf import Stats
from scx_gpu.controlplane.stats import diff

WORDS = ctypes.c_uint64 * (ctypes.sizeof(Stats) // 8)


def test_diff_subtracts_every_counter():
    before = [random.randrange(1 << 40) for _ in range(len(WORDS()))]
    grown = [random.randrange(1 << 20) for _ in before]
    out = diff(Stats.from_buffer_copy(WORDS(*(b + g for b, g in zip(before, grown, strict=True)))),
               Stats.from_buffer_copy(WORDS(*before)))
    assert list(WORDS.from_buffer_copy(out)) == grown
