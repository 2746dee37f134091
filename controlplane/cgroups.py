"""cgroup helpers the scheduler's tiers, the mainline fallback, status and the
bench share (v2, except where a function says it reads v1 too)."""

from pathlib import Path

from scx_gpu.errors import EnvironmentProblem, UsageError


def _cgroup2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on hybrid hosts)."""
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return Path("/sys/fs/cgroup")


CGROUP_ROOT = _cgroup2_mount()


def cgroup_path(spec: str) -> Path:
    """A cgroup v2 path given absolute or relative to the cgroup root."""
    path = Path(spec)
    return path if path.is_relative_to(CGROUP_ROOT) else CGROUP_ROOT / spec.lstrip("/")


def cgroup_id(path: Path) -> int:
    """The kernel's cgroup id: the kernfs node id, which is the inode number."""
    if not (path / "cgroup.procs").is_file():
        raise UsageError(f"cgroup {path} does not exist (or is not a cgroup v2 directory)")
    return path.stat().st_ino


def processes(cgroup: Path) -> list[int]:
    """The processes in cgroup (v1 or v2); none once it is gone."""
    try:
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def cpu_stat(cgroup: Path) -> dict[str, int]:
    """cgroup's cpu.stat (v2, or the v1 cpu controller's); empty once it is gone."""
    try:
        lines = (cgroup / "cpu.stat").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split() for line in lines)}


def cpu_seconds(cgroup: Path) -> float:
    """CPU seconds used so far by everything in cgroup (cgroup v2 cpu.stat)."""
    usage = cpu_stat(cgroup).get("usage_usec")
    if usage is None:
        raise EnvironmentProblem(f"{cgroup}/cpu.stat has no usage_usec: is it a cgroup v2 group?")
    return usage / 1e6
