"""GPU processes and their cgroups mapped to home CPUs, from fake /proc and /sys trees."""

from pathlib import Path

from scx_gpu.bpf import maps
from scx_gpu.controlplane import homes, intf
from scx_gpu.controlplane import topology as tp
from tests.controlplane.test_topology import _gpu, _process, _write, two_sockets

NODE0, NODE1 = (0, 1, 2, 3), (4, 5, 6, 7)


def _machine(root: Path) -> tuple[dict[int, tp.Gpu], list[tp.Cpu]]:
    """Two sockets, GPU 0 on node 0 and GPU 1 on node 1."""
    two_sockets(root)
    _gpu(root, 0, "0000:18:00.0", 0, "0-3")
    _gpu(root, 1, "0000:9a:00.0", 1, "4-7")
    return tp.read_gpus(root), tp.read_cpus(root)


def _in_cgroup(root: Path, pid: int, path: str, contexts: tuple[int, ...] = ()) -> None:
    _process(root, pid, contexts)
    _write(root / "proc" / str(pid) / "cgroup", f"0::{path}")


def _assign(root: Path, pids: list[int], override: tuple[int, ...] = (),
            numbers: homes.HomeNumbers | None = None) -> homes.Homes:
    gpus, cpus = tp.read_gpus(root), tp.read_cpus(root)
    return homes.assign(pids, gpus, cpus, override, numbers or homes.HomeNumbers(), root)


def test_a_gpu_process_and_its_cgroup_live_by_its_gpu(tmp_path):
    _machine(tmp_path)
    _in_cgroup(tmp_path, 100, "/serving", contexts=(1,))  # a rw-s mapping of /dev/nvidia1
    got = _assign(tmp_path, [100])
    assert got == homes.Homes({0: NODE1}, {100: 0}, {"/serving": 0})
    # Batch prefers the CPUs outside it.
    assert got.away(range(8)) == NODE0
    assert got.describe() == "GPU locality: home 0: CPUs 4-7 (1 process, 1 cgroup)"
    assert homes.Homes().describe() == "GPU locality: no homes"


def test_gpu_processes_on_two_nodes_get_a_home_each(tmp_path):
    _machine(tmp_path)
    _in_cgroup(tmp_path, 100, "/a", contexts=(1,))
    _in_cgroup(tmp_path, 101, "/b", contexts=(0,))
    got = _assign(tmp_path, [100, 101])
    assert got.cpus == {0: NODE1, 1: NODE0}
    assert got.processes == {100: 0, 101: 1}
    assert got.cgroups == {"/a": 0, "/b": 1}
    assert got.away(range(8)) == ()  # every CPU is some process's home


def test_a_cgroup_whose_gpu_processes_disagree_gets_no_home(tmp_path):
    # Tensor parallel across both sockets: each worker near its own GPU,
    # the helpers of the cgroup nowhere in particular.
    _machine(tmp_path)
    _in_cgroup(tmp_path, 100, "/tp", contexts=(1,))
    _in_cgroup(tmp_path, 101, "/tp", contexts=(0,))
    got = _assign(tmp_path, [100, 101])
    assert got.processes == {100: 0, 101: 1} and got.cgroups == {}


def test_no_home_without_a_gpu_context_or_with_every_cpu(tmp_path):
    _machine(tmp_path)
    _in_cgroup(tmp_path, 100, "/x")  # the driver's pages only: no context
    _in_cgroup(tmp_path, 101, "/y", contexts=(0, 1))  # local to every CPU
    assert _assign(tmp_path, [100, 101, 999]) == homes.Homes()  # 999: gone


def test_the_root_cgroup_never_gets_a_home(tmp_path):
    _machine(tmp_path)
    _in_cgroup(tmp_path, 100, "/", contexts=(1,))
    got = _assign(tmp_path, [100])
    assert got.processes == {100: 0} and got.cgroups == {}


