"""ctypes mirror of sched/bpf/intf.h (tests check it against the object's BTF)."""

from ctypes import Structure, c_char, c_int32, c_int64, c_uint32, c_uint64
from enum import IntEnum

from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS


class Tier(IntEnum):
    GPU = 0
    NORMAL = 1
    BATCH = 2


class QuotaMode(IntEnum):
    FIXED = 0
    AUTO = 1


class Scope(IntEnum):
    THREAD = 0
    PROCESS = 1


class Smt(IntEnum):
    SHARED = 0
    EXCLUSIVE = 1


NR_TIERS = 3
# The bounds the scheduler is built around (intf.h).
TIMEOUT_MS = 20000
FLOOR_PCT = 10
MIN_SLICE_US = 500
DESIGN_RUNNABLE = 1000
# Scheduling domains (intf.h).
MAX_CPUS = 1024
MAX_DOMS = 64
# GPU locality (intf.h).
MAX_HOMES = 16
AWAY_HOME = MAX_HOMES
NO_HOME = 255
GPU_CPUS_HOME = 0
MAX_GPU_PROCS = 4096
MAX_GPU_CGROUPS = 1024
CPU_WORDS = MAX_CPUS // 64
WAIT_BUCKETS = 32
COMM_LEN = 16
EXIT_REASON_LEN = 128
EXIT_MSG_LEN = 1024
EXIT_DUMP_LEN = 4096
LAUNCH_SITES = len(LAUNCH_SYMBOLS)  # a probe's cookie: its entry point's index


class TierStats(Structure):
    _fields_ = [
        ("runtime_ns", c_uint64),
        ("runs", c_uint64),
        ("preemptions", c_uint64),
        ("wait_hist", c_uint64 * WAIT_BUCKETS),
    ]


class Stats(Structure):
    _fields_ = [
        ("tier", TierStats * NR_TIERS),
        ("batch_throttled_ns", c_uint64),
        ("floor_dispatches", c_uint64),
        ("slice_kicks", c_uint64),
        ("site_hits", c_uint64 * LAUNCH_SITES),  # launch-probe hits by entry point
        ("cpu_mismatches", c_uint64),
        ("classifications", c_uint64),
        ("budget_demotions", c_uint64),
        ("rcu_readers", c_uint64),
    ]

    @property
    def detector_hits(self) -> int:
        """Launch-probe hits, every entry point's."""
        return sum(self.site_hits)


class Tunables(Structure):
    _fields_ = [
        ("batch_quota_pct", c_uint32),
        ("comm_prefix_lens", c_uint32),
        ("batch_period_ns", c_uint64),
        ("floor_ns", c_uint64),
        ("gpu_ttl_ns", c_uint64),
        ("tier_gen", c_uint64),
        ("quota_mode", c_uint32),
        ("pad", c_uint32),
    ]


class CommPrefix(Structure):
    _fields_ = [("len", c_uint32), ("prefix", c_char * COMM_LEN)]


class HomeCpus(Structure):
    _fields_ = [("home", c_uint32), ("pad", c_uint32), ("cpus", c_uint64 * CPU_WORDS)]


class ExitInfo(Structure):
    _fields_ = [
        ("kind", c_int32),
        ("pad", c_int32),
        ("exit_code", c_int64),
        ("reason", c_char * EXIT_REASON_LEN),
        ("msg", c_char * EXIT_MSG_LEN),
        ("dump", c_char * EXIT_DUMP_LEN),
    ]


# Mirrored struct name in intf.h -> ctypes class, for the layout test.
MIRRORS: dict[str, type[Structure]] = {
    "tier_stats": TierStats,
    "scx_gpu_stats": Stats,
    "scx_gpu_tunables": Tunables,
    "scx_gpu_exit": ExitInfo,
    "comm_prefix": CommPrefix,
    "home_cpus": HomeCpus,
}

# enum scx_exit_kind values the control plane tells apart.
EXIT_NONE, EXIT_UNREG, EXIT_ERROR = 0, 64, 1024
# SCX_ECODE_ACT_RESTART: the kernel asks the scheduler to be loaded again.
ECODE_ACT_RESTART = 1 << 48
