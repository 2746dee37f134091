"""The `scx-gpu` command line."""

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from scx_gpu import __version__, doctor
from scx_gpu.errors import ScxGpuError
from scx_gpu.vm import image as vm_image
from scx_gpu.vm import kernel as vm_kernel
from scx_gpu.vm import runner as vm_runner

STATUS_STYLE = {"ok": "green", "warn": "yellow", "missing": "red", "info": "cyan"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scx-gpu")
def cli() -> None:
    """GPU-aware sched_ext scheduling: GPU-launching threads first, batch on idle CPU."""


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_cmd(as_json: bool) -> None:
    """Report kernel features, libraries and interference settings."""
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


def _kernel(path: Path | None) -> vm_kernel.Kernel:
    return vm_kernel.user_kernel(path) if path else vm_kernel.debian_kernel()


kernel_option = click.option(
    "--kernel", "kernel_path", type=click.Path(path_type=Path, dir_okay=False),
    help="Boot this bzImage (must have sched_ext) instead of Debian's cloud kernel.")


@vm_group.command("kernel")
@kernel_option
@click.option("--vmlinux-h", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the kernel's BTF as a C header (vmlinux.h) here.")
def vm_kernel_cmd(kernel_path: Path | None, vmlinux_h: Path | None) -> None:
    """Resolve, download, verify and cache a kernel with sched_ext."""
    k = _kernel(kernel_path)
    click.echo(f"{k.vmlinuz}\t{k.version}\t{k.origin}")
    if vmlinux_h:
        vm_kernel.write_vmlinux_h(k, vmlinux_h)
        click.echo(f"wrote {vmlinux_h}")


@vm_group.command("image")
def vm_image_cmd() -> None:
    """Build (or reuse) the guest root filesystem with this project installed."""
    path = vm_image.ensure_image()
    click.echo(f"{path}\t{path.stat().st_size >> 20} MiB")


@vm_group.command("run", context_settings={"ignore_unknown_options": True})
@kernel_option
@click.option("--cpus", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Virtual CPUs.")
@click.option("--mem", default="1G", show_default=True, help="Guest memory (QEMU syntax).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds before the VM is stopped.")
@click.option("--copy", "copies", multiple=True, metavar="SRC:DST",
              help="Copy a host file or folder into the guest (repeatable).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Copy the guest's /job/out here afterwards.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def vm_run_cmd(kernel_path: Path | None, cpus: int, mem: str, timeout: float,
               copies: tuple[str, ...], out_dir: Path | None, cmd: tuple[str, ...]) -> None:
    """Boot the VM and run CMD as root in it; exit with CMD's status."""
    parsed = [vm_runner.parse_copy(c) for c in copies]
    k = _kernel(kernel_path)
    spec = vm_runner.VmSpec(k.vmlinuz, vm_image.ensure_image(), cpus=cpus, mem=mem,
                            timeout=timeout, copies=parsed, out_dir=out_dir)
    result = vm_runner.run(cmd, spec)
    click.echo(f"scx-gpu vm: {k.version}, {result.accel}, boot {result.boot_s:.1f}s, "
               f"total {result.total_s:.1f}s, exit {result.exit_code}", err=True)
    sys.exit(result.exit_code)


def main() -> None:
    """Entry point: one-line errors, exit 2 for bad input and 1 for the environment."""
    try:
        cli.main(prog_name="scx-gpu", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("scx-gpu: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"scx-gpu: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except ScxGpuError as exc:
        click.echo(f"scx-gpu: error: {exc}", err=True)
        sys.exit(exc.exit_code)
