"""`scx-gpu bench wakeup` on the host: its options, its JSON, the program's
own checks (stock only: the host kernel has no sched_ext; the VM run of
docs/results/vm/wakeup is the one with scx-gpu's policies)."""

import json
import subprocess
import sys

import pytest

from scx_gpu.bench import wakeup
from scx_gpu.workloads import program
from tests.helpers import assert_one_line_error, leftovers, scx_gpu


def test_json_report_counts_every_message(tmp_path):
    out = tmp_path / "wakeup.json"
    proc = scx_gpu("bench", "wakeup", "--policy", "stock", "--reps", "2", "--groups", "2",
                   "--pairs", "3", "--loops", "40", "--size", "64", "--mode", "thread",
                   "--format", "json", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not leftovers(proc)
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["kind"] == wakeup.KIND
    assert report["shape"] == {"groups": 2, "pairs": 3, "loops": 40, "size": 64,
                               "mode": "thread"}
    assert [(r["policy"], r["rep"]) for r in report["runs"]] == [("stock", 0), ("stock", 1)]
    for run in report["runs"]:
        assert run["messages"] == 2 * 3 * 3 * 40
        assert run["seconds"] > 0
        assert run["messages_per_s"] == pytest.approx(run["messages"] / run["seconds"], rel=1e-3)
        # Tasks block at the start gate and on empty or full pipes.
        assert run["voluntary_switches"] > 0, run
        assert run["involuntary_switches"] >= 0, run
    stock = report["summary"]["stock"]
    assert stock["reps"] == 2 and stock["vs_stock"] == 1.0
    assert "scx-gpu bench: wakeup 2/2: stock r1" in proc.stderr


def test_table_by_default_in_process_mode():
    proc = scx_gpu("bench", "wakeup", "--policy", "stock", "--reps", "1", "--loops", "20")
    assert proc.returncode == 0, proc.stderr
    assert "process mode" in proc.stdout and "stock" in proc.stdout, proc.stdout
    assert not leftovers(proc)


def test_summary_ratios_to_stock_in_run_order():
    runs = [{"policy": p, "rep": r, "seconds": s, "messages_per_s": m,
             "voluntary_switches": v, "involuntary_switches": i}
            for p, r, s, m, v, i in (("fair", 0, 2.0, 50.0, 10, 1), ("stock", 0, 1.0, 100.0, 5, 5),
                                     ("fair", 1, 2.0, 70.0, 20, 2), ("stock", 1, 1.0, 100.0, 5, 5))]
    summary = wakeup.summarise(runs)
    assert list(summary) == ["fair", "stock"]
    assert summary["fair"] == {"messages_per_s": 60.0, "messages_per_s_sd": 10.0,
                               "seconds": 2.0, "voluntary_switches": 15,
                               "involuntary_switches": 1.5, "reps": 2, "vs_stock": 0.6}
    without_stock = wakeup.summarise(runs[:1])
    assert "vs_stock" not in without_stock["fair"]


@pytest.mark.parametrize(("args", "needles"), [
    (["--policy", "nope"], ["unknown policy 'nope'"]),
    (["--mode", "fiber"], ["--mode"]),
    (["--size", "5000"], ["--size"]),
    (["--groups", "100", "--pairs", "21"], ["at most 2048", "2100"]),
])
def test_bad_options_are_one_line_exit_2(args, needles):
    assert_one_line_error(scx_gpu("bench", "wakeup", *args), 2, needles)


def test_a_scheduler_policy_needs_sched_ext_here():
    proc = scx_gpu("bench", "wakeup", "--policy", "stock,fair", "--reps", "1")
    assert_one_line_error(proc, 1, ["fair needs a kernel with sched_ext"])


@pytest.mark.parametrize("args", [["--size", "0"], ["--mode", "fiber"], ["--groups", "x"],
                                  ["--groups", "2049", "--pairs", "1"], ["extra"]])
def test_program_rejects_bad_arguments(args):
    proc = subprocess.run([str(program("wakebench")), *args], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("wakebench: "), proc.stderr
    assert proc.stdout == ""


def test_a_failing_program_fails_the_bench_with_its_message():
    # 20 pipes need 40 descriptors: more than a limit of 32 allows.
    proc = subprocess.run(["prlimit", "--nofile=32", sys.executable, "-m", "scx_gpu", "bench",
                           "wakeup", "--policy", "stock", "--reps", "1", "--pairs", "20"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("scx-gpu: error: wakebench under stock exited with status 1"), error
    assert "raise the open file limit" in error
