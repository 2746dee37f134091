"""cgroup v2 settings and their undo, against a fake cgroup tree; I/O and memory parsing."""

import os
from pathlib import Path

import pytest

from scx_gpu.controlplane import blkio, cgknobs, memlimits
from scx_gpu.errors import EnvironmentProblem, UsageError

IO_MAX_DEFAULT = "rbps=max wbps=max riops=max wiops=max"


def cgroup(path: Path, controllers: str = "", subtree: str = "", **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(subtree + "\n")
    for name, value in files.items():
        (path / name.replace("_", ".")).write_text(value)
    return path


def subtree_write(control: Path, data: str) -> None:
    """The kernel's semantics for a write to cgroup.subtree_control: +ctrl / -ctrl."""
    on = set(control.read_text().split())
    for word in data.split():
        (on.add if word[0] == "+" else on.discard)(word[1:])
    with control.open("w") as f:  # not write_text: the test watches that
        f.write(" ".join(sorted(on)) + "\n")


@pytest.fixture
def tree(tmp_path):
    root = cgroup(tmp_path, "cpu io memory", "cpu")
    cgroup(root / "scx-gpu", "cpu")
    batch = cgroup(root / "scx-gpu" / "batch", "", "", io_weight="default 100\n",
                   io_max="", memory_high="max\n")
    return root, batch


def test_apply_enables_controllers_writes_and_undo_restores_everything(tree, monkeypatch):
    root, batch = tree
    written: list[tuple[str, str]] = []
    real_write = Path.write_text

    def write(self: Path, data: str, *args, **kwargs) -> int:
        written.append((str(self.relative_to(root)), data))
        if self.name == "cgroup.subtree_control":
            subtree_write(self, data)
            return len(data)
        return real_write(self, data, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", write)
    knobs = [*blkio.knobs([batch], 10, ["259:0 wbps=1m"]),
             *memlimits.batch_knobs([batch], "256M")]
    undo = cgknobs.apply(knobs, root)
    assert written == [("cgroup.subtree_control", "+io"),
                       ("scx-gpu/cgroup.subtree_control", "+io"),
                       ("scx-gpu/batch/io.weight", "default 10"),
                       ("scx-gpu/batch/io.max", f"259:0 wbps={1 << 20}"),
                       ("cgroup.subtree_control", "+memory"),
                       ("scx-gpu/cgroup.subtree_control", "+memory"),
                       ("scx-gpu/batch/memory.high", str(256 << 20))]
    written.clear()
    undo()
    assert written == [("scx-gpu/batch/memory.high", "max"),
                       ("scx-gpu/batch/io.max", f"259:0 {IO_MAX_DEFAULT}"),
                       ("scx-gpu/batch/io.weight", "default 100"),
                       ("scx-gpu/cgroup.subtree_control", "-memory"),
                       ("cgroup.subtree_control", "-memory"),
                       ("scx-gpu/cgroup.subtree_control", "-io"),
                       ("cgroup.subtree_control", "-io")]
    assert (root / "cgroup.subtree_control").read_text().split() == ["cpu"]


def test_io_max_restores_the_devices_own_previous_line(tree):
    _root, batch = tree
    (batch / "io.max").write_text("8:0 rbps=100 wbps=max riops=max wiops=max\n259:0 "
                                  "rbps=5 wbps=max riops=max wiops=max\n")
    knob = blkio.limit_knob(batch, "259:0 wbps=7")
    assert knob.restore((batch / "io.max").read_text()) == [
        "259:0 rbps=5 wbps=max riops=max wiops=max"]


def test_a_failing_write_undoes_the_ones_before(tree):
    root, batch = tree
    (batch / "memory.high").unlink()
    (batch / "memory.high").mkdir()  # writing it fails
    knobs = [*blkio.knobs([batch], 10, []), *memlimits.batch_knobs([batch], "1G")]
    with pytest.raises(UsageError, match=r"memory\.high"):
        cgknobs.apply(knobs, root)
    assert (batch / "io.weight").read_text() == "default 100"


def test_a_missing_controller_is_refused_before_any_write(tree):
    root, batch = tree
    (root / "cgroup.controllers").write_text("cpu io\n")
    knobs = [*blkio.knobs([batch], 10, []), *memlimits.batch_knobs([batch], "1G")]
    with pytest.raises(EnvironmentProblem, match="no memory controller"):
        cgknobs.apply(knobs, root)
    assert (batch / "io.weight").read_text() == "default 100\n"


def test_memory_low_goes_on_every_ancestor_below_the_root(tree):
    root, _ = tree
    gpu = root / "scx-gpu" / "gpu"
    knobs = memlimits.gpu_knobs([gpu, root / "jobs" / "a"], "max", root)
    assert [(k.cgroup.relative_to(root), k.value) for k in knobs] == [
        (Path("scx-gpu"), "max"), (Path("scx-gpu/gpu"), "max"), (Path("jobs"), "max"),
        (Path("jobs/a"), "max")]


@pytest.mark.parametrize("text,value", [("512M", str(512 << 20)), ("4g", str(4 << 30)),
                                        ("max", "max"), ("50%", "x")])
def test_memory_sizes(tmp_path, text, value):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1000 kB\nMemFree: 1 kB\n")
    expected = str(512_000) if value == "x" else value
    assert memlimits.parse_size(text, "batch_mem_high", meminfo) == expected


@pytest.mark.parametrize("text", ["0", "0M", "-1G", "lots", "0%", "101%"])
def test_bad_memory_sizes(text):
    with pytest.raises(UsageError, match="batch_mem_high"):
        memlimits.parse_size(text, "batch_mem_high")


@pytest.mark.parametrize("spec", ["259:0", "259:0 wbps=0", "259:0 speed=1", "/nonexistent wbps=1",
                                  f"{os.devnull} wbps=1"])
def test_bad_io_limits(spec):
    with pytest.raises(UsageError):
        blkio.parse_limit(spec)


def test_io_weight_range(tree):
    _, batch = tree
    for bad in (-1, 10001):
        with pytest.raises(UsageError, match="1-10000"):
            blkio.weight_knob(batch, bad)


def test_a_partition_stands_for_its_disk(tmp_path):
    disk = tmp_path / "devices" / "nvme0n1"
    part = disk / "nvme0n1p1"
    part.mkdir(parents=True)
    (disk / "dev").write_text("259:0\n")
    (part / "dev").write_text("259:1\n")
    (part / "partition").write_text("1\n")
    block = tmp_path / "dev-block"
    block.mkdir()
    (block / "259:1").symlink_to(part)
    (block / "259:0").symlink_to(disk)
    assert blkio.device_number("259:1", block) == "259:0"
    assert blkio.device_number("259:0", block) == "259:0"
