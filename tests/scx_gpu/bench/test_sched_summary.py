"""bench-sched's summary and checks, on made-up rows (the runs need the VM)."""

import pytest

from scx_gpu.bench import sched
from scx_gpu.controlplane import intf, stats


def rows() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for rep in range(2):
        for i, cell in enumerate(sched.CELLS):
            row: dict[str, object] = {"rep": rep, "cell": cell.name,
                                      "tokens_per_s": 100.0 - i, "token_us_p99": 1000.0,
                                      "hog_cpu_share": 0.3 if cell.hogs else 0.0}
            if cell.scheduler is not None:
                row["probe_hits_per_launch"] = 0.004 + 0.002 * rep
                row["gpu_tier_cpu_share"] = 0.99
            out.append(row)
    return out


def test_the_detector_cell_reports_hits_per_launch_and_its_time_in_the_gpu_tier():
    summary = sched.summarise(rows())
    checks = sched.verdict(summary)
    assert checks["probe_hits_per_launch_pct"] == pytest.approx(0.5)
    assert checks["gpu_tier_cpu_share"] == pytest.approx(0.99)
    assert "probe_hits_per_launch" not in summary["stock"]
    assert summary["alone (stock)"]["relative"] == 1.0


def _totals(hits: int, gpu_ns: int) -> dict[str, object]:
    counters = intf.Stats()
    counters.detector_hits = hits
    counters.tier[intf.Tier.GPU].runtime_ns = gpu_ns
    return stats.Summary(0, counters, 50, 0).as_dict()


def test_the_detector_figures_come_from_the_counters_status_reports():
    # The keys the bench reads are those `status` writes (a key renamed on one side
    # alone would read as nothing).
    figures = sched.detector_figures(_totals(10, 10**9), _totals(60, 4 * 10**9), 10_000, 4.0)
    assert figures == {"probe_hits_per_launch": pytest.approx(0.005),
                       "gpu_tier_cpu_share": pytest.approx(0.75)}
