"""Every metric of tracer-spec.md on a synthetic trace with hand-computed answers."""

import json

import numpy as np
import pandas as pd
import pytest

from scx_gpu.tracer import analysis, report, tracefile
from tests.helpers import assert_one_line_error, scx_gpu


def event(ts, kind, tid=11, pid=10, **fields):
    row: dict[str, object] = dict.fromkeys(tracefile.CSV_COLUMNS + tracefile.EXTRA_COLUMNS, 0)
    row.update({"timestamp_ns": ts, "event_type": kind, "pid": pid, "tid": tid, "comm": "gpu",
                "irq_name": "", "layer": "driver", "preempt": False, **fields})
    return row


@pytest.fixture
def frame():
    # Thread 11 launches at 0, 100, 200, 5000, 5100 ns and is off the CPU from
    # 300 to 4900 (woken at 4800). Thread 12 launches at 50 and 150.
    rows = [event(t, "cuLaunchKernel") for t in (0, 100, 200, 5000, 5100)]
    rows += [event(t, "cuLaunchKernelEx", tid=12) for t in (50, 150)]
    rows += [event(300, "schedSwitch", prev_tid=11, next_tid=0, prev_state=1),  # sleeps
             event(4800, "schedWakeup"),
             event(4900, "schedSwitch", tid=11, prev_tid=0, next_tid=11),
             event(6000, "softirqExit", irq_num=1, irq_name="TIMER", duration_ns=30),
             event(7000, "hardirqExit", irq_num=5, irq_name="nvme", duration_ns=20),
             event(10000, "softirqExit", irq_num=3, irq_name="NET_RX", duration_ns=50)]
    return pd.DataFrame(rows).sort_values("timestamp_ns", ignore_index=True)


def test_process_metrics(frame):
    result = analysis.analyse(frame, {"drops": 3})
    assert result["runtime_s"] == 1e-5 and result["launches"] == 7 and result["drops"] == 3
    (proc,) = result["processes"]
    assert proc["launches"] == 7 and proc["context_switches"] == 1
    assert proc["launches_per_s"] == pytest.approx(700_000)
    assert proc["switch_rate_hz"] == pytest.approx(100_000)
    assert proc["off_cpu_ms"] == pytest.approx(4600e-6)
    assert proc["off_cpu_pct"] == pytest.approx(23.0)       # 4600 / (10000 x 2 threads)
    assert proc["sched_per_1k_launches"] == pytest.approx(1000 / 7)
    pairs = proc["launch_pairs"]
    assert pairs["pairs"] == 5
    assert pairs["with_switch"] == {"count": 1, "share_pct": 20.0, "p50_us": 4.8,
                                    "p90_us": 4.8, "p99_us": 4.8}
    assert pairs["without_switch"]["count"] == 4 and pairs["without_switch"]["p50_us"] == 0.1
    assert pairs["preemption_penalty_us"] == pytest.approx(4.7)
    assert pairs["scheduler_impact_pct"] == pytest.approx(47.0)  # 1 x 4700 / 10000
    assert pairs["tail_p95"] == {"pairs": 1, "with_switch_pct": 100.0, "application_pct": 0.0}
    assert pairs["tail_p99"]["with_switch_pct"] == 100.0


def test_thread_metrics(frame):
    (proc,) = analysis.analyse(frame)["processes"]
    t11, t12 = proc["threads"]
    assert (t11["tid"], t11["launches"], t11["context_switches"]) == (11, 5, 1)
    assert t11["off_cpu_pct"] == pytest.approx(46.0)
    assert t11["runqueue_wait_us"] == {"p50": 0.1, "p90": 0.1, "p99": 0.1}
    assert t11["launch_pairs"]["pairs"] == 4
    assert t11["launch_pairs"]["with_switch"]["share_pct"] == 25.0
    assert (t12["tid"], t12["launches"], t12["context_switches"]) == (12, 2, 0)
    assert t12["launch_pairs"]["without_switch"]["count"] == 1


def test_runqueue_wait_counts_preemptions_as_ready():
    # Preempted at 300 (still runnable), back on at 900; sleeps at 1000, woken
    # at 1500, on at 1600: waits of 600 and 100 ns; the sleep is not a wait.
    rows = [event(t, "cuLaunchKernel") for t in (0, 2000)]
    rows += [event(300, "schedSwitch", prev_tid=11, next_tid=0, preempt=True),
             event(900, "schedSwitch", prev_tid=0, next_tid=11),
             event(1000, "schedSwitch", prev_tid=11, next_tid=0, prev_state=2),
             event(1500, "schedWakeup"),
             event(1600, "schedSwitch", prev_tid=0, next_tid=11)]
    (proc,) = analysis.analyse(pd.DataFrame(rows))["processes"]
    waits = proc["threads"][0]["runqueue_wait_us"]
    assert (waits["p50"], waits["p99"]) == (pytest.approx(0.35), pytest.approx(0.595))


def test_irq_metrics(frame):
    irq = analysis.analyse(frame)["irq"]
    assert irq["hardirq"] == {"count": 1, "total_us": 0.02, "mean_us": 0.02, "max_us": 0.02,
                              "share_of_irq_pct": 20.0}
    assert irq["softirq"]["count"] == 2 and irq["softirq"]["total_us"] == 0.08
    assert irq["softirq"]["max_us"] == 0.05 and irq["softirq"]["share_of_irq_pct"] == 80.0
    assert set(irq["softirq_by_type"]) == {"NET_RX", "TIMER"}
    assert irq["softirq_by_type"]["NET_RX"]["total_us"] == 0.05
    assert irq["irq_time_pct_of_runtime"] == pytest.approx(1.0)
    assert irq["softirq_per_1k_launches"] == pytest.approx(2000 / 7)
    assert irq["hardirq_per_1k_launches"] == pytest.approx(1000 / 7)


def test_degradation_and_baseline_columns(frame):
    assert analysis.degradation_pct(54.77, 49.93) == pytest.approx(8.837, abs=1e-3)
    slow = frame.copy()
    slow["timestamp_ns"] = slow["timestamp_ns"] * 2  # same work, half the rate
    header, rows = report.rows(analysis.analyse(slow), analysis.analyse(frame))
    assert header == ["metric", "baseline gpu (10)", "gpu (10)", "degradation (%)"]
    rate = next(r for r in rows if r[0] == "launches/s")
    assert rate[1:] == ["700,000.00", "350,000.00", "50.00"]


def test_analyze_cli_reads_csv_and_rejects_corrupt(tmp_path, frame):
    good = tmp_path / "t.csv"
    frame[tracefile.CSV_COLUMNS + tracefile.EXTRA_COLUMNS].to_csv(good, index=False)
    proc = scx_gpu("analyze", str(good), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["trace"]["processes"][0]["launches"] == 7
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(tracefile.CSV_COLUMNS) + "\nnot-a-number,x,1,1,c,0\n")
    assert_one_line_error(scx_gpu("analyze", str(bad)), 2, ["corrupt trace CSV"])
    assert_one_line_error(scx_gpu("analyze", str(tmp_path / "none")), 2, ["no such trace"])


def test_a_thread_still_off_the_cpu_at_the_end():
    # Off at 300 and 700, back only at 500: 200 ns, then 300 ns until the end at 1000;
    # a thread that never came back is off from its switch-out to the end.
    assert analysis.off_cpu_ns(np.array([300, 700]), np.array([500]), 1000) == 500
    assert analysis.off_cpu_ns(np.array([300]), np.array([], np.int64), 1000) == 700
