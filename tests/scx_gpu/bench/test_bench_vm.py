"""`scx-gpu bench run` in the sched_ext VM: the large effect, and Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

from scx_gpu.bench import noise, results
from scx_gpu.bench import scenario as sc
from scx_gpu.controlplane.fallback import SUBTREE_CONTROL
from scx_gpu.controlplane.topology import NPROC
from scx_gpu.workloads import SYNTHETIC_SHAPE
from tests.helpers import TOKEN_VAR, disabled, enabled, launcher, leftovers, scx_gpu

pytestmark = pytest.mark.vm


def test_small_matrix_shows_the_large_effect(tmp_path):
    out = tmp_path / "run"
    controllers = SUBTREE_CONTROL.read_text()
    # fallback: the mainline fallback with the noise's cgroup declared (cgroup v2 only).
    # scx-gpu-undeclared runs in the Ctrl-C test: 6 cells here, not 8.
    proc = scx_gpu("bench", "run", "--noise", "none,cpu",
                   "--policy", "stock,scx-gpu,fallback", "--reps", "1",
                   "--duration", "4", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not leftovers(proc) and disabled()
    # The fallback turned the cpu controller on for its group, and off again.
    assert SUBTREE_CONTROL.read_text() == controllers
    rows = pd.read_parquet(out / results.RESULTS)
    # scx-gpu's counters, in the rows of its sched_ext policy alone.
    counters = ["gpu_tier_cpu_share", "probe_hits_per_launch"]
    ours = rows.policy == "scx-gpu"
    assert len(rows) == 6 and rows.drop(columns=counters).notna().all().all(), rows
    assert rows[~ours][counters].isna().all().all(), rows
    assert (rows[ours].gpu_tier_cpu_share > 0).all(), rows
    assert rows[ours].probe_hits_per_launch.notna().all(), rows
    assert (rows.launches > 0).all() and (rows.drops == 0).all(), rows
    for trace in rows.trace:
        assert (out / trace / "events.parquet").is_file()
    compared = scx_gpu("bench", "compare", str(out), "--format", "json")
    assert compared.returncode == 0, compared.stderr
    cells = {(r["noise"], r["policy"]): r for r in json.loads(compared.stdout)[str(out)]}
    lost = {k: round(v["degradation_pct"], 1) for k, v in cells.items()}
    print(json.dumps({"degradation_pct": {"/".join(k): v for k, v in lost.items()}}))
    assert lost[("cpu", "scx-gpu")] <= lost[("cpu", "stock")] - 30, lost
    assert cells[("cpu", "scx-gpu")]["noise_cpu_pct"] > 5  # batch work still got done
    assert lost[("cpu", "fallback")] < lost[("cpu", "stock")], lost
    assert cells[("cpu", "fallback")]["noise_cpu_pct"] > 5


def test_idle_noise_yields_with_the_cpu_controller_on():
    # With the controller on (as on systemd hosts) the noise's cgroup is one
    # entity of normal weight: SCHED_IDLE alone would take half the CPUs.
    alone = _busy_tokens_per_s()
    SUBTREE_CONTROL.write_text("+cpu")
    try:
        with noise.running("cpu", idle=True):
            assert (noise.NOISE_CGROUP / "cpu.idle").read_text().strip() == "1"
            beside = _busy_tokens_per_s()
        assert (noise.NOISE_CGROUP / "cpu.idle").read_text().strip() == "0"
    finally:
        SUBTREE_CONTROL.write_text("-cpu")
    print(json.dumps({"alone": alone, "beside_idle_noise": beside}))
    assert beside >= 0.85 * alone, (alone, beside)


def _busy_tokens_per_s() -> float:
    return float(launcher("--duration", "4", "--threads", str(NPROC),
                          *SYNTHETIC_SHAPE)["tokens_per_s"])


def test_ctrl_c_stops_everything_and_keeps_completed_cells(tmp_path):
    out, token = tmp_path / "run", uuid.uuid4().hex
    # A real Ctrl-C reaches the whole foreground process group.
    bench = subprocess.Popen(
        [sys.executable, "-m", "scx_gpu", "bench", "run", "--noise", "none,cpu",
         "--policy", "scx-gpu-undeclared", "--reps", "2", "--duration", "3", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, TOKEN_VAR: token})
    sc.wait_for(lambda: (out / results.RESULTS).exists(), 120, "the first cell to complete")
    sc.wait_for(enabled, 60, "the second cell's scheduler")
    time.sleep(2)
    os.killpg(bench.pid, signal.SIGINT)
    _, err = bench.communicate(timeout=60)
    assert bench.returncode == 130, err
    assert "interrupted" in err and f"kept in {out}" in err, err
    sc.wait_for(disabled, 10, "the scheduler to detach")
    bench.token = token  # type: ignore[attr-defined]
    assert not leftovers(bench)  # type: ignore[arg-type]
    assert (noise.NOISE_CGROUP / "cgroup.procs").read_text().strip() == ""
    rows = pd.read_parquet(out / results.RESULTS)
    assert 1 <= len(rows) < 4 and rows.notna().all().all(), rows
    assert f"{len(rows)}/4" in err, err  # the progress bar counted the completed cells


def test_wakeup_under_gpu_first():
    # One scheduler load (about 12 s here); bench-sched loads fair.
    proc = scx_gpu("bench", "wakeup", "--policy", "stock,scx-gpu", "--reps", "1",
                   "--groups", "2", "--pairs", "4", "--loops", "50", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert not leftovers(proc) and disabled()
    report = json.loads(proc.stdout)
    summary = report["summary"]
    print(json.dumps({p: round(row["vs_stock"], 3) for p, row in summary.items()}))
    assert list(summary) == ["stock", "scx-gpu"]
    assert all(r["messages"] == 2 * 4 * 4 * 50 for r in report["runs"]), report["runs"]
    # Emulated timing: only a collapse counts (a stall, a watchdog exit).
    assert all(row["vs_stock"] > 0.2 for row in summary.values()), summary
