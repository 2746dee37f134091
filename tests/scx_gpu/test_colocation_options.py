"""`scx-gpu load`'s co-location options reach the configuration (flags and TOML)."""

import json

from tests.helpers import assert_one_line_error, scx_gpu


def test_flags_reach_the_configuration():
    proc = scx_gpu("load", "--print-config", "--net-isolate", "--net-dev", "eth0", "--net-dev",
                   "eth1", "--net-link-rate", "10gbit", "--net-share-pct", "90",
                   "--batch-net-rate", "1gbit", "--batch-io-weight", "10", "--batch-io-max",
                   "/dev/nvme0n1 wbps=50m", "--batch-mem-high", "25%", "--gpu-mem-low", "max",
                   "--irq-steer", "--irq-pattern", "mlx5*", "--irq-avoid-cpus", "0-7")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert {k: cfg[k] for k in ("net_isolate", "net_devs", "net_link_rate", "net_share_pct",
                                "batch_net_rate", "batch_io_weight", "batch_io_max",
                                "batch_mem_high", "gpu_mem_low", "irq_steer", "irq_patterns",
                                "irq_avoid_cpus")} == {
        "net_isolate": True, "net_devs": ["eth0", "eth1"], "net_link_rate": "10gbit",
        "net_share_pct": 90, "batch_net_rate": "1gbit", "batch_io_weight": 10,
        "batch_io_max": ["/dev/nvme0n1 wbps=50m"], "batch_mem_high": "25%",
        "gpu_mem_low": "max", "irq_steer": True, "irq_patterns": ["mlx5*"],
        "irq_avoid_cpus": "0-7"}


def test_everything_is_off_by_default():
    cfg = json.loads(scx_gpu("load", "--print-config").stdout)
    assert not (cfg["net_isolate"] or cfg["batch_io_weight"] or cfg["batch_io_max"]
                or cfg["batch_mem_high"] or cfg["gpu_mem_low"] or cfg["irq_steer"])


def test_toml_takes_the_same_names(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('net_isolate = true\nnet_devs = ["eth0"]\nirq_steer = true\n'
                    'irq_patterns = ["nvme*"]\nbatch_mem_high = "4G"\n')
    cfg = json.loads(scx_gpu("load", "--config", str(conf), "--print-config").stdout)
    assert (cfg["net_devs"], cfg["irq_patterns"], cfg["batch_mem_high"]) == (
        ["eth0"], ["nvme*"], "4G")
    conf.write_text('net_devs = "eth0"\n')
    assert_one_line_error(scx_gpu("load", "--config", str(conf), "--print-config"), 2,
                          ["net_devs"])


def test_out_of_range_settings_are_one_line_errors():
    assert_one_line_error(scx_gpu("load", "--print-config", "--net-share-pct", "0"), 2,
                          ["net_share_pct", "1-99"])
    assert_one_line_error(scx_gpu("load", "--print-config", "--batch-io-weight", "20000"), 2,
                          ["batch_io_weight", "1-10000"])
