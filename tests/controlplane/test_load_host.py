"""`scx-gpu load` and friends on the host kernel (no sched_ext there)."""

import json
import time
from pathlib import Path

import pytest

from scx_gpu.controlplane import cgroups, intf, loader, stats, tiers
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.detector import Detector
from tests.helpers import assert_one_line_error, scx_gpu

HAS_SCX = Path("/sys/kernel/sched_ext/state").exists()


@pytest.mark.root
@pytest.mark.skipif(HAS_SCX, reason="this host has sched_ext: covered by the VM tests")
def test_load_refuses_on_a_kernel_without_sched_ext():
    assert_one_line_error(scx_gpu("load"), 1, ["has no sched_ext", "scx-gpu vm"])


def test_unknown_policy_lists_the_valid_ones():
    assert_one_line_error(scx_gpu("load", "--policy", "turbo"), 2, ["gpu-first, fair"])


def test_malformed_toml(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("policy = 'gpu-first\n")
    assert_one_line_error(scx_gpu("load", "--config", str(bad)), 2, ["malformed TOML"])


def test_unknown_setting(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("quotaa = 10\n")
    assert_one_line_error(scx_gpu("load", "--config", str(bad)), 2, ["unknown settings quotaa"])


@pytest.mark.parametrize("quota", ["-1", "9", "101"])
def test_quota_out_of_range(quota):
    assert_one_line_error(scx_gpu("load", "--quota", quota), 2, ["outside 10-100"])
    assert_one_line_error(scx_gpu("quota", "set", "--", quota), 2, ["outside 10-100"])


def test_quota_auto_bad_input(tmp_path):
    assert_one_line_error(scx_gpu("load", "--quota", "lots"), 2, ["10-100, or 'auto'"])
    assert_one_line_error(scx_gpu("quota", "set", "lots"), 2, ["10-100, or 'auto'"])
    assert_one_line_error(scx_gpu("load", "--quota", "auto", "--fallback", "mainline"), 2,
                          ["fixed --quota"])
    assert_one_line_error(scx_gpu("load", "--quota", "auto", "--auto-quota-min", "60",
                                  "--auto-quota-max", "40"), 2, ["min <= max"])
    cfg = tmp_path / "c.toml"
    cfg.write_text("quota = 'most'\n")
    assert_one_line_error(scx_gpu("load", "--config", str(cfg)), 2, ["10-100, or 'auto'"])
    cfg.write_text("quota = 'auto'\ngpu_wait_target_us = 200\n")
    effective = json.loads(scx_gpu("load", "--config", str(cfg), "--print-config").stdout)
    assert effective["quota"] == "auto" and effective["gpu_wait_target_us"] == 200


def test_print_config_flags_win_over_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("quota = 20\nfloor_ms = 700\n[batch]\ncomms = ['make']\n")
    proc = scx_gpu("load", "--config", str(cfg), "--quota", "40", "--print-config")
    assert proc.returncode == 0, proc.stderr
    effective = json.loads(proc.stdout)
    assert effective["quota"] == 40 and effective["floor_ms"] == 700
    assert effective["batch"]["comms"] == ["make"]
    assert effective["policy"] == "gpu-first"


def test_quota_get_without_a_running_scheduler():
    proc = scx_gpu("quota", "get")
    assert proc.returncode == 1
    assert "is `scx-gpu load` running?" in proc.stderr


def test_bad_metrics_addr():
    assert_one_line_error(scx_gpu("load", "--metrics-addr", "host:"), 2, ["--metrics-addr"])


def test_an_error_exit_names_each_tiers_queue_from_the_dump():
    info = intf.ExitInfo(kind=intf.EXIT_ERROR, exit_code=0, reason=b"runnable task stall",
                         msg=b"kworker/0:1[42] failed to run for 21.0s",
                         dump=b"sh[1] triggered exit kind 1026:\n  runnable task stall\n\n"
                              b"  scx_gpu: tier gpu: 0 queued, oldest waiter pid -1, runnable"
                              b" for 0 ms\n  scx_gpu: tier normal: 9 queued, oldest waiter pid"
                              b" 42, runnable for 21000 ms\n\nCPU states\n")
    lines = loader.exit_message(info).splitlines()
    assert lines[0].endswith("runnable task stall: kworker/0:1[42] failed to run for 21.0s")
    assert lines[1:] == ["  scx_gpu: tier gpu: 0 queued, oldest waiter pid -1, runnable for 0 ms",
                         "  scx_gpu: tier normal: 9 queued, oldest waiter pid 42, runnable for "
                         "21000 ms"]


def test_gpu_allow_parses_users_ids_and_cgroups(tmp_path):
    assert tiers.gpu_allow(["root", "1000"]) == ([0, 1000], [])
    root = cgroups.CGROUP_ROOT
    assert tiers.gpu_allow([f"{root}/"]) == ([], [root.stat().st_ino])
    assert_one_line_error(scx_gpu("load", "--fallback", "mainline", "--gpu-allow", "no-such-user"),
                          2, ["no such user", "needs a '/'"])
    assert_one_line_error(scx_gpu("load", "--fallback", "mainline", "--gpu-allow", "/no/such"),
                          2, ["does not exist"])


class FastPolls(Detector):
    """A detector whose window is always open: it asks for a tick every ms."""

    ticks = 0

    def tick(self) -> None:
        self.ticks += 1

    def poll_s(self, idle_s: float) -> float:
        return 0.001


def test_the_loop_does_its_other_work_every_poll_not_at_each_fast_tick():
    # Under emulation each turn of the other work (ejection, libcuda files,
    # homes, statistics) cost the gpu-tier control plane 1-3 ms of a vCPU.
    detector = FastPolls(lambda lib, symbols: ([], []), lambda link: None, 0.1, 1.0)
    turns: list[float] = []
    started = time.monotonic()

    def ejected() -> intf.ExitInfo | None:
        turns.append(time.monotonic())
        return intf.ExitInfo(kind=intf.EXIT_ERROR) if turns[-1] - started > 0.35 else None

    load = loader.Loader(Config(), lambda line: None, quiet=True)
    info = load._loop(detector, None, lambda interval_s: stats.FallbackSummary(
        0, 0, 0, 0, None, 0, 0, 0, 0), ejected=ejected)
    assert info is not None and info.kind == intf.EXIT_ERROR
    assert 2 <= len(turns) <= 6, turns  # every POLL_S (0.1 s) over 0.35 s
    assert detector.ticks >= 3 * len(turns), (detector.ticks, len(turns))
