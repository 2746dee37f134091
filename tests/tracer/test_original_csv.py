"""`scx-gpu analyze` on the original cuda_sched_trace CSV (tracer-spec.md), written
by hand in that tool's layout; every expected figure is worked out in the comments
from the spec's definitions."""

import json

import pytest

from scx_gpu.tracer import tracefile
from tests.helpers import assert_one_line_error, scx_gpu

HEADER = ("timestamp_ns,event_type,pid,tid,comm,cpu,grid_x,grid_y,grid_z,block_x,block_y,"
          "block_z,shared_mem,stream,last_offcpu_ns,last_oncpu_ns,irq_num,irq_name,duration_ns")
T0 = 7_000_000_000  # the kernel's monotonic clock at the first event (last_* are absolute)


def launch(ts: int, tid: int, pid: int = 100, comm: str = "python") -> str:
    return f"{ts},cuLaunchKernel,{pid},{tid},{comm},0,1,1,1,32,1,1,0,0,0,0"


def switch(ts: int, tid: int, out: bool, comm: str = "python") -> str:
    """The thread id in pid and tid; direction in which last_* is set."""
    off, on = (T0 + ts, 0) if out else (0, T0 + ts)
    return f"{ts},schedSwitch,{tid},{tid},{comm},1,,,,,,,,,{off},{on}"


def irq(ts: int, kind: str, num: int, name: str, duration: int) -> str:
    return f"{ts},{kind},0,0,swapper/1,1,,,,,,,,,0,0,{num},{name},{duration}"


# Process 100 ("python"): threads 101 and 102 launch, its main thread 100 never does.
#  101 launches every 1000 ns from 0 to 15000 (15 gaps of 1000), is off the CPU
#      15500-45500, launches at 46000 (gap 31000, switched), 47000 (1000), is off
#      47500-48500, launches at 49000 (2000, switched) and 50000 (1000):
#      20 launches, 19 pairs, 2 switches, 31000 ns off-CPU.
#  102 launches at 100, 40100 (gap 40000, no switch: the application), 40300 (200).
#  100 (main) is off 55000-56000: not a launching thread, so not in its counts.
# Process 200 ("worker", one thread): launches at 5000 and 6000, off 5500-5800.
# IRQs: hard 300 + 500 ns, soft TIMER 500 + 700, NET_RX 1000; entries carry 0.
# The last event is at 100000: runtime 100000 ns.
ROWS = [launch(t, 101) for t in range(0, 16000, 1000)] + [
    launch(100, 102),
    launch(5000, 200, pid=200, comm="worker"),
    switch(5500, 200, out=True, comm="worker"),
    switch(5800, 200, out=False, comm="worker"),
    launch(6000, 200, pid=200, comm="worker"),
    "15200,syncEnter,100,101,python,0,,,,,,,,,0,0",
    "15400,syncExit,100,101,python,0,,,,,,,,,0,0",
    switch(15500, 101, out=True),
    launch(40100, 102), launch(40300, 102),
    switch(45500, 101, out=False),
    launch(46000, 101), launch(47000, 101),
    switch(47500, 101, out=True),
    switch(48500, 101, out=False),
    launch(49000, 101), launch(50000, 101),
    switch(55000, 100, out=True), switch(56000, 100, out=False),
    irq(60000, "hardirqEntry", 24, "nvme0q1", 0), irq(60300, "hardirqExit", 24, "nvme0q1", 300),
    irq(70000, "softirqEntry", 1, "TIMER", 0), irq(70500, "softirqExit", 1, "TIMER", 500),
    irq(80000, "softirqEntry", 3, "NET_RX", 0), irq(81000, "softirqExit", 3, "NET_RX", 1000),
    irq(90000, "softirqEntry", 1, "TIMER", 0), irq(90700, "softirqExit", 1, "TIMER", 700),
    irq(99500, "hardirqEntry", 24, "nvme0q1", 0), irq(100000, "hardirqExit", 24, "nvme0q1", 500),
]


