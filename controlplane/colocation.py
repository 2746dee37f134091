"""Co-location beyond the CPU: the batch tier's network, block I/O and memory, and IRQs.

`scx-gpu load` applies the mechanisms its options ask for, for as long as
it runs (the mainline fallback too): netshape + skbprio (network), blkio
and memlimits through cgknobs (I/O, memory), irqsteer (interrupts). Every
input is checked before anything is applied, each mechanism's undo is
stacked as it is applied, and the stack unwinds on every exit path,
including a mechanism failing halfway. What is applied is written to
STATE for `scx-gpu status`, with the undo record (controlplane.undorecord)
that the next load replays when this one was killed before it could undo.

Network, I/O and memory act on the tiers' cgroups: `scx-gpu run --tier`
groups and the configured cgroups (and, under the fallback, its batch
group, where batch comms and pids are moved).
"""

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scx_gpu.controlplane import (
    blkio,
    cgknobs,
    irqsteer,
    memlimits,
    netshape,
    skbprio,
    undorecord,
)
from scx_gpu.controlplane.cgroups import CGROUP_ROOT, cgroup_path
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.runstate import RUN_DIR, read_json
from scx_gpu.controlplane.tiers import own_cgroups
from scx_gpu.errors import EnvironmentProblem, UsageError

STATE = RUN_DIR / "colocation.json"
KINDS = {"qdisc": "root qdisc(s)", "file": "cgroup file(s)", "irq": "interrupt affinity(ies)",
         "controller": "cgroup controller(s)"}  # undo steps, as the restore line names them


def wanted(config: Config) -> bool:
    return bool(config.net_isolate or config.batch_io_weight or config.batch_io_max
                or config.batch_mem_high or config.gpu_mem_low or config.irq_steer)


def tier_cgroups(config: Config, fallback_group: Path | None = None,
                 ) -> tuple[list[Path], list[Path]]:
    """(batch, gpu) cgroups: scx-gpu's own, the configured ones, the fallback's group."""
    if not wanted(config):
        return [], []
    own = own_cgroups()
    batch = [p for p in own.values() if p.name == "batch"]
    gpu = [p for p in own.values() if p.name == "gpu"]
    batch += [cgroup_path(s) for s in config.batch.cgroups]
    gpu += [cgroup_path(s) for s in config.gpu.cgroups]
    if fallback_group is not None:
        fallback_group.mkdir(exist_ok=True)
        batch.append(fallback_group)
    return batch, gpu


class _Plan:
    """Every input parsed and resolved, nothing applied yet."""

    def __init__(self, config: Config, batch: list[Path], gpu: list[Path]) -> None:
        self.config, self.batch, self.gpu = config, batch, gpu
        self.knobs: list[cgknobs.Knob] = []
        if config.batch_io_weight or config.batch_io_max:
            self.knobs += blkio.knobs(batch, config.batch_io_weight, config.batch_io_max)
        if config.batch_mem_high:
            self.knobs += memlimits.batch_knobs(batch, config.batch_mem_high)
        if config.gpu_mem_low:
            self.knobs += memlimits.gpu_knobs(gpu, config.gpu_mem_low, CGROUP_ROOT)
        cgknobs.check(self.knobs, CGROUP_ROOT)
        self.irq_avoid = self._irq_avoid() if config.irq_steer else frozenset()
        self.irq_patterns = config.irq_patterns or list(irqsteer.DEFAULT_PATTERNS)
        if config.irq_steer:
            irqsteer.selected(self.irq_avoid, self.irq_patterns, irqsteer.IRQ_ROOT)

    def _irq_avoid(self) -> frozenset[int]:
        if self.config.irq_avoid_cpus:
            return irqsteer.parse_cpulist(self.config.irq_avoid_cpus)
        cpus = irqsteer.gpu_local_cpus()
        if not cpus:
            raise UsageError("no NVIDIA GPU found to keep interrupts off its local CPUs: "
                             "name the CPUs with --irq-avoid-cpus")
        return cpus

    def net_plans(self) -> list[netshape.Plan]:
        c = self.config
        with netshape.route() as ipr:
            return [netshape.plan(ipr, dev, c.net_link_rate, c.net_share_pct, c.batch_net_rate)
                    for dev in c.net_devs or [netshape.default_route_dev(ipr)]]


