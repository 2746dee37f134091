"""The `scx-gpu` command line."""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from scx_gpu import __version__
from scx_gpu.colocation_options import as_settings, colocation_options
from scx_gpu.controlplane import bounds, config, runstate, tiers
from scx_gpu.errors import ScxGpuError, UsageError

if TYPE_CHECKING:
    from scx_gpu.vm.kernel import Kernel

LIBBPF_LOG_TAIL = 40
# Defaults shown in --help, as the configuration has them.
DEFAULT = config.Config()
STATUS_STYLE = {"ok": "green", "warn": "yellow", "missing": "red", "info": "cyan"}


class _Commands(click.Group):
    """Each command imports what it runs, the bench group included: `run` and
    `load` start without rich, pandas and the VM tooling (seconds under
    emulation)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "bench"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "bench":
            from scx_gpu.bench.cli import bench_group

            return bench_group
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scx-gpu")
def cli() -> None:
    """GPU-aware sched_ext scheduling: GPU-launching threads first, batch on idle CPU."""


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_cmd(as_json: bool) -> None:
    """Report kernel features, libraries and interference settings."""
    from rich.console import Console
    from rich.table import Table

    from scx_gpu import doctor

    findings = doctor.run_checks()
    if as_json:
        click.echo(json.dumps({"checks": [f.as_dict() for f in findings]}, indent=2))
        return
    table = Table(title="scx-gpu doctor")
    for column in ("check", "value", "status", "detail"):
        table.add_column(column)
    for f in findings:
        value = f.value if isinstance(f.value, str) else json.dumps(f.value)
        style = STATUS_STYLE[f.status]
        table.add_row(f.name, value, f"[{style}]{f.status}[/{style}]", f.detail)
    Console().print(table)


@cli.group("vm")
def vm_group() -> None:
    """The sched_ext test VM: try scx-gpu on a kernel without sched_ext."""


def _kernel(path: Path | None) -> "Kernel":
    from scx_gpu.vm import kernel as vm_kernel

    return vm_kernel.user_kernel(path) if path else vm_kernel.debian_kernel()


kernel_option = click.option(
    "--kernel", "kernel_path", type=click.Path(path_type=Path, dir_okay=False),
    envvar="SCX_GPU_VM_KERNEL",
    help="Boot this bzImage (must have sched_ext) instead of Debian's cloud kernel.")


@vm_group.command("kernel")
@kernel_option
@click.option("--vmlinux-h", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the kernel's BTF as a C header (vmlinux.h) here.")
def vm_kernel_cmd(kernel_path: Path | None, vmlinux_h: Path | None) -> None:
    """Resolve, download, verify and cache a kernel with sched_ext."""
    from scx_gpu.vm import kernel as vm_kernel

    k = _kernel(kernel_path)
    click.echo(f"{k.vmlinuz}\t{k.version}\t{k.origin}")
    if vmlinux_h:
        vm_kernel.write_vmlinux_h(k, vmlinux_h)
        click.echo(f"wrote {vmlinux_h}")


@vm_group.command("image")
def vm_image_cmd() -> None:
    """Build (or reuse) the guest root filesystem with this project installed."""
    from scx_gpu.vm import image as vm_image
    from scx_gpu.vm import kernel as vm_kernel

    path = vm_image.ensure_image(vm_kernel.debian_kernel())
    click.echo(f"{path}\t{path.stat().st_size >> 20} MiB")


@vm_group.command("run", context_settings={"ignore_unknown_options": True})
@kernel_option
@click.option("--cpus", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Virtual CPUs.")
@click.option("--topology", "topology", metavar="sockets=S,cores=C,threads=T",
              help="Emulate this CPU topology (S x C x T vCPUs, replacing --cpus), "
                   "with one NUMA node per socket sharing --mem equally.")
@click.option("--mem", default="1G", show_default=True, help="Guest memory (QEMU syntax).")
@click.option("--image", "image_path", envvar="SCX_GPU_VM_IMAGE",
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Boot this guest image (from `scx-gpu vm image`) instead of building "
                   "one: on a machine that cannot build it (no apt, no network).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds before the VM is stopped.")
@click.option("--copy", "copies", multiple=True, metavar="SRC:DST",
              help="Copy a host file or folder into the guest (repeatable).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Copy the guest's /job/out here afterwards (also after a timeout: "
                   "what the guest wrote and synced).")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def vm_run_cmd(kernel_path: Path | None, cpus: int, topology: str | None, mem: str,
               image_path: Path | None, timeout: float, copies: tuple[str, ...],
               out_dir: Path | None, cmd: tuple[str, ...]) -> None:
    """Boot the VM and run CMD as root in it; exit with CMD's status."""
    from scx_gpu.vm import image as vm_image
    from scx_gpu.vm import runner as vm_runner
    from scx_gpu.vm import topology as vm_topology

    parsed = [vm_runner.parse_copy(c) for c in copies]
    topo = vm_topology.parse(topology) if topology else None
    if topo:
        source = click.get_current_context().get_parameter_source("cpus")
        if source is not click.core.ParameterSource.DEFAULT and cpus != topo.cpus:
            raise UsageError(f"--cpus {cpus} and --topology {topology} ({topo.cpus} vCPUs) "
                             "disagree: give one of them")
        vm_topology.qemu_args(topo, mem)  # bad --mem for the nodes: say so before booting
        cpus = topo.cpus
    k = _kernel(kernel_path)
    image = image_path or vm_image.ensure_image(k)
    spec = vm_runner.VmSpec(k.vmlinuz, image, cpus=cpus, mem=mem,
                            timeout=timeout, copies=parsed, out_dir=out_dir, topology=topo)
    result = vm_runner.run(cmd, spec)
    click.echo(f"scx-gpu vm: {k.version}, {result.accel}, boot {result.boot_s:.1f}s, "
               f"total {result.total_s:.1f}s, exit {result.exit_code}", err=True)
    sys.exit(result.exit_code)