@pytest.fixture
def original(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    return path


@pytest.fixture
def result(original):
    proc = scx_gpu("analyze", str(original), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["trace"]


def test_rows_are_ragged_as_the_original_writes_them(original):
    lengths = {len(line.split(",")) for line in original.read_text().splitlines()[1:]}
    assert lengths == {16, 19}


def test_switch_rows_belong_to_their_process_through_the_thread_id(original):
    frame = tracefile.read(original)[0]
    switches = frame[frame.event_type == "schedSwitch"]
    assert dict(zip(switches.tid, switches.pid, strict=True)) == {101: 100, 100: 100, 200: 200}
    outs = switches[switches.prev_tid == 101].timestamp_ns.tolist()
    ins = switches[switches.next_tid == 101].timestamp_ns.tolist()
    assert (outs, ins) == ([15500, 47500], [45500, 48500])


def test_basic_metrics(result):
    assert result["runtime_s"] == pytest.approx(1e-4) and result["launches"] == 25
    python, worker = result["processes"]
    assert (python["pid"], python["comm"], worker["pid"], worker["comm"]) == (
        100, "python", 200, "worker")
    assert python["launches"] == 23                      # 20 of 101, 3 of 102
    assert python["launches_per_s"] == pytest.approx(230_000)
    assert python["context_switches"] == 2               # 101's two switch-outs
    assert python["switch_rate_hz"] == pytest.approx(20_000)  # 2 / 100 us
    assert python["off_cpu_ms"] == pytest.approx(0.031)  # 30000 + 1000 ns
    assert python["off_cpu_pct"] == pytest.approx(15.5)  # 31000 / (100000 x 2 threads)
    assert python["sched_per_1k_launches"] == pytest.approx(2000 / 23)
    assert worker["launches"] == 2 and worker["context_switches"] == 1
    assert worker["off_cpu_ms"] == pytest.approx(0.0003)
    assert worker["sched_per_1k_launches"] == pytest.approx(500)


def test_launch_pairs_with_and_without_a_switch(result):
    pairs = result["processes"][0]["launch_pairs"]
    assert pairs["pairs"] == 21                          # 19 of 101, 2 of 102
    # With a switch: 31000 and 2000 ns. P50 16500; P90 2000 + 0.9 x 29000.
    assert pairs["with_switch"] == pytest.approx(
        {"count": 2, "share_pct": 200 / 21, "p50_us": 16.5, "p90_us": 28.1, "p99_us": 30.71})
    # Without: 200, 1000 x 17, 40000 (19 pairs); P99 at rank 17.82: 1000 + 0.82 x 39000.
    assert pairs["without_switch"] == pytest.approx(
        {"count": 19, "share_pct": 1900 / 21, "p50_us": 1.0, "p90_us": 1.0, "p99_us": 32.98})
    worker = result["processes"][1]["launch_pairs"]
    assert worker["with_switch"]["count"] == 1 and worker["without_switch"]["count"] == 0
    assert worker["with_switch"]["p50_us"] == pytest.approx(1.0)


def test_penalty_impact_and_tail_attribution(result):
    pairs = result["processes"][0]["launch_pairs"]
    assert pairs["preemption_penalty_us"] == pytest.approx(15.5)  # 16500 - 1000 ns
    assert pairs["scheduler_impact_pct"] == pytest.approx(31.0)   # 2 x 15500 / 100000
    # All 21 gaps sorted: 200, 1000 x 17, 2000, 31000, 40000. P95 (rank 19) = 31000:
    # the pairs at or above are 31000 (switched) and 40000 (the application's).
    assert pairs["tail_p95"] == pytest.approx(
        {"pairs": 2, "with_switch_pct": 50.0, "application_pct": 50.0})
    # P99 (rank 19.8) = 38200: only the 40000 gap, which had no switch.
    assert pairs["tail_p99"] == pytest.approx(
        {"pairs": 1, "with_switch_pct": 0.0, "application_pct": 100.0})
    worker = result["processes"][1]["launch_pairs"]
    assert worker["preemption_penalty_us"] == 0.0  # no pair without a switch to compare


def test_thread_metrics(result):
    t101, t102 = result["processes"][0]["threads"]
    assert (t101["tid"], t101["launches"], t101["context_switches"]) == (101, 20, 2)
    assert t101["off_cpu_pct"] == pytest.approx(31.0)
    assert t101["launch_pairs"]["with_switch"]["share_pct"] == pytest.approx(100 * 2 / 19)
    assert (t102["tid"], t102["launches"], t102["context_switches"]) == (102, 3, 0)


def test_irq_counts_time_and_rates(result):
    irq = result["irq"]
    assert irq["hardirq"] == pytest.approx({"count": 2, "total_us": 0.8, "mean_us": 0.4,
                                            "max_us": 0.5, "share_of_irq_pct": 80 / 3})
    assert irq["softirq"] == pytest.approx({"count": 3, "total_us": 2.2, "mean_us": 2.2 / 3,
                                            "max_us": 1.0, "share_of_irq_pct": 220 / 3})
    by_type = irq["softirq_by_type"]
    assert set(by_type) == {"TIMER", "NET_RX"}
    assert by_type["TIMER"] == pytest.approx({"count": 2, "total_us": 1.2, "mean_us": 0.6,
                                              "max_us": 0.7, "share_of_irq_pct": 40.0})
    assert by_type["NET_RX"] == pytest.approx({"count": 1, "total_us": 1.0, "mean_us": 1.0,
                                               "max_us": 1.0, "share_of_irq_pct": 100 / 3})
    assert irq["irq_time_pct_of_runtime"] == pytest.approx(3.0)   # 3000 / 100000
    assert irq["softirq_per_1k_launches"] == pytest.approx(120.0)  # 3 / 25 launches
    assert irq["hardirq_per_1k_launches"] == pytest.approx(80.0)   # 2 / 25


def test_table_and_perfetto_read_it_too(original, tmp_path):
    proc = scx_gpu("analyze", str(original))
    assert proc.returncode == 0, proc.stderr
    assert "python (100)" in proc.stdout and "worker (200)" in proc.stdout
    out = tmp_path / "t.json"
    assert scx_gpu("export-perfetto", str(original), str(out)).returncode == 0
    off = [e for e in json.loads(out.read_text())["traceEvents"] if e["name"] == "off-CPU"]
    assert sorted((e["tid"], e["dur"]) for e in off) == [(101, 1.0), (101, 30.0), (200, 0.3)]


@pytest.mark.parametrize("last", ["0,0", f"{T0},{T0 + 5}"])
def test_switch_without_one_direction_is_a_one_line_error(tmp_path, last):
    path = tmp_path / "bad.csv"
    path.write_text(f"{HEADER}\n{launch(0, 101)}\n10,schedSwitch,101,101,python,0,,,,,,,,,"
                    f"{last}\n")
    assert_one_line_error(scx_gpu("analyze", str(path)), 2, [str(path), "line 3"])


def test_degradation_against_an_original_baseline(original, tmp_path):
    # The scenario lacks 101's launches at 1000-10000 ns: python makes 13 launches in
    # the same 100 us instead of 23, 130,000/s against 230,000/s: (23 - 13) / 23.
    scenario = tmp_path / "scenario.csv"
    dropped = {launch(t, 101) for t in range(1000, 11000, 1000)}
    scenario.write_text("\n".join([HEADER, *(r for r in ROWS if r not in dropped)]) + "\n")
    proc = scx_gpu("analyze", str(scenario), "--baseline", str(original), "--format",
                   "markdown")
    assert proc.returncode == 0, proc.stderr
    rate = next(line for line in proc.stdout.splitlines() if line.startswith("| launches/s"))
    cells = [c.strip() for c in rate.strip("|").split("|")]
    assert cells[1:4] == ["230,000.00", "130,000.00", f"{100 * 10 / 23:.2f}"]