def test_gpu_cpus_override_every_gpu_process(tmp_path):
    _machine(tmp_path)
    _in_cgroup(tmp_path, 100, "/a", contexts=(0,))
    _in_cgroup(tmp_path, 101, "/b")  # tagged, no GPU context: still gpu work
    got = _assign(tmp_path, [100, 101], override=(6, 7))
    assert got == homes.Homes({intf.GPU_CPUS_HOME: (6, 7)}, {100: 0, 101: 0},
                              {"/a": 0, "/b": 0})
    # Gpu-tier tasks live there even when no process is found.
    assert _assign(tmp_path, [], override=(6, 7)).away(range(8)) == (0, 1, 2, 3, 4, 5)


def test_home_numbers_are_stable_and_bounded():
    numbers = homes.HomeNumbers(size=2)
    assert numbers.renumber([NODE1, NODE0]) == {NODE1: 0, NODE0: 1}
    assert numbers.renumber([NODE0]) == {NODE0: 1}  # kept while in use
    assert numbers.renumber([(8,), NODE0, (9,)]) == {NODE0: 1, (8,): 0}  # (9,): no room


def test_candidates_are_tagged_threads_processes_and_cgroup_members(tmp_path):
    for tid, pid in ((100, 100), (101, 100), (200, 200)):
        _write(tmp_path / "proc" / str(tid) / "status", f"Tgid:\t{pid}")
    group = tmp_path / "cg"
    _write(group / "cgroup.procs", "300\n301")
    assert homes.candidates([101, 555], [200], [group, tmp_path / "gone"], tmp_path) == [
        100, 200, 300, 301]


def test_process_cgroup_reads_the_v2_line(tmp_path):
    _write(tmp_path / "proc" / "5" / "cgroup", "12:cpu:/old\n0::/system.slice/x.service")
    assert homes.process_cgroup(5, tmp_path) == "/system.slice/x.service"
    assert homes.process_cgroup(6, tmp_path) is None


class FakeScheduler:
    """What HomeMaps writes: each home's CPUs, map entries, generations."""

    def __init__(self) -> None:
        self.homes: dict[int, tuple[int, ...]] = {}
        self.entries: dict[str, dict[int, int]] = {"gpu_proc_homes": {}, "gpu_cgroup_homes": {}}
        self.generations = 0
        self.writes = 0

    def map_fd(self, name: str) -> int:
        return list(self.entries).index(name)

    def set_home(self, home: int, cpus: tuple[int, ...]) -> None:
        self.homes[home] = cpus
        self.writes += 1

    def next_generation(self) -> None:
        self.generations += 1


def test_home_maps_write_changes_only(tmp_path, monkeypatch):
    sched = FakeScheduler()
    names = list(sched.entries)

    def update(fd, key, value):
        sched.entries[names[fd]][key.value] = value.value
        sched.writes += 1

    def delete(fd, key):
        del sched.entries[names[fd]][key.value]
        sched.writes += 1
    monkeypatch.setattr(maps, "update", update)
    monkeypatch.setattr(maps, "delete", delete)
    (tmp_path / "serving").mkdir()
    writer = homes.HomeMaps(sched, tuple(range(8)), cgroup_root=tmp_path)
    serving = homes.Homes({0: NODE1}, {100: 0}, {"/serving": 0, "/gone": 0})
    writer.write(serving)
    cgid = (tmp_path / "serving").stat().st_ino
    assert sched.homes == {0: NODE1, intf.AWAY_HOME: NODE0}
    assert sched.entries == {"gpu_proc_homes": {100: 0}, "gpu_cgroup_homes": {cgid: 0}}
    assert sched.generations == 1
    writes = sched.writes
    writer.write(serving)  # nothing changed: nothing written
    assert (sched.writes, sched.generations) == (writes, 1)
    writer.write(homes.Homes())  # the process left
    assert sched.homes == {0: (), intf.AWAY_HOME: ()}
    assert sched.entries == {"gpu_proc_homes": {}, "gpu_cgroup_homes": {}}
    assert sched.generations == 2
