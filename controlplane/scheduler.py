"""The scx_gpu BPF object: open, set options, load, attach, read and write maps."""

from __future__ import annotations

import ctypes
import fcntl
import os
import time
from collections.abc import Callable
from ctypes import c_char, c_uint32, c_uint64
from dataclasses import dataclass
from pathlib import Path

from scx_gpu.bpf import libbpf, maps, object_path
from scx_gpu.bpf.bpfobject import BpfObject
from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS
from scx_gpu.controlplane import intf
from scx_gpu.controlplane.placement import Placement
from scx_gpu.controlplane.runstate import RUN_DIR

OBJECT = "scx_gpu.bpf.o"
STRUCT_OPS_MAP = "gpu_ops"
DETECT_PROG = "detect_launch"  # a link per entry point
DETECT_MULTI_PROG = "detect_launch_multi"  # a link per library (kernel 6.6 and later)
SET_HOME_PROG = "gpu_set_home"
PIN_DIR = Path("/sys/fs/bpf/scx_gpu")
PINNED_MAPS = ("tunables", "stats", "tier_pids", "tier_cgroups", "tier_comms",
               "tier_comm_prefixes", "tier_tasks", "gpu_tags")
ZERO = c_uint32(0)
U32_SIZE = ctypes.sizeof(c_uint32)
# Held around each read-modify-write of the tunables: the loader (its quota
# loop, membership changes) and `scx-gpu quota set` are separate processes.
TUNABLES_LOCK = RUN_DIR / "tunables.lock"


@dataclass(frozen=True)
class ReadOnlyOptions:
    """Values baked into .rodata before load."""

    slice_ns: int
    batch_slice_ns: int
    nr_cpus: int
    fair_only: bool
    gpu_preempts_normal: bool
    gpu_allow_set: bool  # only the gpu_allow maps' users and cgroups may be tagged
    gpu_budget_pct: int  # tagged threads, all together: share of all CPUs
    gpu_proc_budget_pct: int  # ... and one process's
    sched_idle_is_batch: bool
    detect_scope: int
    control_tgid: int  # the control plane's process: all its threads in the gpu tier
    nr_doms: int  # scheduling domains (placement.Placement)
    smt_mode: int  # intf.Smt
    gpu_cpus_set: bool = False  # --gpu-cpus: gpu-tier tasks live in intf.GPU_CPUS_HOME


