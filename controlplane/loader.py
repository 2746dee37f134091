"""`scx-gpu load`: run the scheduler in the foreground until told to stop.

Loads and attaches the BPF scheduler, runs the duty-cycled detector and the
libcuda rescan, prints statistics, detaches cleanly on SIGINT/SIGTERM,
reports the kernel's exit reason when the kernel ejects the scheduler, and
loads it again when the kernel asks for a restart. On a kernel without
sched_ext, `--fallback mainline|auto` runs FallbackLoader instead.
"""

import contextlib
import json
import os
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

from scx_gpu.bpf import libbpf, libcuda
from scx_gpu.controlplane import (
    autoquota,
    colocation,
    fallback,
    homes,
    intf,
    metrics,
    placement,
    siblings,
    stats,
    stats_socket,
    takeover,
    tiers,
    topology,
    trust,
)
from scx_gpu.controlplane.cgroups import cgroup_path
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.detector import (
    BackgroundDetach,
    Detector,
    no_siblings,
    no_threads,
)
from scx_gpu.controlplane.gpubudget import GpuBudget
from scx_gpu.controlplane.placement import Placement
from scx_gpu.controlplane.runstate import (
    FALLBACK_MODE,
    RUN_STATE,
    sched_ext_state,
    write_run_state,
)
from scx_gpu.controlplane.scheduler import (
    BpfScheduler,
    ReadOnlyOptions,
    comm_prefix_lens,
    gpu_tag_times,
    live_gpu_tags,
    unpin,
)
from scx_gpu.controlplane.stopsignal import StopSignal
from scx_gpu.controlplane.topology import NPROC, Cpu
from scx_gpu.errors import EnvironmentProblem, UsageError

POLL_S = 0.1  # the fallback's loop: a new gpu thread is reniced within this
# The sched_ext loader's loop: exits noticed, new libcuda files probed, homes
# and statistics at this pace, the detector's polls between (each turn took
# the gpu-tier loader about 1 ms of a vCPU under emulation).
LOOP_S = 0.5
FALLBACK_BUDGET_BANK_S = 0.5
MEMBER_SCAN_S = 1.0  # the fallback's look for new batch processes
HOME_SCAN_S = 1.0  # GPU processes' homes looked for (each one's /proc/PID/maps read)
DISABLE_WAIT_S = 10.0
RESTART = -1
CONTROL_NICE = -20  # ahead of the normal tier's other work; the detector thread is gpu tier


def _require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("scx-gpu load needs root (CAP_BPF and CAP_SYS_ADMIN)")


def _keep_up_under_load(nice: int) -> None:
    """Run the control plane (this thread, and every thread it starts) at nice.
    It shares CPUs with the work it schedules: at nice 0 undeclared noise
    starves it, so detector windows open seconds late and busy launchers'
    tags expire."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def preflight() -> None:
    """Environment checks before anything is loaded (exit 1 when they fail)."""
    _require_root()
    state, ops = sched_ext_state()
    if state is None:
        raise EnvironmentProblem(
            f"this kernel ({os.uname().release}) has no sched_ext: run scx-gpu in the test VM "
            "(`scx-gpu vm run -- scx-gpu load ...`), on a kernel with CONFIG_SCHED_CLASS_EXT=y,"
            " or with `--fallback mainline` (nice and an idle cgroup; a weaker guarantee)")
    if state != "disabled":
        raise EnvironmentProblem(
            f"a sched_ext scheduler is already loaded ({ops or 'unknown'}, state {state}): "
            "stop it first")
    libbpf.require_version()


def gpu_cpus(config: Config, cpus: list[Cpu]) -> tuple[int, ...]:
    """--gpu-cpus as a CPU list; () when not given (the GPUs say)."""
    return topology.gpu_cpus_override(config.gpu_cpus, cpus) if config.gpu_cpus else ()


def read_only_options(config: Config, place: Placement) -> ReadOnlyOptions:
    return ReadOnlyOptions(
        slice_ns=config.slice_us * 1000,
        batch_slice_ns=config.batch_slice_us * 1000,
        nr_cpus=NPROC,
        fair_only=config.policy == "fair",
        gpu_preempts_normal=config.gpu_preempts_normal,
        gpu_allow_set=bool(config.gpu_allow),
        gpu_budget_pct=config.gpu_budget_pct,
        gpu_proc_budget_pct=config.gpu_proc_budget_pct,
        sched_idle_is_batch=config.sched_idle_batch,
        detect_scope=intf.Scope[config.scope.upper()],
        control_tgid=os.getpid(),
        nr_doms=place.nr_domains,
        smt_mode=placement.SMT_MODES[config.gpu_smt],
        gpu_cpus_set=bool(config.gpu_cpus),
    )


def tunables(config: Config) -> intf.Tunables:
    mode = intf.QuotaMode.AUTO if config.auto_quota else intf.QuotaMode.FIXED
    return intf.Tunables(batch_quota_pct=config.start_quota(),
                         comm_prefix_lens=comm_prefix_lens(config.gpu.comms + config.batch.comms),
                         batch_period_ns=config.period_ms * 10**6,
                         floor_ns=config.floor_ms * 10**6, gpu_ttl_ns=config.gpu_ttl_ms * 10**6,
                         quota_mode=mode)


DUMP_MARK = "scx_gpu: tier"  # the lines ops.dump writes: each tier's queue and oldest waiter


def load_object(sched: BpfScheduler, config: Config) -> Placement:
    """Load sched into the kernel (the verifier checks it) with config's options
    and this machine's placement, not attached; the placement used."""
    cpus = topology.read_cpus()
    gpu_cpus(config, cpus)  # a bad --gpu-cpus fails before anything loads
    place = placement.placement(cpus, config.gpu_smt)
    sched.set_options(read_only_options(config, place))
    sched.set_placement(place)
    sched.load()
    return place