def _members(cgroups: tuple[str, ...], comms: tuple[str, ...], pids: tuple[int, ...],
             ) -> config.TierMembers | None:
    if not (cgroups or comms or pids):
        return None
    return config.TierMembers(list(cgroups), list(comms), list(pids))


def _quota(value: str | None) -> int | str | None:
    """--quota and `quota set`: a percentage, or auto."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"quota {value!r}: {config.QUOTA_VALUES}") from None


@cli.command("load")
@click.option("--policy", type=str,
              help=f"One of: {', '.join(config.POLICIES)} [{DEFAULT.policy}].")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file; flags override it.")
@click.option("--quota", callback=lambda ctx, param, value: _quota(value),
              help=f"Batch share of all CPUs per period, {bounds.MIN_QUOTA_PCT}-100 "
                   f"[{DEFAULT.quota}], or 'auto' (a closed loop on the gpu tier's wait p99).")
@click.option("--gpu-wait-target", "gpu_wait_target_us", type=float,
              help=f"quota auto: the gpu tier's wait p99 to hold, in us "
                   f"[{DEFAULT.gpu_wait_target_us:g}].")
@click.option("--auto-quota-min", type=int,
              help=f"quota auto: the lowest quota [{DEFAULT.auto_quota_min}].")
@click.option("--auto-quota-max", type=int,
              help=f"quota auto: the highest quota [{DEFAULT.auto_quota_max}].")
@click.option("--period-ms", type=int, help=f"Batch quota period [{DEFAULT.period_ms}].")
@click.option("--floor-ms", type=int,
              help=f"Longest wait of a normal or batch task [{DEFAULT.floor_ms}].")
@click.option("--gpu-ttl-ms", type=int,
              help="How long a launch keeps a thread in the gpu tier (up to 3 times"
              f" that while probes are slow to attach) [{DEFAULT.gpu_ttl_ms}].")
@click.option("--scope", type=str,
              help=f"Tag the launching 'thread' or 'process' [{DEFAULT.scope}].")
@click.option("--detect-window-ms", type=int,
              help=f"Launch probes attached this long ... [{DEFAULT.detect_window_ms}]")
@click.option("--detect-period-ms", type=int,
              help=f"... once per this period [{DEFAULT.detect_period_ms}].")
@click.option("--gpu-budget", "gpu_budget_pct", type=int,
              help="Share of all CPUs that tagged threads may take, % "
                   f"[{DEFAULT.gpu_budget_pct}]; beyond it they run in the normal tier.")
@click.option("--gpu-proc-budget", "gpu_proc_budget_pct", type=int,
              help="The same for one process's tagged threads, % "
                   f"[{DEFAULT.gpu_proc_budget_pct}].")
@click.option("--cuda-lib", "cuda_libs", multiple=True, help="Also probe this libcuda (repeat).")
@click.option("--trusted-lib-dir", "trusted_lib_dirs", multiple=True,
              help="Probe a libcuda that processes map from under this folder, a container "
                   "root say (repeat); others only from the linker cache and driver paths.")
@click.option("--rescan-s", type=float,
              help=f"Look for new libcuda files this often [{DEFAULT.rescan_s:g}].")
@click.option("--gpu-allow", multiple=True,
              help="Only these may enter the gpu tier by launching (repeat): a user name or "
                   "UID, or a cgroup path (with a '/'; its subtree too). Default: anyone.")
@click.option("--batch-cgroup", multiple=True, help="cgroup v2 path whose tasks are batch.")
@click.option("--batch-comm", multiple=True, help="Task name, or 'prefix*', that is batch.")
@click.option("--batch-pid", type=int, multiple=True, help="Thread/process id that is batch.")
@click.option("--gpu-cgroup", multiple=True, help="cgroup v2 path whose tasks are gpu tier.")
@click.option("--gpu-comm", multiple=True, help="Task name, or 'prefix*', that is gpu tier.")
@click.option("--gpu-pid", type=int, multiple=True, help="Thread/process id that is gpu tier.")
@click.option("--sched-idle-batch/--no-sched-idle-batch", default=None,
              help="Put SCHED_IDLE tasks in the batch tier.")
@click.option("--gpu-smt", type=str,
              help="'exclusive': keep batch off the SMT sibling of a CPU running a gpu "
                   f"thread; 'shared': no such rule [{DEFAULT.gpu_smt}].")
@click.option("--gpu-cpus", type=str,
              help="CPU list (e.g. 32-63) that all gpu work, and the rest of its cgroups, "
                   "prefers; default: the CPUs local to the GPUs each process uses.")
@click.option("--fallback", type=str,
              help="Without sched_ext: 'refuse', 'auto' (mainline mechanisms when "
                   f"sched_ext is missing) or 'mainline' (always) [{DEFAULT.fallback}].")
@click.option("--takeover/--no-takeover", default=None,
              help="When scx_loader runs a scheduler: stop it, and start it again on exit "
                   "(default: refuse).")
@click.option("--metrics-addr", help="Serve Prometheus text on [HOST:]PORT (loopback "
                                     "unless HOST is given) at /metrics.")
@click.option("--stats-interval", "stats_interval_s", type=click.FloatRange(min=0.1),
              help=f"Seconds between statistics lines [{DEFAULT.stats_interval_s:g}].")
@click.option("--quiet", is_flag=True, help="No periodic statistics.")
@click.option("--json", "as_json", is_flag=True, help="Statistics as JSON lines.")
@click.option("--print-config", is_flag=True, help="Print the effective configuration and exit.")
@click.option("--monitor", type=click.FloatRange(min=0.1),
              help="Do not load: print the running scheduler's statistics every MONITOR s.")
@colocation_options
def load_cmd(config_path: Path | None, cuda_libs: tuple[str, ...],
             trusted_lib_dirs: tuple[str, ...], gpu_allow: tuple[str, ...],
             batch_cgroup: tuple[str, ...],
             batch_comm: tuple[str, ...],
             batch_pid: tuple[int, ...], gpu_cgroup: tuple[str, ...], gpu_comm: tuple[str, ...],
             gpu_pid: tuple[int, ...], quiet: bool, as_json: bool, print_config: bool,
             monitor: float | None, **flags: object) -> None:
    """Load the scheduler and run it in the foreground (Ctrl-C detaches)."""
    from scx_gpu.controlplane import loader, stats_socket

    if monitor:
        stats_socket.monitor(monitor, click.echo, as_json)
        return
    flags["sched_idle_batch"] = flags.pop("sched_idle_batch")
    flags["cuda_libs"] = list(cuda_libs) or None
    flags["trusted_lib_dirs"] = list(trusted_lib_dirs) or None
    flags["gpu_allow"] = list(gpu_allow) or None
    flags["batch"] = _members(batch_cgroup, batch_comm, batch_pid)
    flags["gpu"] = _members(gpu_cgroup, gpu_comm, gpu_pid)
    as_settings(flags)
    cfg = config.build(config_path, flags)
    if print_config:
        click.echo(json.dumps(cfg.as_dict(), indent=2))
        return
    sys.exit(loader.Loader(cfg, lambda line: click.echo(line, err=line.startswith("scx-gpu:")),
                           quiet=quiet, as_json=as_json).run())


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status_cmd(as_json: bool) -> None:
    """sched_ext state, the running scx-gpu scheduler's tiers, statistics and quota."""
    from scx_gpu import status

    report = status.collect()
    click.echo(json.dumps(report, indent=2) if as_json else status.render(report))


