"""Orchestration of `scx-gpu bench run` on the host (stock policies only:
the host kernel has no sched_ext; the VM test runs scx-gpu's)."""

import json
import os
import subprocess
import time
import uuid

import pandas as pd
import pytest

from scx_gpu.bench import matrix, noise, policies, results, scenario, workloads
from scx_gpu.controlplane import intf, stats
from scx_gpu.controlplane.cgroups import CGROUP_ROOT, processes
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.errors import UsageError
from tests.helpers import assert_one_line_error, leftovers, scx_gpu


def test_plan_interleaves_reps():
    stock, nice = policies.POLICIES["stock"], policies.POLICIES["gpu-nice"]
    cells = matrix.plan(["cpu", "none"], [stock, nice], 2)  # the baseline goes first
    assert [c.name for c in cells] == [
        "none_stock_r0", "none_gpu-nice_r0", "cpu_stock_r0", "cpu_gpu-nice_r0",
        "none_stock_r1", "none_gpu-nice_r1", "cpu_stock_r1", "cpu_gpu-nice_r1"]


def test_cells_of_their_own_workload_or_untraced_are_named_so():
    stock = policies.POLICIES["stock"]
    fast = workloads.synthetic(1.0, threads=1, name="fast")
    cells = matrix.repeat([matrix.Cell("none", stock, 0, traced=False),
                           matrix.Cell("none", stock, 0, workload=fast)], 2)
    assert [c.name for c in cells] == ["none_stock_untraced_r0", "fast_none_stock_r0",
                                       "none_stock_untraced_r1", "fast_none_stock_r1"]


def _totals(hits: int, gpu_ns: int) -> dict[str, object]:
    counters = intf.Stats()
    counters.site_hits[0] = hits
    counters.tier[intf.Tier.GPU].runtime_ns = gpu_ns
    return stats.Summary(0, counters, 50, 0).as_dict()


def test_the_detector_figures_come_from_the_counters_status_reports():
    # The keys the bench reads are those `status` writes (a key renamed on one side
    # alone would read as nothing).
    before, after = _totals(10, 10**9), _totals(60, 4 * 10**9)
    assert matrix.detector_figures(before, after, 10_000, 4.0) == {
        "probe_hits_per_launch": pytest.approx(0.005), "gpu_tier_cpu_share": pytest.approx(0.75)}
    # A workload that does not count its launches: no hits per launch.
    assert matrix.detector_figures(before, after, None, 4.0) == {
        "gpu_tier_cpu_share": pytest.approx(0.75)}


def test_only_scx_gpus_sched_ext_policies_have_its_counters():
    loads = {name for name, p in policies.POLICIES.items() if p.loads_sched_ext}
    assert loads == {"scx-gpu", "scx-gpu-undeclared", "fair", "scx-gpu-isolated"}
    assert matrix.counters(policies.POLICIES["fallback"]) is None


@pytest.mark.parametrize("htb", [True, False])
def test_the_isolated_policy_asks_load_for_every_mechanism(htb):
    proc = scx_gpu("load", "--print-config", *policies.isolation_args(htb))
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    disk = os.stat(noise.DISK_DIR.parent).st_dev
    if htb:
        assert cfg["net_isolate"] and cfg["net_devs"] == ["lo"] and cfg["batch_net_rate"], cfg
    else:  # a kernel without HTB: no shaping, and no error for the lack of it
        assert not cfg["net_isolate"], cfg
    assert cfg["batch_io_weight"] == policies.BATCH_IO_WEIGHT, cfg
    assert cfg["batch_io_max"] == [f"{os.major(disk)}:{os.minor(disk)} "
                                   f"{policies.BATCH_IO_MAX}"], cfg
    assert cfg["batch_mem_high"] and cfg["gpu_mem_low"] == "max", cfg
    assert cfg["irq_steer"] and cfg["irq_avoid_cpus"] == policies.PIN_CPUS, cfg


def test_metric_from_json_line_or_wall_time():
    printed = 'hello\n{"tokens_per_s": 12.5, "token_us_p50": 2000, "token_us_p99": 9000}\n'
    assert workloads.metric(printed, 3.0) == {"tokens_per_s": 12.5, "token_ms_p50": 2.0,
                                              "token_ms_p99": 9.0, "metric": "tokens/s"}
    counted = '{"tokens_per_s": 1, "launches": 5000}'
    assert workloads.metric(counted, 3.0)["launches"] == 5000
    # The probe hits count the warm-up's launches too: so must their denominator.
    warmed = '{"tokens_per_s": 1, "launches": 5000, "thread_launches": [3000, 4000]}'
    assert workloads.metric(warmed, 3.0)["launches"] == 7000
    assert workloads.metric("done\n", 4.0) == {"tokens_per_s": 0.25, "token_ms_p50": 4000.0,
                                               "token_ms_p99": 4000.0, "metric": "runs/s"}


