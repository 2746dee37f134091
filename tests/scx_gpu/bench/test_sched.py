"""bench sched's plan, verdict and result directory, on made-up rows (the runs
need the VM)."""

import io
import json

import pandas as pd
import pytest
from rich.console import Console

from scx_gpu.bench import matrix, results, sched
from scx_gpu.controlplane.topology import NPROC
from tests.helpers import assert_one_line_error, scx_gpu

# label: (tokens/s, hogs' CPU %)
FIGURES = {
    "alone (stock)": (200.0, 0.0), "stock": (80.0, 70.0), "hogs nice 19": (190.0, 31.0),
    "hogs SCHED_IDLE": (180.0, 30.0), "launcher nice -20": (196.0, 32.0),
    "alone (scx-gpu fair)": (198.0, 0.0), "alone (scx-gpu)": (194.0, 0.0),
    "scx-gpu, hogs batch": (192.0, 28.0), "scx-gpu, undeclared": (170.0, 40.0),
    sched.DETECTOR_CELL: (150.0, 0.0), sched.FAST_HOGS_CELL: (135.0, 45.0),
}
LABELS = {key: label for label, key in sched.CELLS.items()}


def rows(reps=2):
    """What matrix.run_cell writes for each cell of the plan."""
    out = []
    for cell in sched.plan(reps, 5.0):
        name = (cell.workload or sched.workload(5.0)).name
        tokens, hogs = FIGURES[LABELS[(name, cell.noise, cell.policy.name)]]
        row = {"workload": name, "traced": cell.traced, "noise": cell.noise,
               "policy": cell.policy.name, "rep": cell.rep, "tokens_per_s": tokens,
               "token_ms_p50": 4.0, "token_ms_p99": 10.0, "metric": "tokens/s",
               "launches": 5000, "noise_cpu_s": hogs / 10, "noise_cpu_pct": hogs, "wall_s": 7.0}
        if cell.policy.loads_sched_ext:
            row.update(probe_hits_per_launch=0.004 + 0.002 * cell.rep, gpu_tier_cpu_share=0.99)
        out.append(row)
    return out


def test_the_plan_is_every_cell_untraced_reps_interleaved():
    cells = sched.plan(2, 5.0)
    assert len(cells) == 2 * len(sched.CELLS)
    assert [c.rep for c in cells] == [0] * len(sched.CELLS) + [1] * len(sched.CELLS)
    assert not any(c.traced for c in cells)
    assert {c.cpu_hogs for c in cells} == {2 * NPROC}
    assert len({c.name for c in cells}) == len(cells)  # one trace/progress name each
    (fast,) = {c.workload for c in cells if c.workload}
    assert fast.name == sched.FAST and fast.argv[-len(sched.FAST_SHAPE):] == sched.FAST_SHAPE
    assert fast.argv[fast.argv.index("--threads") + 1] == "1"
    run = sched.workload(5.0).argv
    assert run[run.index("--threads") + 1] == str(NPROC)


def test_the_verdict_from_the_standard_summary():
    checks = sched.verdict(results.summarise(pd.DataFrame(rows())))
    assert checks == pytest.approx({
        "best_mainline_knob_relative": 0.98,  # the launcher at nice -20
        "gpu_first_undeclared_vs_best_knob_pts": -13.0,
        "gpu_first_declared_vs_best_knob_pts": -2.0,
        "batch_cpu_vs_sched_idle_pts": -2.0,
        "detector_cost_pct": 100 * (1 - 194 / 198),
        "scheduler_overhead_pct": 1.0,
        "probe_hits_per_launch_pct": 0.5,
        "gpu_tier_cpu_share": 0.99,
        "fast_launcher_undeclared_relative": 0.9,
    })


def test_the_table_judges_the_fast_launcher_against_nothing():
    summary = results.summarise(pd.DataFrame(rows(1)))
    text = io.StringIO()
    Console(file=text, width=200).print(sched.render(summary, sched.verdict(summary)))
    lines = {line.split("\u2502")[1].strip(): line.split("\u2502")[2:-1]
             for line in text.getvalue().splitlines() if line.count("\u2502") == 6}
    assert [c.strip() for c in lines["stock"]] == ["80.0", "40.0%", "10.00 ms", "70.0%"]
    assert [c.strip() for c in lines[sched.DETECTOR_CELL]] == ["150.0", "", "10.00 ms", "0.0%"]


def write_sched_dir(path):
    path.mkdir()
    cells = sched.plan(2, 5.0)
    matrix.write_marker(path, sched.workload(5.0), cells, 5.0)
    results.save(path, rows())
    return path


def test_the_result_directory_round_trips(tmp_path):
    out = write_sched_dir(tmp_path / "sched")
    run = results.load(out)
    pd.testing.assert_frame_equal(run.rows, pd.DataFrame(rows()))
    saved = json.loads((out / results.SUMMARY).read_text())
    assert len(saved) == len(sched.CELLS)
    fast = next(c for c in saved if c["workload"] == sched.FAST)
    assert fast["traced"] is False and fast["probe_hits_per_launch"] == pytest.approx(0.005)
    fast_cell = next(c for c in sched.plan(1, 5.0) if c.workload)
    assert fast_cell.workload is not None
    assert run.config["cell_workloads"] == {sched.FAST: list(fast_cell.workload.argv)}


def test_bench_compare_reads_a_bench_sched_directory(tmp_path):
    out = write_sched_dir(tmp_path / "sched")
    proc = scx_gpu("bench", "compare", str(out), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    cells = {(c["workload"], c["noise"], c["policy"]): c for c in json.loads(proc.stdout)[str(out)]}
    assert cells[("synthetic", "spin", "stock")]["degradation_pct"] == pytest.approx(60.0)
    assert cells[(sched.FAST, "none", "scx-gpu-undeclared")]["tokens_per_s"] == 150.0
    table = scx_gpu("bench", "compare", str(out), str(out), "--format", "markdown")
    assert table.returncode == 0, table.stderr
    # The workload column is shown (the cells differ in it), tracing's is not.
    assert "| workload | noise | policy | tokens/s |" in table.stdout
    assert f"| {sched.FAST} | none | scx-gpu-undeclared | 150.0 |" in table.stdout


def test_bench_sched_without_sched_ext_says_where_to_run_it(tmp_path):
    out = tmp_path / "sched"
    assert_one_line_error(scx_gpu("bench", "sched", "-o", str(out)), 1, [
        "policy fair, scx-gpu-undeclared, scx-gpu needs a kernel with sched_ext", "scx-gpu vm"])
    assert not out.exists()
