"""The wait bound: its formula, its constants (mirrored from intf.h), and the
configurations refused because of it."""

import re
from pathlib import Path

import pytest

from scx_gpu import config
from scx_gpu.controlplane import bounds, intf
from scx_gpu.errors import UsageError

INTF_H = Path(__file__).resolve().parents[2] / "sched" / "bpf" / "intf.h"


@pytest.mark.parametrize("name", ["TIMEOUT_MS", "FLOOR_PCT", "MIN_SLICE_US", "DESIGN_RUNNABLE"])
def test_constants_mirror_intf_h(name):
    found = re.search(rf"^\s*{name}\s*=\s*(\d+),", INTF_H.read_text(), re.MULTILINE)
    assert found and int(found.group(1)) == getattr(intf, name)


def test_the_default_bound_is_the_documented_one():
    # 2 F + P + DESIGN_RUNNABLE * s / f = 2 + 0.1 + 1000 * 0.5 ms / 0.1
    assert bounds.design_bound_s(1000, 100) == pytest.approx(7.1)
    assert bounds.design_bound_s(1000, 100) <= bounds.watchdog_margin_s() == 10
    # 2,000 runnable tasks on 2 CPUs: the same per-CPU load
    assert bounds.wait_bound_s(1000, 100, 2000, 2) == pytest.approx(7.1)


def test_a_floor_that_could_reach_the_watchdog_is_refused():
    config.build(None, {"floor_ms": 2000})  # 9.1 s: allowed
    with pytest.raises(UsageError, match=r"wait bound of 10\.1 s"):
        config.build(None, {"floor_ms": 2500})
    with pytest.raises(UsageError, match="period_ms"):
        config.build(None, {"period_ms": 6000})
