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
    stats.batch_throttled_ns, stats.floor_dispatches, stats.site_hits[2] = 5 * 10**8, 3, 99
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


APPLIED = {
    "network": [{"dev": "eth0", "link_bps": 9_500_000_000, "rest_guaranteed_bps": 9_025_000_000,
                 "batch_guaranteed_bps": 475_000_000, "batch_ceil_bps": 10**9}],
    "cgroup_settings": [
        {"cgroup": "/sys/fs/cgroup/scx-gpu/batch", "file": "io.weight", "value": "default 10"},
        {"cgroup": "/sys/fs/cgroup/scx-gpu/batch", "file": "io.max",
         "value": "259:0 wbps=52428800"},
        {"cgroup": "/sys/fs/cgroup/scx-gpu/batch", "file": "memory.high", "value": "4294967296"},
        {"cgroup": '/sys/fs/cgroup/odd "name"', "file": "memory.low", "value": "max"}],
    "irqs": [{"irq": 24, "names": ["nvme0q1"], "before": "0-7", "after": "4-7", "why": ""},
             {"irq": 25, "names": ["nvme0q2", "eth0-rx-0"], "before": "0-3", "after": "4-7",
              "why": ""},
             {"irq": 26, "names": ["nvme0q0"], "before": "0", "after": None,
              "why": "the kernel manages its affinity"}],
}


def samples_of(snap: metrics.Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.render(snap)) for s in f.samples}


def test_colocation_renders_every_mechanism_with_its_values():
    snap = snapshot()
    snap.colocation = APPLIED
    samples = samples_of(snap)
    eth0 = (("dev", "eth0"),)
    assert samples[("scx_gpu_net_link_bits_per_second", eth0)] == 9.5e9
    assert samples[("scx_gpu_net_rest_guaranteed_bits_per_second", eth0)] == 9.025e9
    assert samples[("scx_gpu_net_batch_ceil_bits_per_second", eth0)] == 1e9
    batch = (("cgroup", "/sys/fs/cgroup/scx-gpu/batch"),)
    assert samples[("scx_gpu_batch_io_weight", batch)] == 10
    assert samples[("scx_gpu_memory_high_bytes", batch)] == 4 << 30
    assert samples[("scx_gpu_memory_low_bytes", (("cgroup", '/sys/fs/cgroup/odd "name"'),))
                   ] == float("inf")
    assert samples[("scx_gpu_cgroup_setting_info", (*batch, ("file", "io.max"),
                                                    ("value", "259:0 wbps=52428800")))] == 1
    assert samples[("scx_gpu_irqs_moved", ())] == 2
    assert samples[("scx_gpu_irqs_left", ())] == 1
    info = "scx_gpu_irq_steered_info"
    assert samples[(info, (("after", "4-7"), ("before", "0-3"), ("handlers", "nvme0q2,eth0-rx-0"),
                           ("irq", "25"), ("why", "")))] == 1
    assert samples[(info, (("after", ""), ("before", "0"), ("handlers", "nvme0q0"), ("irq", "26"),
                           ("why", "the kernel manages its affinity")))] == 1


def test_nothing_applied_adds_no_colocation_family():
    names = {name for name, _ in samples_of(snapshot())}
    assert not [n for n in names if n.startswith(("scx_gpu_net_", "scx_gpu_irq",
                                                  "scx_gpu_cgroup", "scx_gpu_memory",
                                                  "scx_gpu_batch_io"))], names


def test_the_fallback_has_no_tier_counters():
    snap = snapshot()
    snap.tiers, snap.enabled = False, False
    names = {name for name, _ in samples_of(snap)}
    assert not [n for n in names if n.startswith(("scx_gpu_tier_", "scx_gpu_wait_"))], names
    assert {"scx_gpu_detector_hits_total", "scx_gpu_batch_quota_ratio",
            "scx_gpu_enabled"} <= names