@cli.group("quota")
def quota_group() -> None:
    """Read or change the batch tier's CPU quota of the running scheduler."""


@quota_group.command("get")
def quota_get_cmd() -> None:
    """Print the batch quota (percent of all CPUs), its period and its mode."""
    from scx_gpu.controlplane.running import RunningScheduler

    with RunningScheduler() as sched:
        click.echo(sched.quota_line())


@quota_group.command("set")
@click.argument("quota")
def quota_set_cmd(quota: str) -> None:
    """Set the batch quota to QUOTA, a percentage of all CPUs (at once and
    fixed from then on) or 'auto' (the closed loop takes over from here)."""
    value = _quota(quota)
    if isinstance(value, int):
        config.check_quota_pct(value)
    from scx_gpu.controlplane.running import RunningScheduler

    with RunningScheduler() as sched:
        sched.set_quota(value if isinstance(value, int) else "auto")
    click.echo(f"batch quota set to {value}%" if isinstance(value, int)
               else "batch quota set to auto")


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--tier", type=click.Choice(sorted(tiers.RUN_TIERS)), required=True,
              help="Tier to run CMD in.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(tier: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in a tier of the running scheduler; exit with CMD's status."""
    state = runstate.run_state()
    if state.get("mode") == runstate.FALLBACK_MODE:
        from scx_gpu.controlplane import fallback

        fallback.exec_in_fallback(tier, list(cmd), Path(state["batch_group"]))
    tiers.exec_in_tier(tier, list(cmd))


