import click
import pytest

from scx_gpu import __version__
from scx_gpu.cli import cli
from scx_gpu.controlplane.config import Config
from tests.helpers import assert_one_line_error, leftovers, scx_gpu


def _command_paths(group=cli, prefix=()):
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        yield (*prefix, name)
        yield from _command_paths(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_command_paths()], ids=lambda p: " ".join(p) or "scx-gpu")
def test_help_on_every_command(path):
    proc = scx_gpu(*path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: scx-gpu")


def test_load_help_shows_the_configuration_defaults():
    default = Config()
    options = {p.opts[0]: p.help or "" for p in cli.commands["load"].params
               if isinstance(p, click.Option)}
    shown = ("policy", "quota", "gpu_wait_target_us", "auto_quota_min", "auto_quota_max",
             "period_ms", "floor_ms", "gpu_ttl_ms", "scope", "detect_window_ms",
             "detect_period_ms", "rescan_s", "fallback", "stats_interval_s", "net_share_pct",
             "gpu_budget_pct", "gpu_proc_budget_pct", "gpu_smt")
    flag = {"gpu_wait_target_us": "--gpu-wait-target", "stats_interval_s": "--stats-interval",
            "gpu_budget_pct": "--gpu-budget", "gpu_proc_budget_pct": "--gpu-proc-budget"}
    for name in shown:
        value = getattr(default, name)
        text = f"[{value:g}]" if isinstance(value, float) else f"[{value}]"
        option = flag.get(name, "--" + name.replace("_", "-"))
        assert text in " ".join(options[option].split()), (option, options[option])


def test_gpu_smt_takes_shared_or_exclusive(tmp_path):
    proc = scx_gpu("load", "--gpu-smt", "exclusive", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "exclusive" in proc.stdout
    toml = tmp_path / "c.toml"
    toml.write_text('gpu_smt = "exclusive"\n')
    assert "exclusive" in scx_gpu("load", "--config", str(toml), "--print-config").stdout
    assert_one_line_error(scx_gpu("load", "--gpu-smt", "half", "--print-config"), 2,
                          ["gpu_smt", "shared, exclusive"])


def test_gpu_cpus_takes_a_cpu_list():
    proc = scx_gpu("load", "--gpu-cpus", "4-7,1", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert '"gpu_cpus": "4-7,1"' in proc.stdout
    assert_one_line_error(scx_gpu("load", "--gpu-cpus", "7-4", "--print-config"), 2,
                          ["7-4", "backwards"])
    assert_one_line_error(scx_gpu("load", "--gpu-cpus", ",", "--print-config"), 2,
                          ["gpu_cpus", "at least one CPU"])


def test_version():
    proc = scx_gpu("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"scx-gpu, version {__version__}"


def test_unknown_command_is_one_line_exit_2():
    assert_one_line_error(scx_gpu("frobnicate"), 2, ["frobnicate"])


def test_vm_run_rejects_zero_cpus():
    assert_one_line_error(scx_gpu("vm", "run", "--cpus", "0", "--", "true"), 2, ["--cpus"])


def test_vm_run_rejects_missing_copy_source(tmp_path):
    missing = tmp_path / "nope"
    proc = scx_gpu("vm", "run", "--copy", f"{missing}:/root/x", "--", "true")
    assert_one_line_error(proc, 2, [str(missing), "does not exist"])


def test_vm_run_rejects_a_file_that_is_no_kernel(tmp_path):
    junk = tmp_path / "bzImage"
    junk.write_bytes(b"\0" * 4096)
    proc = scx_gpu("vm", "run", "--kernel", str(junk), "--", "true")
    assert_one_line_error(proc, 2, ["not an x86 bzImage"])


def test_vm_run_rejects_a_kernel_without_sched_ext(tmp_path):
    # A bzImage-shaped file whose compressed payload is an ELF without the
    # sched_ext_ops type: what a kernel built without sched_ext looks like.
    import gzip

    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    image += gzip.compress(b"\x7fELF" + b"\0" * 4096 + b"struct task_struct")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bytes(image))
    proc = scx_gpu("vm", "run", "--kernel", str(kernel), "--", "true")
    assert_one_line_error(proc, 2, ["no sched_ext"])
    assert not leftovers(proc)
