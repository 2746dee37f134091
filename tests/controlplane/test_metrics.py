"""The Prometheus exposition: rendered from fixed counters, parsed by a real parser."""

from prometheus_client.parser import text_string_to_metric_families

from scx_gpu.controlplane import metrics
from scx_gpu.controlplane.intf import Stats, Tier
from scx_gpu.errors import UsageError


def snapshot() -> metrics.Snapshot:
    stats = Stats()
    gpu = stats.tier[Tier.GPU]
    gpu.runtime_ns, gpu.runs, gpu.preemptions = 2_500_000_000, 40, 7
    gpu.wait_hist[9], gpu.wait_hist[12] = 30, 10   # < 1.024 us and < 8.192 us
    stats.batch_throttled_ns, stats.floor_dispatches, stats.detector_hits = 5 * 10**8, 3, 99
    return metrics.Snapshot(stats, quota_pct=30, duty_cycle=0.1, enabled=True)


def test_render_parses_with_exact_values():
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(snapshot()))}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("scx_gpu_tier_runtime_seconds_total", (("tier", "gpu"),))] == 2.5
    assert samples[("scx_gpu_tier_runs_total", (("tier", "gpu"),))] == 40
    assert samples[("scx_gpu_tier_preemptions_total", (("tier", "batch"),))] == 0
    assert families["scx_gpu_wait_seconds"].type == "histogram"
    bucket = "scx_gpu_wait_seconds_bucket"
    assert samples[(bucket, (("le", "1.024e-06"), ("tier", "gpu")))] == 30
    assert samples[(bucket, (("le", "8.192e-06"), ("tier", "gpu")))] == 40
    assert samples[(bucket, (("le", "+Inf"), ("tier", "gpu")))] == 40
    assert samples[("scx_gpu_batch_quota_ratio", ())] == 0.3
    assert samples[("scx_gpu_batch_throttled_seconds_total", ())] == 0.5
    assert samples[("scx_gpu_floor_dispatches_total", ())] == 3
    assert samples[("scx_gpu_detector_hits_total", ())] == 99
    assert samples[("scx_gpu_detector_duty_cycle_ratio", ())] == 0.1
    assert samples[("scx_gpu_enabled", ())] == 1


def test_addr_parsing():
    assert metrics.parse_addr("9464") == ("127.0.0.1", 9464)
    assert metrics.parse_addr("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert metrics.parse_addr("[::1]:9464") == ("::1", 9464)
    for bad in ("", "host:", "70000", "x:y"):
        try:
            metrics.parse_addr(bad)
        except UsageError as exc:
            assert "--metrics-addr" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