def exit_message(info: intf.ExitInfo) -> str:
    reason = info.reason.decode(errors="replace")
    msg = info.msg.decode(errors="replace")
    tiers = [line.strip() for line in info.dump.decode(errors="replace").splitlines()
             if DUMP_MARK in line]
    return f"scheduler exited (kind {info.kind}, code {info.exit_code:#x}): {reason}" + (
        f": {msg}" if msg else "") + "".join(f"\n  {line}" for line in tiers)


class Loader:
    """`scx-gpu load` on sched_ext; FallbackLoader runs the same loop without it."""

    def __init__(self, config: Config, emit: Callable[[str], None], quiet: bool = False,
                 as_json: bool = False) -> None:
        self.config = config
        self.emit = emit
        self.quiet = quiet
        self.as_json = as_json
        self.stop = StopSignal()
        self.took_over: takeover.Running | None = None  # scx_loader's, started on exit
        self.last_quota_change: autoquota.Change | None = None
        self.refused: set[Path] = set()  # libcuda files reported untrusted, once each
        self.colocation: dict[str, Any] = {}  # what colocation.applied() set, for the metrics

    def run(self) -> int:
        fallback = self.config.fallback
        if fallback == "mainline" or (fallback == "auto" and sched_ext_state()[0] is None):
            return FallbackLoader(self.config, self.emit, self.quiet, self.as_json).run()
        _require_root()
        _keep_up_under_load(CONTROL_NICE)
        with ExitStack() as stack:
            # Handlers first: a signal while scx_loader's scheduler is stopped must
            # still lead to it being started again.
            stack.enter_context(self.stop.installed())
            self.took_over = stack.enter_context(
                takeover.taken_over(self.config.takeover, self.emit))
            if self.took_over is not None:
                self._wait_disabled()
            preflight()
            tiers.check_members(self.config)
            if self.took_over is not None:  # scx_loader's scheduler attaches after ours left
                stack.callback(self._wait_disabled_quietly)
            self.colocation = stack.enter_context(colocation.applied(
                self.config, self.emit, *colocation.tier_cgroups(self.config)))
            return self._run_until_stopped()

    def _run_until_stopped(self) -> int:
        while not self.stop.is_set():
            outcome = self._run_once()
            if outcome != RESTART:
                return outcome
            self.emit("scx-gpu: the kernel asked for a restart; loading again")
            self._wait_disabled()
        return 0

    def _wait_disabled(self) -> None:
        """The kernel disables the old instance asynchronously; attach after it."""
        deadline = time.monotonic() + DISABLE_WAIT_S
        while sched_ext_state()[0] not in ("disabled", None):  # None: no sched_ext at all
            if time.monotonic() > deadline:
                raise EnvironmentProblem("sched_ext did not finish disabling the old instance")
            time.sleep(POLL_S)

    def _wait_disabled_quietly(self) -> None:
        with contextlib.suppress(EnvironmentProblem):
            self._wait_disabled()

    def _load(self) -> BpfScheduler:
        with ExitStack() as undo:
            sched = BpfScheduler()
            undo.callback(sched.close)
            undo.callback(unpin)
            place = load_object(sched, self.config)
            self.emit(f"scx-gpu: {place.describe()}")
            sched.write_tunables(tunables(self.config))
            tiers.populate(sched, self.config, tiers.own_cgroups())
            tiers.populate_gpu_allow(sched, self.config.gpu_allow)
            unpin()
            sched.pin()
            sched.attach_ops()
            undo.pop_all()  # loaded: _run_once owns it from here
        return sched

    def _run_once(self) -> int:
        """Load, run until stopped or ejected, and undo it all in reverse order."""
        with ExitStack() as stack:
            stack.callback(RUN_STATE.unlink, missing_ok=True)
            sched = self._load()
            detach = self._background_detach(stack, sched)
            stack.callback(unpin)
            detector = stack.enter_context(closing(self._detector(sched, detach)))
            if self.config.metrics_addr:
                stack.enter_context(closing(metrics.MetricsServer(
                    metrics.parse_addr(self.config.metrics_addr),
                    lambda: self._snapshot(sched, detector))))
            loaded_at = time.monotonic()
            stack.enter_context(closing(stats_socket.StatsSocket(
                lambda: self._totals(sched, detector, loaded_at))))
            if self.config.policy != "fair":  # fair has no batch tier: no quota to drive
                stack.enter_context(closing(autoquota.AutoQuota(self.config, sched,
                                                                self._quota_changed)))
            scanner = self._rescanner(stack)
            self._announce(sched)
            info = self._loop(detector, scanner, self._tier_sample(sched, detector),
                              ejected=self._ejected(sched), step=self._home_step(sched, detector),
                              every_s=LOOP_S)
        if info is None:
            self.emit("scx-gpu: detached")
            return 0
        self.emit(f"scx-gpu: {exit_message(info)}")
        return RESTART if info.exit_code & intf.ECODE_ACT_RESTART else 1

    @staticmethod
    def _background_detach(stack: ExitStack, sched: BpfScheduler) -> BackgroundDetach:
        """Probe links destroyed on a thread of their own, waited for once the
        scheduler is closed (it first: probes may take seconds to detach)."""
        detach = BackgroundDetach(sched.destroy_link)
        stack.callback(detach.close)
        stack.callback(sched.close)
        return detach

    def _detector(self, sched: BpfScheduler, detach: BackgroundDetach) -> Detector:
        tags_fd = sched.map_fd("gpu_tags")
        threads = self.config.scope == "thread"  # else a tag covers every thread
        return Detector(sched.attach_detector, detach,
                        self.config.detect_window_ms / 1000, self.config.detect_period_ms / 1000,
                        ttl_s=self.config.gpu_ttl_ms / 1000, tags=lambda: gpu_tag_times(tags_fd),
                        detaching=detach.pending,
                        siblings=siblings.siblings if threads else no_siblings,
                        threads_now=siblings.threads_now,
                        awaited_now=siblings.threads_now if threads else no_threads,
                        site_hits=sched.read_site_hits,
                        publish_life=sched.set_tag_life)

    def _home_step(self, sched: BpfScheduler, detector: Detector) -> Callable[[float], None]:
        """A step giving GPU processes and their cgroups their homes, every
        HOME_SCAN_S (none for the fair policy: it has no gpu tier)."""
        if self.config.policy == "fair":
            return lambda now: None
        cpus, gpus = topology.read_cpus(), topology.read_gpus()
        override, numbers = gpu_cpus(self.config, cpus), homes.HomeNumbers()
        if not gpus and not override:
            return lambda now: None  # no GPU to be near: every home would be none
        writer = homes.HomeMaps(sched, tuple(c.cpu for c in cpus if c.online))
        tags_fd = sched.map_fd("gpu_tags")
        cgroups = [tiers.OWN_ROOT / "gpu", *map(cgroup_path, self.config.gpu.cgroups)]
        last = float("-inf")

        def step(now: float) -> None:
            nonlocal last
            if now - last < HOME_SCAN_S:
                return
            last = now
            live = live_gpu_tags(tags_fd, detector.tag_life_ns())
            pids = homes.candidates(live, self.config.gpu.pids, cgroups)
            found = homes.assign(pids, gpus, cpus, override, numbers)
            if found.describe() != writer.written.describe():
                self.emit(f"scx-gpu: {found.describe()}")
            writer.write(found)
        return step

    def _snapshot(self, sched: BpfScheduler, detector: Detector) -> metrics.Snapshot:
        return metrics.Snapshot(sched.read_stats(), sched.read_tunables().batch_quota_pct,
                                detector.duty_cycle(), sched_ext_state() == ("enabled", "scx_gpu"),
                                self.colocation)

    def _totals(self, sched: BpfScheduler, detector: Detector,
                loaded_at: float) -> dict[str, Any]:
        summary = stats.Summary(time.monotonic() - loaded_at, sched.read_stats(),
                                sched.read_tunables().batch_quota_pct, detector.duty_cycle())
        return summary.as_dict()

    def _announce(self, sched: BpfScheduler) -> None:
        state, ops = sched_ext_state()
        self.emit(f"scx-gpu: {ops} loaded (policy {self.config.policy}, state {state})")
        self._save_run_state()

    def _save_run_state(self) -> None:
        extra: dict[str, Any] = {"mode": "sched_ext"}
        if self.took_over:
            extra["scx_loader_stopped"] = str(self.took_over)
        if self.last_quota_change:
            extra["last_quota_change"] = self.last_quota_change.as_dict()
        write_run_state(self.config.as_dict(), extra)

    def _quota_changed(self, change: autoquota.Change) -> None:
        self.emit(f"scx-gpu: {change.line()}")
        self.last_quota_change = change
        self._save_run_state()

    def _gpu_budget(self) -> GpuBudget:
        """The scheduler's gpu budgets, for the fallback's renice; it banks
        several polls, since a poll may come late on a loaded host."""
        return GpuBudget(self.config.gpu_proc_budget_pct, self.config.gpu_budget_pct,
                         NPROC, self.config.period_ms / 1000, bank_s=FALLBACK_BUDGET_BANK_S)

    def _rescanner(self, stack: ExitStack) -> libcuda.Rescanner | None:
        """libcuda discovery, running until stack closes; none for the fair
        policy (no detection)."""
        if self.config.policy == "fair":
            return None
        scanner = libcuda.Rescanner(self.config.cuda_libs, self.config.rescan_s).start()
        stack.callback(scanner.close)
        return scanner

    def _trusted(self, found: list[libcuda.CudaLib]) -> list[libcuda.CudaLib]:
        """The files the operator trusts; each other one is reported once."""
        dirs = [Path(os.path.realpath(d)) for d in self.config.trusted_lib_dirs]
        ok = []
        for lib in found:
            why = trust.untrusted(lib, dirs)
            if why is None:
                ok.append(lib)
            elif lib.path not in self.refused:
                self.refused.add(lib.path)
                self.emit(f"scx-gpu: not probing {lib.path} ({lib.source}): {why}")
        return ok

    def _probe_found(self, scanner: libcuda.Rescanner | None, detector: Detector) -> None:
        found = self._trusted(scanner.found() if scanner else [])
        for lib in detector.add_libraries([lib.path for lib in found]):
            source = next(f.source for f in found if f.path == lib)
            self.emit(f"scx-gpu: probing {lib} ({source})")

    def _loop(self, detector: Detector, scanner: libcuda.Rescanner | None,
              sample: Callable[[float], stats.Report],
              ejected: Callable[[], intf.ExitInfo | None] = lambda: None,
              step: Callable[[float], None] = lambda now: None,
              every_s: float = POLL_S) -> intf.ExitInfo | None:
        """The loop of both loaders: detection windows at the detector's pace;
        every every_s new libcuda files probed and step(now); a statistics line
        from sample every stats_interval_s; until a signal (None) or ejected()
        returns the kernel's exit info."""
        report, turn = self._statistics(sample), float("-inf")
        while not self.stop.is_set():
            now = time.monotonic()
            if now - turn >= every_s:  # not at each of an open window's fast polls
                turn = now
                info = ejected()
                if info is not None:
                    return info
                self._probe_found(scanner, detector)
                step(now)
                report(now)
            detector.tick()
            self.stop.wait(detector.poll_s(max(turn + every_s - time.monotonic(), 0.0)))
        return None

    @staticmethod
    def _ejected(sched: BpfScheduler) -> Callable[[], intf.ExitInfo | None]:
        def ejected() -> intf.ExitInfo | None:
            info = sched.exit_info()
            return None if info.kind == intf.EXIT_NONE else info
        return ejected

    def _statistics(self, sample: Callable[[float], stats.Report]) -> Callable[[float], None]:
        """A step printing sample(interval)'s line every stats_interval_s (none
        under --quiet)."""
        last = time.monotonic()

        def step(now: float) -> None:
            nonlocal last
            if self.quiet or now - last < self.config.stats_interval_s:
                return
            report = sample(now - last)
            self.emit(json.dumps(report.as_dict()) if self.as_json else report.line())
            last = now
        return step

    @staticmethod
    def _tier_sample(sched: BpfScheduler,
                     detector: Detector) -> Callable[[float], stats.Report]:
        """The scheduler's counters since the last sample, per tier."""
        before = sched.read_stats()

        def sample(interval_s: float) -> stats.Report:
            nonlocal before
            current = sched.read_stats()
            summary = stats.Summary(interval_s, stats.diff(current, before),
                                    sched.read_tunables().batch_quota_pct, detector.duty_cycle())
            before = current
            return summary
        return sample


