"""`scx-gpu bench run|compare|wakeup|sched|tracer`: the benchmarks' command line.

pandas and the tracer are imported by the commands that use them, so that
the rest of the command line starts fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scx_gpu.bench import noise, policies, workloads
from scx_gpu.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from scx_gpu.bench import matrix

METRICS = ("batch-cpu", "degradation", "p99")  # compare.METRICS, without importing pandas

FC = TypeVar("FC", bound=Callable[..., Any])
EXIT_INTERRUPTED = 130
EXIT_REGRESSED = 1


def result_dir(text: str) -> Callable[[FC], FC]:
    """-o DIR, where a bench's cells are saved (scx_gpu.bench.results)."""
    return click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False),
                        required=True, help=text)


@click.group("bench")
def bench_group() -> None:
    """Before/after benchmark: a workload under noise, per scheduling policy."""


def _noises(names: str) -> list[str]:
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in noise.NOISES:
            raise UsageError(f"unknown noise {name!r}: choose from {', '.join(noise.NOISES)}")
    if not chosen:
        raise UsageError("--noise: name at least one noise scenario")
    return chosen


@bench_group.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--workload", "workload_name", default="synthetic", show_default=True,
              help=f"One of {', '.join(workloads.WORKLOADS)} (cmd: the command after --).")
@click.option("--noise", "noise_names", default="none,cpu", show_default=True,
              help=f"Comma-separated, from {', '.join(noise.NOISES)}.")
@click.option("--policy", "policy_names", default="stock,scx-gpu", show_default=True,
              help=f"Comma-separated, from {', '.join(policies.POLICIES)}.")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--cpu-hogs", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU hogs of the cpu and heavy noise (0: one per CPU).")
@click.option("--duration", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Measured seconds per cell (synthetic and torch).")
@result_dir("Result directory (new).")
@click.option("--cuda-lib", help="libcuda for the synthetic launcher (default: the stub).")
@click.option("--torch-mode", type=click.Choice(["eager", "graph"]), default="eager",
              show_default=True)
@click.option("--noise-cgroup", "noise_layout", type=click.Choice(noise.LAYOUTS), default="own",
              show_default=True,
              help="own: the noise in a cgroup below the root; shared: in a child of this "
                   "command's cgroup, competing with the workload task by task.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def run_cmd(workload_name: str, noise_names: str, policy_names: str, reps: int,
            cpu_hogs: int, duration: float, output: Path, cuda_lib: str | None, torch_mode: str,
            noise_layout: str, cmd: tuple[str, ...]) -> None:
    """Run every noise x policy cell REPS times, traced; results to -o DIR."""
    from scx_gpu.bench import compare, matrix, results

    chosen = policies.parse(policy_names)
    policies.check_noise_layout(chosen, noise_layout)
    cells = matrix.plan(_noises(noise_names), chosen, reps, cpu_hogs,
                        noise.cgroup_for(noise_layout))
    matrix.check_dir(output)
    workload = workloads.make(workload_name, duration, list(cmd), cuda_lib, torch_mode)
    policies.check_kernel(chosen)
    _run_cells(cells, workload, output, duration)
    run = results.load(output)
    compare.console().print(compare.rich_table(results.summarise(run.rows), str(output)))


def _run_cells(cells: list[matrix.Cell], workload: workloads.Workload, output: Path,
               duration: float) -> None:
    """matrix.run with a progress bar (a line per cell when not on a terminal);
    Ctrl-C exits 130, keeping the completed cells."""
    from scx_gpu.bench import matrix, results

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("bench", total=len(cells))

        def step(done: int, name: str) -> None:
            progress.update(task, description=name, completed=done)
            if not console.is_interactive:  # no live bar: a line per cell
                console.print(f"scx-gpu bench: cell {done + 1}/{len(cells)}: {name}")

        def log(line: str) -> None:
            if "no symbols" in line:
                progress.console.print(f"scx-gpu bench: {line}")

        try:
            matrix.run(cells, workload, output, duration, step, log)
        except KeyboardInterrupt:
            kept = len(results.load(output).rows) if (output / results.RESULTS).exists() else 0
            progress.stop()
            click.echo(f"scx-gpu bench: interrupted; {kept} completed cell(s) kept in {output}",
                       err=True)
            sys.exit(EXIT_INTERRUPTED)
        progress.update(task, completed=len(cells), description="done")


@bench_group.command("wakeup")
@click.option("--policy", "policy_names", default="stock,fair,scx-gpu", show_default=True,
              help=f"Comma-separated, from {', '.join(policies.POLICIES)}.")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--groups", type=click.IntRange(1, 2048), default=4, show_default=True,
              help="Groups of senders and receivers.")
@click.option("--pairs", type=click.IntRange(1, 2048), default=10, show_default=True,
              help="Senders, and receivers, per group.")
@click.option("--loops", type=click.IntRange(min=1), default=200, show_default=True,
              help="Messages from each sender to each receiver of its group.")
@click.option("--size", type=click.IntRange(1, 4096), default=100, show_default=True,
              help="Bytes a message.")
@click.option("--mode", type=click.Choice(["process", "thread"]), default="process",
              show_default=True, help="Senders and receivers as processes or threads.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the report as JSON here.")
