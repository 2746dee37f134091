"""The compare arithmetic and report on fixed result files (exact numbers)."""

import json

import pandas as pd
import pytest

from scx_gpu.bench import compare, results
from scx_gpu.errors import UsageError
from tests.helpers import assert_one_line_error, scx_gpu

METRIC_COLUMNS = {"token_ms_p50": 1.0, "token_ms_p99": 2.0, "metric": "tokens/s",
                  "launches": 1000, "irq_per_1k": 3.0, "sched_per_1k": 4.0,
                  "preemption_penalty_us": 50.0, "rq_wait_p99_us": 60.0, "noise_cpu_s": 1.0,
                  "wall_s": 10.0, "trace": "traces/x"}


def write_run(path, rates, noise_cpu=None, workload="synthetic", drops=0):
    """A result dir: rates maps (noise, policy) to tokens/s per rep."""
    path.mkdir()
    (path / results.MARKER).write_text(json.dumps(
        {"kind": results.KIND, "workload": workload, "command": ["launcher"]}))
    rows = [{**METRIC_COLUMNS, "noise": n, "policy": p, "rep": rep, "tokens_per_s": rate,
             "drops": drops, "noise_cpu_pct": (noise_cpu or {}).get((n, p), 0.0)}
            for (n, p), reps in rates.items() for rep, rate in enumerate(reps)]
    pd.DataFrame(rows).to_parquet(path / results.RESULTS)
    return path


RATES = {("none", "stock"): [100.0, 100.0], ("none", "scx-gpu"): [98.0, 98.0],
         ("cpu", "stock"): [40.0, 60.0], ("cpu", "scx-gpu"): [95.0, 95.0]}


def cell(noise, policy):
    """A summary's key for a traced synthetic run (what write_run's rows are)."""
    return ("synthetic", True, noise, policy)


def test_summary_means_spread_and_degradation_vs_quiet_stock(tmp_path):
    run = results.load(write_run(tmp_path / "a", RATES, {("cpu", "scx-gpu"): 30.0}))
    table = results.summarise(run.rows)
    assert list(table.index) == [cell(*k) for k in RATES]
    assert table.loc[cell("cpu", "stock"), "tokens_per_s"] == 50.0
    assert table.loc[cell("cpu", "stock"), "tokens_sd"] == 10.0
    assert table.loc[cell("cpu", "stock"), "degradation_pct"] == 50.0
    assert table.loc[cell("cpu", "scx-gpu"), "degradation_pct"] == 5.0
    assert table.loc[cell("none", "scx-gpu"), "degradation_pct"] == pytest.approx(2.0)
    assert table.loc[cell("cpu", "scx-gpu"), "noise_cpu_pct"] == 30.0
    assert (table.reps == 2).all()


def test_a_run_without_workload_and_tracing_columns_was_traced(tmp_path):
    # Runs from before cells could differ in workload and tracing.
    run = results.load(write_run(tmp_path / "a", RATES, workload="torch"))
    assert set(run.rows.workload) == {"torch"} and run.rows.traced.all()


def test_each_workload_and_tracing_has_its_own_baseline():
    rows = pd.DataFrame([
        {"workload": w, "traced": t, "noise": n, "policy": "stock", "rep": 0,
         "tokens_per_s": rate}
        for w, t, quiet in (("synthetic", True, 100.0), ("synthetic", False, 200.0),
                            ("fast", False, 50.0))
        for n, rate in (("none", quiet), ("cpu", quiet / 2))])
    table = results.summarise(rows)
    assert (table.xs("cpu", level="noise").degradation_pct == 50.0).all(), table
    assert (table.xs("none", level="noise").degradation_pct == 0.0).all(), table
    assert "drops" not in table  # untraced cells count none


def test_without_stock_each_policy_is_its_own_baseline(tmp_path):
    rates = {k: v for k, v in RATES.items() if k[1] == "scx-gpu"}
    table = results.summarise(results.load(write_run(tmp_path / "a", rates)).rows)
    assert table.loc[cell("cpu", "scx-gpu"), "degradation_pct"] == pytest.approx(100 * 3 / 98)
    no_quiet = {k: v for k, v in RATES.items() if k[0] == "cpu"}
    with pytest.raises(UsageError, match="no baseline"):
        results.summarise(results.load(write_run(tmp_path / "b", no_quiet)).rows)


def test_differences_and_regressions(tmp_path):
    a = results.summarise(results.load(write_run(tmp_path / "a", RATES)).rows)
    worse = {**RATES, ("cpu", "scx-gpu"): [80.0, 80.0]}
    b = results.summarise(results.load(write_run(tmp_path / "b", worse)).rows)
    diff = compare.differences(a, b)
    assert diff.loc[cell("cpu", "scx-gpu"), "degradation_pct"] == pytest.approx(15.0)
    assert diff.loc[cell("cpu", "stock"), "degradation_pct"] == 0.0
    assert compare.regressions(diff, "degradation", 10.0) == [
        "cpu/scx-gpu: degradation_pct +15.00"]
    assert compare.regressions(diff, "degradation", 20.0) == []
    assert compare.regressions(-diff, "degradation", 10.0) == []  # an improvement


def test_compare_cli_reports_and_fails_on_regression(tmp_path):
    a = write_run(tmp_path / "a", RATES)
    b = write_run(tmp_path / "b", {**RATES, ("cpu", "scx-gpu"): [80.0, 80.0]})
    same = scx_gpu("bench", "compare", str(a), str(a), "--format", "json")
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert report["regressions"] == []
    assert list(report) == [f"A: {a}", f"B: {a}", "B - A", "regressions"]
    cell = next(r for r in report[f"A: {a}"] if r["noise"] == "cpu" and r["policy"] == "stock")
    assert cell["degradation_pct"] == 50.0
    out = tmp_path / "report.md"
    worse = scx_gpu("bench", "compare", str(a), str(b), "--format", "markdown", "-o", str(out),
                    "--threshold", "10")
    assert worse.returncode == 1, worse.stderr
    assert "cpu/scx-gpu: degradation_pct +15.00" in worse.stderr
    text = out.read_text()
    assert "| cpu | scx-gpu | 80.0 |" in text and "![degradation" in text
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    page = scx_gpu("bench", "compare", str(a), "--format", "html", "-o", str(tmp_path / "r.html"))
    assert page.returncode == 0 and "data:image/png;base64," in (tmp_path / "r.html").read_text()


def test_compare_bad_input(tmp_path):
    a = write_run(tmp_path / "a", RATES)
    other = write_run(tmp_path / "other", RATES, workload="torch")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("hello")
    assert_one_line_error(scx_gpu("bench", "compare", str(stranger)), 2,
                          ["not a bench result"])
    assert_one_line_error(scx_gpu("bench", "compare", str(a), str(other)), 2,
                          ["different workloads", "not comparable"])
    assert_one_line_error(scx_gpu("bench", "compare", str(tmp_path / "nope")), 2,
                          ["not a bench result"])