class FallbackLoader(Loader):
    """gpu-first through mainline mechanisms (controlplane.fallback), without sched_ext."""

    def run(self) -> int:
        _require_root()
        # Level with the gpu threads, not ahead: here nice is all that ranks them.
        _keep_up_under_load(fallback.GPU_NICE)
        if self.config.auto_quota:
            raise UsageError("quota auto follows the sched_ext scheduler's wait histogram, "
                             "which this kernel lacks: the mainline fallback takes a fixed "
                             "--quota")
        libbpf.require_version()
        with ExitStack() as stack:
            stack.enter_context(self.stop.installed())
            group = fallback.CpuGroup()
            stack.callback(group.remove)
            self.colocation = stack.enter_context(colocation.applied(
                self.config, self.emit,
                *colocation.tier_cgroups(self.config, group.path if group.v2 else None)))
            self._run_fallback(group)
        self.emit("scx-gpu: mainline fallback undone (nice values, cgroups restored)")
        return 0

    def _load_detector(self) -> BpfScheduler:
        with ExitStack() as undo:
            sched = BpfScheduler()
            undo.callback(sched.close)
            sched.detector_only()
            sched.set_options(read_only_options(self.config,
                                                placement.placement(topology.read_cpus())))
            sched.load()
            tiers.populate_gpu_allow(sched, self.config.gpu_allow)
            undo.pop_all()
        return sched

    def _run_fallback(self, group: fallback.CpuGroup) -> None:
        with ExitStack() as stack:
            stack.callback(RUN_STATE.unlink, missing_ok=True)
            members = fallback.BatchMembers(self.config, group)
            sched = self._load_detector()
            detach = self._background_detach(stack, sched)
            detector = stack.enter_context(closing(self._detector(sched, detach)))
            if self.config.metrics_addr:
                stack.enter_context(closing(metrics.MetricsServer(
                    metrics.parse_addr(self.config.metrics_addr),
                    lambda: metrics.Snapshot(sched.read_stats(), self.config.start_quota(),
                                             detector.duty_cycle(), False, self.colocation,
                                             tiers=False))))
            stack.callback(members.undo)
            renicer = fallback.Renicer(sched.map_fd("gpu_tags"),
                                       detector.tag_life_ns,
                                       self.config.scope == "process", self._gpu_budget())
            stack.callback(renicer.restore_all)
            scanner = self._rescanner(stack)
            group.create(self.config.start_quota(), self.config.period_ms, NPROC)
            members.declare()
            write_run_state(self.config.as_dict(),
                            {"mode": FALLBACK_MODE, "batch_group": str(group.path)})
            self.emit(f"scx-gpu: {fallback.WEAKER}")
            self._loop(detector, scanner, self._mainline_sample(sched, detector, renicer, members),
                       step=self._mainline_step(renicer, members))

    def _mainline_sample(self, sched: BpfScheduler, detector: Detector,
                         renicer: fallback.Renicer,
                         members: fallback.BatchMembers) -> Callable[[float], stats.Report]:
        """What the renice and the batch group did since the last sample."""
        hits, usage, demotions = sched.read_stats().detector_hits, members.usage(), 0

        def sample(interval_s: float) -> stats.Report:
            nonlocal hits, usage, demotions
            hits_now, usage_now = sched.read_stats().detector_hits, members.usage()
            cpu_ns = (None if usage_now.cpu_ns is None or usage.cpu_ns is None
                      else usage_now.cpu_ns - usage.cpu_ns)
            summary = stats.FallbackSummary(
                interval_s, len(renicer.raised), renicer.demotions - demotions,
                usage_now.processes, cpu_ns, usage_now.throttled_ns - usage.throttled_ns,
                self.config.start_quota(), hits_now - hits, detector.duty_cycle())
            hits, usage, demotions = hits_now, usage_now, renicer.demotions
            return summary
        return sample

    @staticmethod
    def _mainline_step(renicer: fallback.Renicer,
                       members: fallback.BatchMembers) -> Callable[[float], None]:
        """Tagged threads reniced; batch members looked for every MEMBER_SCAN_S."""
        members.scan()
        last_scan = time.monotonic()

        def step(now: float) -> None:
            nonlocal last_scan
            renicer.tick()
            if now - last_scan >= MEMBER_SCAN_S:  # reads every /proc/PID/comm
                members.scan()
                last_scan = now
        return step