@cli.command("trace", context_settings={"ignore_unknown_options": True})
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("trace"),
              show_default=True, help="Trace directory (Parquet) or file (CSV) to write.")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet",
              show_default=True)
@click.option("--pid", "pids", type=int, multiple=True, help="Trace this process (repeat).")
@click.option("--comm", "comms", multiple=True, help="Trace processes with this name.")
@click.option("--cgroup", "cgroups", multiple=True, help="Trace processes in this cgroup.")
@click.option("--duration", type=click.FloatRange(min=0.1), help="Stop after this many seconds.")
@click.option("--cuda-lib", "cuda_libs", multiple=True, help="Also probe this libcuda.")
@click.option("--cudart-lib", "cudart_libs", multiple=True,
              help="Probe this libcudart too (runtime layer, tagged; not counted twice).")
@click.option("--ring-mb", type=int, default=64, show_default=True,
              help="Ring buffer size (a power of two).")
@click.option("--overhead", is_flag=True,
              help="Run CMD untraced first, then traced, and report the difference.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def trace_cmd(output: Path, fmt: str, pids: tuple[int, ...], comms: tuple[str, ...],
              cgroups: tuple[str, ...], duration: float | None, cuda_libs: tuple[str, ...],
              cudart_libs: tuple[str, ...], ring_mb: int, overhead: bool,
              cmd: tuple[str, ...]) -> None:
    """Trace CUDA launches, context switches and IRQs (of CMD, if given)."""
    from scx_gpu.bench import overhead as tracer_overhead
    from scx_gpu.tracer import capture, tracefile
    from scx_gpu.tracer.events import driver_launches

    spec = capture.CaptureSpec(list(pids), list(comms), list(cgroups), list(cmd), duration,
                               list(cuda_libs), list(cudart_libs), ring_mb)
    capture.check(spec)
    if output.exists():
        raise UsageError(f"{output} exists: remove it or choose another --output")
    if not (spec.selective or duration):
        click.echo("scx-gpu trace: tracing every process that launches; Ctrl-C stops",
                   err=True)
    def log(line: str) -> None:
        click.echo(f"scx-gpu trace: {line}", err=True)

    if overhead:
        if not cmd:
            raise UsageError("--overhead needs a command to run: scx-gpu trace --overhead -- CMD")
        result, report = tracer_overhead.measure(spec, log)
        result.meta["overhead"] = report
        log("overhead: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    else:
        result = capture.capture(spec, log)
    tracefile.write(output, tracefile.to_frame(result.events), result.meta, fmt)
    launches = driver_launches(result.events)
    click.echo(f"scx-gpu trace: {len(result.events)} events ({launches} launches), "
               f"{result.meta['drops']} dropped, written to {output}", err=True)
    if result.exit_status is not None:
        sys.exit(result.exit_status)


@cli.command("analyze")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path),
              help="A trace of the same job without the noise: side by side, degradation.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown", "html"]),
              default="table", show_default=True)
