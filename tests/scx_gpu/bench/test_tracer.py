"""`scx-gpu bench tracer` on the host kernel: its overhead as matrix cells."""

import json

import pytest

from scx_gpu.bench import results, tracer
from tests.helpers import scx_gpu


def test_the_overhead_cells_interleave_untraced_and_traced():
    cells = tracer.overhead_cells(2)
    assert [(c.rep, c.traced, c.noise, c.policy.name) for c in cells] == [
        (0, False, "none", "stock"), (0, True, "none", "stock"),
        (1, False, "none", "stock"), (1, True, "none", "stock")]


@pytest.mark.root
def test_bench_tracer_writes_a_result_directory_and_its_report(tmp_path):
    out = tmp_path / "tracer"
    proc = scx_gpu("bench", "tracer", "--reps", "1", "--seconds", "0.5", "--events", "1000",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = results.load(out).rows
    assert list(rows.traced) == [False, True] and (rows.tokens_per_s > 0).all(), rows
    report = json.loads((out / tracer.REPORT).read_text())
    assert set(report) == {"throughput", "reader", "probe_cost", "analysis", "overhead"}
    overhead = report["overhead"]
    assert overhead["untraced_tokens_per_s"] == rows.tokens_per_s[0]
    assert overhead["traced_tokens_per_s"] == rows.tokens_per_s[1]
    assert "tracer overhead on the launcher" in proc.stdout
