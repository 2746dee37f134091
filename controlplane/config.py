"""The scheduler's configuration: defaults < TOML file < command-line flags."""

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from scx_gpu.controlplane import bounds
from scx_gpu.controlplane.metrics import parse_addr
from scx_gpu.controlplane.topology import parse_cpulist
from scx_gpu.errors import UsageError

POLICIES = ("gpu-first", "fair")
QUOTA_VALUES = f"a percentage {bounds.MIN_QUOTA_PCT}-100, or 'auto'"
SCOPES = ("thread", "process")
FALLBACKS = ("refuse", "auto", "mainline")
GPU_SMT = ("shared", "exclusive")


@dataclass
class TierMembers:
    """Explicit members of a tier, besides detection."""

    cgroups: list[str] = field(default_factory=list)  # cgroup v2 paths (subtrees included)
    comms: list[str] = field(default_factory=list)    # task names, "prefix*" patterns
    pids: list[int] = field(default_factory=list)     # thread or process ids


@dataclass
class Config:
    policy: str = "gpu-first"
    quota: int | str = 50            # batch share of all CPUs per period, %, or "auto"
    period_ms: int = 100             # batch quota period
    floor_ms: int = 1000             # longest wait of a normal or batch task
    gpu_ttl_ms: int = 3000           # a launch keeps its thread in the gpu tier this long
    slice_us: int = 5000
    batch_slice_us: int = 2000
    scope: str = "thread"            # tag the launching thread or its whole process
    gpu_preempts_normal: bool = True
    gpu_budget_pct: int = 95         # tagged threads may take this share of all CPUs ...
    gpu_proc_budget_pct: int = 90    # ... and those of one process this share
    sched_idle_batch: bool = False   # SCHED_IDLE tasks join the batch tier
    gpu_smt: str = "shared"          # exclusive: no batch on a gpu thread's SMT sibling
    gpu_cpus: str = ""               # CPU list all gpu work prefers (default: its GPUs' local CPUs)
    detect_window_ms: int = 100      # launch probes attached this long ...
    detect_period_ms: int = 1000     # ... once per period (the detector's duty cycle)
    rescan_s: float = 10.0           # look for new libcuda files this often
    cuda_libs: list[str] = field(default_factory=list)
    trusted_lib_dirs: list[str] = field(default_factory=list)  # probe libcuda found under these
    gpu_allow: list[str] = field(default_factory=list)  # only these may be tagged: users, cgroups
    stats_interval_s: float = 1.0
    fallback: str = "refuse"         # without sched_ext: refuse, or mainline mechanisms
    metrics_addr: str = ""           # Prometheus text on HOST:PORT (a bare PORT: loopback)
    takeover: bool = False           # stop scx_loader's scheduler, start it again on exit
    gpu_wait_target_us: float = 50.0  # quota auto: the gpu tier's wait p99 to hold
    auto_quota_min: int = bounds.MIN_QUOTA_PCT  # quota auto moves between these ...
    auto_quota_max: int = 100
    auto_quota_step: int = 5         # ... up this much per control period
    auto_quota_period_s: float = 1.0
    gpu: TierMembers = field(default_factory=TierMembers)
    batch: TierMembers = field(default_factory=TierMembers)
    # Co-location beyond the CPU (controlplane.colocation); each is off until set.
    net_isolate: bool = False        # batch egress yields the link (HTB on net_devs)
    net_devs: list[str] = field(default_factory=list)  # default: the default route's device
    net_link_rate: str = ""          # e.g. 10gbit (default: 95% of the device's speed)
    net_share_pct: int = 95          # the rest's guaranteed share of the link
    batch_net_rate: str = ""         # batch egress ceiling, e.g. 1gbit (default: the link)
    batch_io_weight: int = 0         # io.weight of the batch tier, 1-10000 (the rest: 100)
    batch_io_max: list[str] = field(default_factory=list)  # "DEV wbps=N ...", io.max
    batch_mem_high: str = ""         # memory.high of the batch tier: 4G, 25%
    gpu_mem_low: str = ""            # memory.low of the gpu tier's cgroups: max, 8G
    irq_steer: bool = False          # device interrupts off irq_avoid_cpus
    irq_patterns: list[str] = field(default_factory=list)  # handler globs (default: NICs, NVMe)
    irq_avoid_cpus: str = ""         # CPU list (default: the NVIDIA GPUs' local CPUs)

    def validate(self) -> "Config":
        if self.policy not in POLICIES:
            raise UsageError(f"unknown policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.scope not in SCOPES:
            raise UsageError(f"unknown scope {self.scope!r}: choose one of {', '.join(SCOPES)}")
        if self.gpu_smt not in GPU_SMT:
            raise UsageError(f"unknown gpu_smt {self.gpu_smt!r}: choose one of "
                             f"{', '.join(GPU_SMT)}")
        if self.fallback not in FALLBACKS:
            raise UsageError(f"unknown fallback {self.fallback!r}: choose one of "
                             f"{', '.join(FALLBACKS)}")
        if self.fallback == "mainline" and self.policy != "gpu-first":
            raise UsageError("the mainline fallback runs the gpu-first policy only")
        if self.metrics_addr:
            parse_addr(self.metrics_addr)
        if self.gpu_cpus and not parse_cpulist(self.gpu_cpus):
            raise UsageError("gpu_cpus: name at least one CPU (e.g. 0-3,8)")
        self._validate_quota()
        for name in ("period_ms", "floor_ms", "gpu_ttl_ms", "slice_us", "batch_slice_us",
                     "detect_window_ms", "detect_period_ms", "rescan_s", "stats_interval_s",
                     "gpu_wait_target_us", "auto_quota_step", "auto_quota_period_s"):
            if not getattr(self, name) > 0:  # NaN too
                raise UsageError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 < self.net_share_pct < 100:
            raise UsageError(f"net_share_pct {self.net_share_pct}: 1-99 (percent of the link "
                             "guaranteed to the tiers other than batch)")
        if not 0 <= self.batch_io_weight <= 10000:
            raise UsageError(f"batch_io_weight {self.batch_io_weight}: 1-10000 (the rest: 100)")
        if self.detect_window_ms > self.detect_period_ms:
            raise UsageError("detect_window_ms must not exceed detect_period_ms")
        for name in ("gpu_budget_pct", "gpu_proc_budget_pct"):
            if not 1 <= getattr(self, name) <= 100:
                raise UsageError(f"{name} {getattr(self, name)}: 1-100 (percent of all CPUs)")
        self._validate_bound()
        for tier in (self.gpu, self.batch):
            for comm in tier.comms:
                name = comm.removesuffix("*")
                if not 0 < len(name) < 16 or "*" in name:
                    raise UsageError(f"comm {comm!r}: a task name of 1-15 characters (the "
                                     "kernel's limit), or such a prefix followed by one '*'")
        return self

    def _validate_bound(self) -> None:
        """The wait bound must stay well inside the kernel's watchdog."""
        bound = bounds.design_bound_s(self.floor_ms, self.period_ms)
        if bound > bounds.watchdog_margin_s():
            raise UsageError(
                f"floor_ms {self.floor_ms} and period_ms {self.period_ms} give a normal/batch "
                f"wait bound of {bound:.1f} s, over {bounds.watchdog_margin_s():.0f} s (half "
                "the kernel watchdog's timeout): lower them")

    def _validate_quota(self) -> None:
        if isinstance(self.quota, str):
            if self.quota != "auto":
                raise UsageError(f"quota {self.quota!r}: {QUOTA_VALUES}")
            if self.fallback == "mainline":
                raise UsageError("quota auto follows the sched_ext scheduler's wait histogram; "
                                 "the mainline fallback takes a fixed --quota")
        else:
            check_quota_pct(self.quota)
        if not bounds.MIN_QUOTA_PCT <= self.auto_quota_min <= self.auto_quota_max <= 100:
            raise UsageError(f"auto_quota_min and auto_quota_max: {bounds.MIN_QUOTA_PCT} <= "
                             "min <= max <= 100")

    @property
    def auto_quota(self) -> bool:
        return self.quota == "auto"

    def start_quota(self) -> int:
        """The quota to load with: auto starts low and climbs."""
        return self.auto_quota_min if isinstance(self.quota, str) else self.quota

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_quota_pct(pct: int) -> None:
    """A fixed quota: at least the batch tier's floor share, at most every CPU."""
    if not bounds.MIN_QUOTA_PCT <= pct <= 100:
        raise UsageError(f"quota {pct} is outside {bounds.MIN_QUOTA_PCT}-100 (percent of all "
                         f"CPUs; batch's floor service, which bounds its waits, takes up to "
                         f"{bounds.MIN_QUOTA_PCT})")


def _members(raw: Any, where: str) -> TierMembers:
    if not isinstance(raw, dict) or set(raw) - {"cgroups", "comms", "pids"}:
        raise UsageError(f"[{where}] takes only cgroups, comms and pids")
    lists = {k: raw.get(k, []) for k in ("cgroups", "comms", "pids")}
    if not all(isinstance(v, list) for v in lists.values()) or not all(
            isinstance(x, str) for x in lists["cgroups"] + lists["comms"]) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in lists["pids"]):
        raise UsageError(f"[{where}] cgroups and comms are lists of strings, pids of integers")
    return TierMembers(cgroups=lists["cgroups"], comms=lists["comms"], pids=lists["pids"])


def from_toml(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, checked against Config's fields."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}: malformed TOML: {exc}") from exc
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"config {path}: unknown settings {', '.join(unknown)}")
    settings: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(Config)}
    for key, value in raw.items():
        if key in ("gpu", "batch"):
            settings[key] = _members(value, key)
        else:
            settings[key] = _typed(path, key, value, types[key])
    return settings


def _typed(path: Path, key: str, value: Any, kind: Any) -> Any:
    """value, if it is what the setting takes (TOML has no bool/int confusion to allow)."""
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str),
          int | str: isinstance(value, int | str) and not isinstance(value, bool),
          list[str]: isinstance(value, list) and all(isinstance(v, str) for v in value)}[kind]
    if not ok:
        name = getattr(kind, "__name__", str(kind))
        raise UsageError(f"config {path}: {key} takes {name}, not {value!r}")
    return value


def build(path: Path | None, flags: dict[str, Any]) -> Config:
    """Defaults, then the file, then flags that were given (not None)."""
    settings = from_toml(path) if path else {}
    settings.update({k: v for k, v in flags.items() if v is not None})
    try:
        return Config(**settings).validate()
    except TypeError as exc:
        raise UsageError(f"bad configuration: {exc}") from exc