def test_noise_commands_fall_back_to_builtins(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    for kind in ("cpu", "net", "disk"):
        (cmd,) = noise.commands(kind)
        assert cmd[1:4] == ["-m", "scx_gpu.bench.noisegen", kind], cmd
    assert len(noise.commands("heavy")) == 3 and noise.commands("none") == []


def test_cpu_hog_count(monkeypatch):
    for tool, count_at in (("stress-ng", 2), (None, 5)):
        monkeypatch.setattr("shutil.which", lambda name, tool=tool: tool)
        assert noise.commands("cpu")[0][count_at] == ("0" if tool else str(NPROC))
        assert noise.commands("cpu", 32)[0][count_at] == "32"
        assert noise.commands("heavy", 32)[0][count_at] == "32"
    cells = matrix.plan(["none", "cpu"], [policies.POLICIES["stock"]], 1, cpu_hogs=32)
    assert {c.cpu_hogs for c in cells} == {32}


def test_noise_cgroup_layouts(tmp_path, monkeypatch):
    assert noise.cgroup_for("own") == noise.NOISE_CGROUP
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/job.scope\n")
    assert noise.cgroup_for("shared", proc) == (
        CGROUP_ROOT / "system.slice" / "job.scope" / noise.NOISE_NAME)
    # In the root cgroup with the cpu controller on below it, a child would
    # compete as one entity: that is `own`, not `shared`.
    monkeypatch.setattr(noise, "CGROUP_ROOT", tmp_path)
    (tmp_path / "cgroup.subtree_control").write_text("cpuset cpu io memory\n")
    proc.write_text("0::/\n")
    with pytest.raises(UsageError, match="competes as one entity"):
        noise.cgroup_for("shared", proc)
    with pytest.raises(UsageError, match="own, shared"):
        noise.cgroup_for("nearby", proc)


def test_bad_input(tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("hello")
    out = str(tmp_path / "out")
    cases = [
        (["--workload", "nope", "-o", out], 2, ["unknown workload 'nope'", "synthetic"]),
        (["--noise", "cpu,loud", "-o", out], 2, ["unknown noise 'loud'", "heavy"]),
        (["--policy", "stock,magic", "-o", out], 2, ["unknown policy 'magic'", "batch-idle"]),
        (["--workload", "cmd", "-o", out], 2, ["needs the command"]),
        (["--noise", "cpu", "--policy", "stock", "-o", out], 2, ["must include none"]),
        (["--cpu-hogs", "-1", "-o", out], 2, ["--cpu-hogs", ">=0"]),
        (["--policy", "stock", "-o", str(stranger)], 2, ["not a bench result"]),
        (["--policy", "scx-gpu", "-o", out], 1, ["needs a kernel with sched_ext", "scx-gpu vm"]),
        (["--policy", "stock,fallback", "--noise-cgroup", "shared", "-o", out], 2,
         ["policy fallback declares the noise's cgroup", "--noise-cgroup own"]),
    ]
    for args, code, needles in cases:
        assert_one_line_error(scx_gpu("bench", "run", *args), code, needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.root
def test_noise_runs_in_its_cgroup_and_stops_to_the_last_process():
    with noise.running("heavy"):
        before = noise.cpu_seconds("heavy")
        time.sleep(2)
        used = noise.cpu_seconds("heavy") - before
        procs = (noise.NOISE_CGROUP / "cgroup.procs").read_text().split()
    assert used > 0.5 and len(procs) >= 3, (used, procs)
    assert (noise.NOISE_CGROUP / "cgroup.procs").read_text().strip() == ""
    assert not noise.DISK_DIR.exists()


@pytest.mark.root
def test_small_matrix_end_to_end_on_the_host(tmp_path):
    out = tmp_path / "run"
    proc = scx_gpu("bench", "run", "--noise", "none,cpu",
                   "--policy", "stock,gpu-nice,fallback-undeclared", "--reps", "1",
                   "--duration", "1", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not leftovers(proc)
    rows = pd.read_parquet(out / results.RESULTS)
    assert len(rows) == 6 and set(rows.policy) == {"stock", "gpu-nice", "fallback-undeclared"}
    assert (rows.tokens_per_s > 0).all() and (rows.launches > 0).all(), rows
    assert (rows.drops == 0).all()
    assert (rows[rows.noise == "cpu"].noise_cpu_s > 0.5).all(), rows.noise_cpu_s
    assert (rows[rows.noise == "none"].noise_cpu_s == 0).all()
    for trace in rows.trace:
        assert (out / trace / "events.parquet").is_file()
    summary = json.loads((out / results.SUMMARY).read_text())
    assert {(c["noise"], c["policy"]) for c in summary} == {
        (n, p) for n in ("none", "cpu") for p in ("stock", "gpu-nice", "fallback-undeclared")}
    assert next(c for c in summary if c["noise"] == "none" and c["policy"] == "stock")[
        "degradation_pct"] == 0.0
    config = json.loads((out / results.MARKER).read_text())
    assert config["workload"] == "synthetic" and config["reps"] == 1
    assert "degradation" in proc.stdout and "gpu-nice" in proc.stdout
    # Not a terminal: a line per cell says what runs (the live bar would not show).
    cells = [line for line in proc.stderr.splitlines() if line.startswith("scx-gpu bench: cell")]
    assert len(cells) == 6 and cells[0].startswith("scx-gpu bench: cell 1/6: "), proc.stderr


@pytest.mark.root
def test_shared_noise_runs_in_a_child_of_the_bench_cgroup(tmp_path):
    home = CGROUP_ROOT / f"scx-gpu-test-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    try:
        cmd = [*scenario.SCX_GPU, "bench", "run", "--noise", "none,cpu", "--policy",
               "stock,batch-idle", "--reps", "1", "--duration", "1", "--noise-cgroup", "shared",
               "-o", str(out)]
        proc = subprocess.run(scenario.in_cgroup(home, cmd), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        shared = home / noise.NOISE_NAME
        assert json.loads((out / results.MARKER).read_text())["noise_cgroup"] == str(shared)
        rows = pd.read_parquet(out / results.RESULTS)
        assert len(rows) == 4 and (rows[rows.noise == "cpu"].noise_cpu_s > 0.5).all(), rows
        assert not shared.exists()  # nothing left in the caller's cgroup
    finally:
        if home.is_dir():
            (home / "cgroup.kill").write_text("1")
            scenario.wait_for(lambda: not (home / "cgroup.procs").read_text().strip(), 10,
                              f"{home} to empty")
            for child in (home / noise.NOISE_NAME, home):
                if child.is_dir():
                    child.rmdir()


@pytest.mark.root
def test_noise_runs_at_its_policys_nice():
    with noise.running("cpu", cpu_hogs=1, nice=19):
        pids = processes(noise.NOISE_CGROUP)
        nices = {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids}
    assert len(pids) >= 2 and nices == {19}, (pids, nices)


@pytest.mark.root
def test_untraced_cells_and_a_cell_of_its_own_workload_on_the_host(tmp_path):
    out, stock = tmp_path / "run", policies.POLICIES["stock"]
    fast = workloads.synthetic(1.0, threads=1, name="fast",
                               shape=("--launches", "50", "--work-us", "100", "--gpu-wait-us", "0"))
    cells = [matrix.Cell("none", stock, 0, traced=False),
             matrix.Cell("cpu", policies.POLICIES["batch-nice"], 0, cpu_hogs=2, traced=False),
             matrix.Cell("none", stock, 0, traced=False, workload=fast)]
    matrix.run(cells, workloads.synthetic(1.0), out, 1.0, lambda *_: None, lambda _: None)
    rows = results.load(out).rows
    assert list(rows.workload) == ["synthetic", "synthetic", "fast"] and not rows.traced.any()
    assert (rows.tokens_per_s > 0).all() and (rows.launches > 0).all(), rows
    assert rows.noise_cpu_s[1] > 0.5 and "trace" not in rows and "drops" not in rows, rows
    # 50 launches a token against 10: launches over tokens/s, the runs equally long.
    assert rows.launches[2] / rows.tokens_per_s[2] > 4 * rows.launches[0] / rows.tokens_per_s[0]
    assert not (out / results.TRACES).exists()
    summary = results.summarise(rows)
    assert summary.loc[("fast", False, "none", "stock"), "degradation_pct"] == 0.0


@pytest.mark.root
def test_spin_noise_times_its_own_cpu_as_it_runs():
    with noise.running("spin", cpu_hogs=2):
        first, kernel_first = noise.cpu_seconds("spin"), noise.cpu_seconds("cpu")
        time.sleep(2)
        timed = noise.cpu_seconds("spin") - first
        kernel = noise.cpu_seconds("cpu") - kernel_first  # the same cgroup's cpu.stat
    # Outside sched_ext the kernel's CPU time is to be trusted: the two agree
    # (a gap under 0.5 ms counts as running: an interrupt, or another task
    # on a loaded host). The hogs need not get their 2 CPU-seconds (under
    # `nice -n 19` beside a VM they got 0.46), only enough to compare.
    assert timed > 0.2 and 0.8 * kernel <= timed <= 1.2 * kernel, (timed, kernel)
    assert not noise.SPIN_STATS.exists()