def wakeup_cmd(policy_names: str, reps: int, groups: int, pairs: int, loops: int, size: int,
               mode: str, fmt: str, output: Path | None) -> None:
    """Wake-up and context-switch throughput (hackbench-like) per policy."""
    from scx_gpu.bench import wakeup

    chosen = policies.parse(policy_names)
    if 2 * groups * pairs > wakeup.MAX_TASKS:
        raise UsageError(f"--groups x --pairs: at most {wakeup.MAX_TASKS // 2} "
                         f"(each pair is two tasks), got {groups * pairs}")
    policies.check_kernel(chosen)
    console = Console(stderr=True)

    def step(done: int, total: int, name: str) -> None:
        console.print(f"scx-gpu bench: wakeup {done + 1}/{total}: {name}")

    report = wakeup.run(chosen, wakeup.Shape(groups, pairs, loops, size, mode), reps, step)
    text = json.dumps(report, indent=2)
    if output:
        output.write_text(text + "\n")
    if fmt == "json":
        click.echo(text)
        return
    table = Table(title=f"wakeup: {groups} x {pairs} pairs x {loops} messages of {size} B "
                        f"({mode} mode), {report['cpus']} CPUs")
    for column in ("policy", "messages/s", "sd", "seconds", "vs stock", "switches",
                   "preempted"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in report["summary"].items():
        ratio = f"{100 * row['vs_stock']:.1f}%" if "vs_stock" in row else "-"
        table.add_row(name, f"{row['messages_per_s']:.0f}", f"{row['messages_per_s_sd']:.0f}",
                      f"{row['seconds']:.3f}", ratio, f"{row['voluntary_switches']:.0f}",
                      f"{row['involuntary_switches']:.0f}")
    Console().print(table)


@bench_group.command("sched")
@click.option("--reps", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Measured seconds a run.")
@result_dir("Result directory (new); the verdict goes in it as checks.json.")
def sched_cmd(reps: int, duration: float, output: Path) -> None:
    """The scheduler against the mainline knobs (needs sched_ext: `make bench-sched`)."""
    from scx_gpu.bench import matrix, results, sched

    cells = sched.plan(reps, duration)
    matrix.check_dir(output)
    policies.check_kernel(list({c.policy.name: c.policy for c in cells}.values()))
    _run_cells(cells, sched.workload(duration), output, duration)
    summary = results.summarise(results.load(output).rows)
    checks = sched.verdict(summary)
    (output / sched.CHECKS).write_text(json.dumps(checks, indent=2) + "\n")
    Console().print(sched.render(summary, checks))


@bench_group.command("tracer")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0.5), default=3.0, show_default=True,
              help="Seconds a measured run.")
@click.option("--events", type=click.IntRange(min=1), default=10_000_000, show_default=True,
              help="Synthetic events the analysis is timed on.")
@result_dir("Result directory (new) of the overhead's cells; the rest goes in it as "
            "tracer.json.")
def tracer_cmd(reps: int, seconds: float, events: int, output: Path) -> None:
    """The tracer's reader throughput, overhead, probe cost and analysis time (root)."""
    from scx_gpu.bench import matrix, results, tracer

    matrix.check_dir(output)
    console = Console(log_path=False)
    console.log("overhead")
    _run_cells(tracer.overhead_cells(reps), tracer.workload(seconds), output, seconds)
    report = tracer.run(reps, seconds, events, console.log)
    report["overhead"] = tracer.overhead(results.summarise(results.load(output).rows))
    (output / tracer.REPORT).write_text(json.dumps(report, indent=2) + "\n")
    console.print(tracer.render(report))


@bench_group.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path), required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "html", "json"]),
              default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the report here (markdown: the plot goes beside it as .png).")
@click.option("--metric", type=click.Choice(METRICS), default="degradation",
              show_default=True, help="What counts as a regression from RUN_A to RUN_B.")
@click.option("--threshold", type=float, default=5.0, show_default=True,
              help="Regression past this many points (p99: ms) fails with exit 1.")
def compare_cmd(run_a: Path, run_b: Path | None, fmt: str, output: Path | None, metric: str,
                threshold: float) -> None:
    """Side-by-side table of RUN_A, or of RUN_A and RUN_B with differences."""
    from scx_gpu.bench import compare, results

    runs = [results.load(run_a)] + ([results.load(run_b)] if run_b else [])
    if run_b:
        compare.check_compatible(runs[0], runs[1])
    labels = [str(r.path) for r in runs] if len(runs) == 1 else [f"A: {run_a}", f"B: {run_b}"]
    tables = {label: results.summarise(r.rows) for label, r in zip(labels, runs, strict=True)}
    sections = dict(tables)
    regressed: list[str] = []
    if run_b:
        diff = compare.differences(*tables.values())
        sections["B - A"] = diff
        regressed = compare.regressions(diff, metric, threshold)
    notes = [f"regressed past {threshold} ({metric}): {r}" for r in regressed]
    text = _render(fmt, sections, tables, notes, output)
    if output:
        output.write_text(text)
        click.echo(f"scx-gpu bench: wrote {output}", err=True)
    elif text:
        click.echo(text)
    for note in notes:
        click.echo(f"scx-gpu bench: {note}", err=True)
    if regressed:
        sys.exit(EXIT_REGRESSED)


def _render(fmt: str, sections: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame],
            notes: list[str], output: Path | None) -> str:
    from scx_gpu.bench import compare

    if fmt == "json":
        return json.dumps({title: json.loads(t.reset_index().to_json(orient="records"))
                           for title, t in sections.items()} | {"regressions": notes}, indent=2)
    if fmt == "markdown":
        text = "".join(compare.markdown(t, title) + "\n" for title, t in sections.items())
        if output:
            png = output.with_suffix(".png")
            png.write_bytes(compare.plot_png(tables))
            text += f"![degradation per noise and policy]({png.name})\n"
        return text + "".join(f"\n**{n}**\n" for n in notes)
    if fmt == "html":
        return compare.html(sections, compare.plot_png(tables), notes)
    console = compare.console()
    for title, t in sections.items():
        console.print(compare.rich_table(t, title))
    return ""