@click.option("--plots", type=click.Path(path_type=Path, file_okay=False),
              help="Write PNG plots here: launch gaps, a timeline, IRQ time by type.")
def analyze_cmd(trace: Path, baseline: Path | None, fmt: str, plots: Path | None) -> None:
    """Launch pairs, preemption penalty, tails, IRQs, per process and thread."""
    from scx_gpu.tracer import analysis, report, tracefile

    def load(path: Path) -> tuple[dict[str, object], object]:
        frame, meta = tracefile.read(path)
        if frame.empty:
            raise UsageError(f"{path}: the trace has no events")
        return analysis.analyse(frame, meta), frame

    result, frame = load(trace)
    click.echo(report.render(result, load(baseline)[0] if baseline else None, fmt))
    if plots:
        from scx_gpu.tracer import plots as tracer_plots

        for path in tracer_plots.write_all(frame, plots):  # type: ignore[arg-type]
            click.echo(f"scx-gpu analyze: wrote {path}", err=True)
    drops = result["drops"]
    if drops:
        click.echo(f"scx-gpu analyze: {drops} events were dropped while tracing", err=True)


@cli.command("export-perfetto")
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
def export_perfetto_cmd(trace: Path, out: Path) -> None:
    """Write TRACE as Chrome/Perfetto trace-event JSON (open it in ui.perfetto.dev)."""
    from scx_gpu.tracer import perfetto, tracefile

    frame, _ = tracefile.read(trace)
    out.write_text(json.dumps(perfetto.export(frame)))
    click.echo(f"scx-gpu: wrote {out}", err=True)


@cli.command("install-service")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=Path("/"),
              show_default=True, help="Install under this root (a package build, a test).")
def install_service_cmd(root: Path) -> None:
    """Install the systemd unit (scx-gpu.service) and /etc/default/scx-gpu."""
    from scx_gpu import install

    for line in install.install(root):
        click.echo(f"scx-gpu: {line}")


def main() -> None:
    """Entry point: one-line errors, exit 2 for bad input and 1 for the environment."""
    try:
        cli.main(prog_name="scx-gpu", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("scx-gpu: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"scx-gpu: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except ScxGpuError as exc:
        for line in getattr(exc, "log", [])[-LIBBPF_LOG_TAIL:]:
            click.echo(line, err=True)  # the verifier's reasons, before our one line
        click.echo(f"scx-gpu: error: {_one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)


def _one_line(message: str) -> str:
    """Messages may quote input (a file's bytes): any line break becomes a space."""
    return " ".join(message.split())