class BpfScheduler(BpfObject):
    """The scheduler object: options, struct_ops, tunables, statistics, exit info."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path or object_path(OBJECT))
        self.ops_link: int | None = None
        self.ncpus = libbpf.num_possible_cpus()
        self.multi = libbpf.has_uprobe_multi()
        self.detect_prog = DETECT_MULTI_PROG if self.multi else DETECT_PROG
        self.skip_program(DETECT_PROG if self.multi else DETECT_MULTI_PROG)

    def set_options(self, options: ReadOnlyOptions) -> None:
        self.set_rodata(vars(options))

    def set_placement(self, place: Placement) -> None:
        """Each CPU's domain and SMT sibling (with options.nr_doms, before load)."""
        self.set_rodata_array("cpu_dom", place.cpu_domain, U32_SIZE)
        self.set_rodata_array("cpu_sibling", place.cpu_sibling, U32_SIZE)

    def attach_ops(self) -> None:
        """Register the struct_ops: from here on sched_ext runs our scheduler."""
        self.ops_link = libbpf.check_ptr(
            self._lib.bpf_map__attach_struct_ops(self._map(STRUCT_OPS_MAP)),
            "attach the scx_gpu struct_ops (is another sched_ext scheduler loaded?)")

    def detector_only(self) -> None:
        """Load the launch detector and the maps alone: no struct_ops, so the
        object loads on a kernel without sched_ext (the mainline fallback)."""
        self.load_only({self.detect_prog}, {STRUCT_OPS_MAP})

    def attach_detector(self, binary: Path, symbols: list[str]) -> tuple[list[int], list[str]]:
        """Attach the launch detector to those of symbols that binary has;
        (the links, the symbols probed)."""
        if self.multi:
            link, probed = self.attach_uprobe_multi(DETECT_MULTI_PROG, binary, symbols,
                                                    LAUNCH_SYMBOLS.index)
            return [link], probed
        links, probed = [], []
        for symbol in symbols:
            try:
                links.append(self.attach_uprobe(DETECT_PROG, binary, symbol,
                                                LAUNCH_SYMBOLS.index(symbol)))
            except libbpf.LibbpfError:
                continue  # this driver version lacks that entry point
            probed.append(symbol)
        return links, probed

    def write_tunables(self, tunables: intf.Tunables) -> None:
        maps.update(self.map_fd("tunables"), ZERO, tunables)

    def update_tunables(self, change: Callable[[intf.Tunables], bool]) -> None:
        update_tunables(self.map_fd("tunables"), change)

    def read_tunables(self) -> intf.Tunables:
        return maps.lookup(self.map_fd("tunables"), ZERO, intf.Tunables) or intf.Tunables()

    def read_stats(self) -> intf.Stats:
        return maps.sum_percpu(self.map_fd("stats"), ZERO, intf.Stats, self.ncpus)

    def read_site_hits(self) -> list[int]:
        """read_stats().site_hits at a tenth of the cost: the detector reads them
        at every poll while its probes stand."""
        raw, stride = maps.read_percpu(self.map_fd("stats"), ZERO, ctypes.sizeof(intf.Stats),
                                       self.ncpus)
        field, offset = c_uint64 * intf.LAUNCH_SITES, intf.Stats.site_hits.offset
        per_cpu = (field.from_buffer_copy(raw, i * stride + offset) for i in range(self.ncpus))
        return [sum(hits) for hits in zip(*per_cpu, strict=True)]

    def exit_info(self) -> intf.ExitInfo:
        """The kernel's exit record as the scheduler's exit callback copied it
        (read from memory: the loader polls it)."""
        offset, _ = self.section_vars(".bss")["exit_info"]
        return intf.ExitInfo.from_buffer_copy(self.section_view(".bss"), offset)

    def set_tier(self, map_name: str, key: ctypes._CData, tier: intf.Tier) -> None:
        """Add a member; tasks' cached tiers are looked up again (a new generation)."""
        maps.update(self.map_fd(map_name), key, c_uint32(tier))
        self.next_generation()

    def next_generation(self) -> None:
        """Every task's cached tier and home are looked up again at its next wakeup."""
        def bump(tunables: intf.Tunables) -> bool:
            tunables.tier_gen += 1
            return True
        self.update_tunables(bump)

    def set_tag_life(self, life_ns: int) -> None:
        """How long a launch tag lives. A new generation in the same update: a
        task's cached tier holds until its tag's expiry under the life it
        was classified with, and a tag that lapsed under a shorter life and
        lives under a longer one is no new tag to the probe."""
        def change(tunables: intf.Tunables) -> bool:
            tunables.gpu_ttl_ns = life_ns
            tunables.tier_gen += 1
            return True
        self.update_tunables(change)

    def set_home(self, home: int, cpus: tuple[int, ...]) -> None:
        """The CPUs of home (or intf.AWAY_HOME); () leaves it unused."""
        arg = intf.HomeCpus(home=home)
        for cpu in cpus:
            arg.cpus[cpu // 64] |= 1 << (cpu % 64)
        ret = self.run_syscall(SET_HOME_PROG, arg)
        if ret:
            raise libbpf.LibbpfError(f"set the CPUs of home {home}", -ret)

    def pin(self, directory: Path = PIN_DIR) -> None:
        """Pin the maps `status` and `quota` use, readable by root only."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in PINNED_MAPS:
            path = directory / name
            path.unlink(missing_ok=True)
            libbpf.check(self._lib.bpf_map__pin(self._map(name), str(path).encode()),
                         f"pin {name}")
            os.chmod(path, 0o600)

    def close(self) -> None:
        """Detach everything and free the object (the kernel unregisters the scheduler)."""
        if self.ops_link:
            self._lib.bpf_link__destroy(self.ops_link)
            self.ops_link = None
        super().close()


def update_tunables(fd: int, change: Callable[[intf.Tunables], bool]) -> None:
    """Read the tunables, let change() modify them, and write them back in one
    update when it returns True; no other process does the same meanwhile."""
    TUNABLES_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with TUNABLES_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        tunables = maps.lookup(fd, ZERO, intf.Tunables) or intf.Tunables()
        if change(tunables):
            maps.update(fd, ZERO, tunables)


def comm_key(comm: str) -> ctypes.Array[c_char] | intf.CommPrefix:
    """Map key for a task name: exact, or "prefix*" for a prefix pattern."""
    if comm.endswith("*"):
        prefix = comm[:-1].encode()
        return intf.CommPrefix(len(prefix), prefix)
    key = (c_char * intf.COMM_LEN)()
    key.value = comm.encode()[: intf.COMM_LEN - 1]
    return key


def comm_prefix_lens(comms: list[str]) -> int:
    """Bit n set when some pattern is an n-character prefix ("name*")."""
    return sum({1 << (len(c) - 1) for c in comms if c.endswith("*")})


def unpin(directory: Path = PIN_DIR) -> None:
    for name in PINNED_MAPS:
        (directory / name).unlink(missing_ok=True)
    if directory.is_dir():
        directory.rmdir()



def gpu_tag_times(tags_fd: int) -> dict[int, int]:
    """Thread (or process) id -> its last launch (ns of CLOCK_MONOTONIC, as
    bpf_ktime_get_ns() reads it), for every id in gpu_tags."""
    times = {}
    for key in list(maps.keys(tags_fd, c_uint32)):
        seen = maps.lookup(tags_fd, key, c_uint64)
        if seen is not None:
            times[key.value] = seen.value
    return times


def live_gpu_tags(tags_fd: int, ttl_ns: int) -> list[int]:
    """Thread (or process) ids in gpu_tags whose last launch is younger than the ttl."""
    now = time.monotonic_ns()
    return sorted(k for k, seen in gpu_tag_times(tags_fd).items() if now - seen < ttl_ns)
