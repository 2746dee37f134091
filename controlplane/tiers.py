"""Tier membership besides detection: cgroups, comms, pids; `scx-gpu run`."""

import os
import pwd
from ctypes import c_uint32, c_uint64
from pathlib import Path

from scx_gpu.config import Config, TierMembers
from scx_gpu.controlplane import maps
from scx_gpu.controlplane.intf import Tier
from scx_gpu.controlplane.scheduler import BpfScheduler, comm_key
from scx_gpu.errors import EnvironmentProblem, UsageError


def _cgroup2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on hybrid hosts)."""
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return Path("/sys/fs/cgroup")


CGROUP_ROOT = _cgroup2_mount()
# Cgroups the control plane owns: `scx-gpu run --tier T` puts commands there.
OWN_ROOT = CGROUP_ROOT / "scx-gpu"
RUN_TIERS = {"gpu": Tier.GPU, "batch": Tier.BATCH}


def cgroup_path(spec: str) -> Path:
    """A cgroup v2 path given absolute or relative to the cgroup root."""
    path = Path(spec)
    return path if path.is_relative_to(CGROUP_ROOT) else CGROUP_ROOT / spec.lstrip("/")


def cgroup_id(path: Path) -> int:
    """The kernel's cgroup id: the kernfs node id, which is the inode number."""
    if not (path / "cgroup.procs").is_file():
        raise UsageError(f"cgroup {path} does not exist (or is not a cgroup v2 directory)")
    return path.stat().st_ino


def own_cgroups() -> dict[Tier, Path]:
    """Create (if needed) the cgroups `scx-gpu run` uses."""
    if not (CGROUP_ROOT / "cgroup.controllers").is_file():
        raise EnvironmentProblem(f"{CGROUP_ROOT} is not a cgroup v2 mount")
    made = {}
    for name, tier in RUN_TIERS.items():
        path = OWN_ROOT / name
        path.mkdir(parents=True, exist_ok=True)
        made[tier] = path
    return made


def check_members(config: Config) -> None:
    """Fail early (bad input) on members that cannot be resolved."""
    for members in (config.gpu, config.batch):
        for spec in members.cgroups:
            cgroup_id(cgroup_path(spec))
    gpu_allow(config.gpu_allow)


def gpu_allow(specs: list[str]) -> tuple[list[int], list[int]]:
    """--gpu-allow as (user ids, cgroup ids): a spec with a '/' is a cgroup,
    digits a user id, anything else a user name."""
    uids, cgroups = [], []
    for spec in specs:
        if "/" in spec:
            cgroups.append(cgroup_id(cgroup_path(spec)))
        elif spec.isdigit():
            uids.append(int(spec))
        else:
            try:
                uids.append(pwd.getpwnam(spec).pw_uid)
            except KeyError:
                raise UsageError(f"--gpu-allow {spec}: no such user (a cgroup path needs "
                                 "a '/')") from None
    return uids, cgroups


def populate_gpu_allow(sched: BpfScheduler, specs: list[str]) -> None:
    """Who may be tagged: the detector's maps (sched_ext and the fallback alike)."""
    uids, cgroups = gpu_allow(specs)
    for uid in uids:
        maps.update(sched.map_fd("gpu_allow_uids"), c_uint32(uid), c_uint32(1))
    for cgid in cgroups:
        maps.update(sched.map_fd("gpu_allow_cgroups"), c_uint64(cgid), c_uint32(1))


def populate(sched: BpfScheduler, config: Config, own: dict[Tier, Path]) -> None:
    """Write every explicit member into the scheduler's tier maps."""
    for tier, members in ((Tier.GPU, config.gpu), (Tier.BATCH, config.batch)):
        _populate_tier(sched, tier, members)
    for tier, path in own.items():
        sched.set_tier("tier_cgroups", c_uint64(cgroup_id(path)), tier)


def _populate_tier(sched: BpfScheduler, tier: Tier, members: TierMembers) -> None:
    for spec in members.cgroups:
        sched.set_tier("tier_cgroups", c_uint64(cgroup_id(cgroup_path(spec))), tier)
    for comm in members.comms:
        table = "tier_comm_prefixes" if comm.endswith("*") else "tier_comms"
        sched.set_tier(table, comm_key(comm), tier)
    for pid in members.pids:
        sched.set_tier("tier_pids", c_uint32(pid), tier)


def exec_in_tier(tier: str, cmd: list[str]) -> None:
    """Move this process into the tier's cgroup and exec cmd (never returns)."""
    procs = OWN_ROOT / tier / "cgroup.procs"
    if not procs.is_file():
        raise EnvironmentProblem(f"{procs.parent} is missing: start `scx-gpu load` first")
    try:
        procs.write_text(f"{os.getpid()}\n")
    except PermissionError as exc:
        raise EnvironmentProblem(f"cannot join {procs.parent}: run as root") from exc
    exec_command(cmd)


def exec_command(cmd: list[str]) -> None:
    """Become cmd (never returns); a missing command is the user's error."""
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError as exc:
        raise UsageError(f"command not found: {cmd[0]}") from exc