@contextlib.contextmanager
def applied(config: Config, emit: Callable[[str], None], batch: list[Path],
            gpu: list[Path]) -> Iterator[dict[str, Any]]:
    """Apply what config asks for; undo it all when the block ends, however it ends.
    What a killed loader left is restored first."""
    restore_left(emit, wanted(config))
    if not wanted(config):
        yield {}
        return
    plan = _Plan(config, batch, gpu)
    nets = plan.net_plans() if config.net_isolate else []
    state: dict[str, Any] = {"batch_cgroups": [str(p) for p in batch],
                             "gpu_cgroups": [str(p) for p in gpu]}
    record = undorecord.UndoRecord(STATE)
    with contextlib.ExitStack() as stack:
        stack.callback(STATE.unlink, missing_ok=True)
        if nets:
            state["network"] = _network(stack, nets, batch, emit, record)
        if plan.knobs:
            stack.callback(cgknobs.apply(plan.knobs, CGROUP_ROOT, record))
            state["cgroup_settings"] = [
                {"cgroup": str(k.cgroup), "file": k.name, "value": k.value} for k in plan.knobs]
            for k in plan.knobs:
                emit(f"scx-gpu: {k.cgroup}/{k.name} = {k.value}")
        if config.irq_steer:
            state["irqs"] = _irqs(stack, plan.irq_avoid, plan.irq_patterns, emit, record)
        record.save(state)
        yield state
    emit("scx-gpu: co-location settings undone")


def _network(stack: contextlib.ExitStack, nets: list[netshape.Plan], batch: list[Path],
             emit: Callable[[str], None],
             record: undorecord.UndoRecord) -> list[dict[str, object]]:
    ipr = stack.enter_context(netshape.route())
    for net in nets:
        record.qdisc(net.dev)
        stack.callback(netshape.shape(ipr, net))
        emit(f"scx-gpu: {net.dev}: link {net.link_bps / 1e6:g} Mbit/s, the rest guaranteed "
             f"{net.normal_bps / 1e6:g}, batch at most {net.batch_ceil_bps / 1e6:g}")
    stack.callback(skbprio.mark(batch, netshape.BATCH_CLASS))
    return [n.as_dict() for n in nets]


def _irqs(stack: contextlib.ExitStack, avoid: frozenset[int], patterns: list[str],
          emit: Callable[[str], None], record: undorecord.UndoRecord) -> list[dict[str, object]]:
    moves, undo = irqsteer.steer(avoid, patterns, irqsteer.IRQ_ROOT, note=record.irq)
    stack.callback(undo)
    for move in moves:
        emit(f"scx-gpu: {move.line()}")
    return [m.as_dict() for m in moves]


def restore_left(emit: Callable[[str], None], applying: bool) -> None:
    """Undo what a killed loader left (its record's steps), saying so in one line. A
    running loader's settings are its own: applying more beside them is refused."""
    record = read_json(STATE)
    if not record:
        return
    pid = record.get("owner", {}).get("pid")
    if undorecord.alive(record):
        if applying:
            raise EnvironmentProblem(f"scx-gpu load (pid {pid}) runs with co-location settings "
                                     "applied: stop it first")
        return
    steps = record.get("undo", [])
    failed = _restore(steps)
    STATE.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for step in steps:
        counts[step["kind"]] = counts.get(step["kind"], 0) + 1
    done = ", ".join(f"{n} {KINDS[k]}" for k, n in counts.items()) or "nothing"
    emit(f"scx-gpu: restored what a killed scx-gpu load (pid {pid}) left: {done}"
         + (f"; could not restore {', '.join(failed)}: write those back by hand"
            if failed else ""))


def _restore(steps: list[undorecord.Step]) -> list[str]:
    with contextlib.ExitStack() as stack:
        route: list[Any] = []

        def remove_qdisc(dev: str) -> None:
            if not route:  # pyroute2 only when there is a qdisc to remove
                route.append(stack.enter_context(netshape.route()))
            netshape.remove(route[0], dev)
        return undorecord.restore(steps, remove_qdisc)


def saved() -> dict[str, Any]:
    """What the running loader applied ({} when nothing, or when its loader is dead)."""
    record = read_json(STATE)
    if not undorecord.alive(record):
        return {}
    return {k: v for k, v in record.items() if k not in ("owner", "undo")}


def left_by_killed_loader() -> int | None:
    """The pid of a killed loader whose settings stay until the next load restores them."""
    record = read_json(STATE)
    if not record or undorecord.alive(record):
        return None
    pid: int | None = record.get("owner", {}).get("pid")
    return pid
