"""Topology and GPU locality read from fake /sys and /proc trees, and one real
/proc that is another user's."""

import os
from pathlib import Path

import pytest

from scx_gpu.controlplane import topology as tp
from scx_gpu.errors import UsageError


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _cache(root: Path, cpu: int, index: int, level: int, kind: str, shared: str,
           cache_id: int | None = None) -> None:
    d = root / tp.SYS_CPU / f"cpu{cpu}" / "cache" / f"index{index}"
    _write(d / "level", str(level))
    _write(d / "type", kind)
    _write(d / "shared_cpu_list", shared)
    if cache_id is not None:
        _write(d / "id", str(cache_id))


def _machine(root: Path, possible: str, online: str, nodes: dict[int, str]) -> None:
    _write(root / tp.SYS_CPU / "possible", possible)
    _write(root / tp.SYS_CPU / "online", online)
    for node, cpulist in nodes.items():
        _write(root / tp.SYS_NODE / f"node{node}" / "cpulist", cpulist)
        for cpu in tp.parse_cpulist(cpulist):
            link = root / tp.SYS_CPU / f"cpu{cpu}" / f"node{node}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"../../node/node{node}")


def _cpu(root: Path, cpu: int, siblings: str) -> None:
    _write(root / tp.SYS_CPU / f"cpu{cpu}" / "topology" / "thread_siblings_list", siblings)


def two_sockets(root: Path) -> None:
    """2 sockets x 2 cores x 2 threads, an L3 per socket (ids per CPU, as QEMU's)."""
    _machine(root, "0-7", "0-7", {0: "0-3", 1: "4-7"})
    for cpu in range(8):
        pair = cpu - cpu % 2
        _cpu(root, cpu, f"{pair}-{pair + 1}")
        _cache(root, cpu, 0, 1, "Data", str(cpu))
        _cache(root, cpu, 1, 1, "Instruction", str(cpu))
        _cache(root, cpu, 2, 2, "Unified", f"{pair}-{pair + 1}")
        _cache(root, cpu, 3, 3, "Unified", "0-3" if cpu < 4 else "4-7", cache_id=cpu)


def test_two_sockets_smt_and_per_socket_llc(tmp_path):
    two_sockets(tmp_path)
    cpus = tp.read_cpus(tmp_path)
    assert [c.cpu for c in cpus] == list(range(8))
    assert cpus[5] == tp.Cpu(5, True, 1, (4, 5, 6, 7), 3, (4, 5))
    assert all(c.online and c.llc_level == 3 for c in cpus)
    assert [c.node for c in cpus] == [0] * 4 + [1] * 4
    # One LLC per socket although every CPU reports its own L3 id.
    assert tp.llc_domains(cpus) == {c: c // 4 for c in range(8)}


def test_no_l3_uses_the_highest_level_not_the_instruction_cache(tmp_path):
    _machine(tmp_path, "0-3", "0-3", {0: "0-3"})
    for cpu in range(4):
        _cpu(tmp_path, cpu, str(cpu))
        _cache(tmp_path, cpu, 0, 1, "Data", str(cpu))
        _cache(tmp_path, cpu, 1, 2, "Unified", "0-1" if cpu < 2 else "2-3")
        _cache(tmp_path, cpu, 2, 2, "Instruction", "0-3")  # wider, but not data
    cpus = tp.read_cpus(tmp_path)
    assert [(c.llc, c.llc_level) for c in cpus] == [((0, 1), 2)] * 2 + [((2, 3), 2)] * 2
    assert tp.llc_domains(cpus) == {0: 0, 1: 0, 2: 1, 3: 1}


def test_offline_cpus_keep_their_node_and_get_the_node_domain(tmp_path):
    two_sockets(tmp_path)
    _write(tmp_path / tp.SYS_CPU / "online", "0-5")
    # The kernel removes an offline CPU's cache and topology directories.
    for cpu in (6, 7):
        for sub in ("cache", "topology"):
            for f in sorted((tmp_path / tp.SYS_CPU / f"cpu{cpu}" / sub).rglob("*"),
                            reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
    cpus = tp.read_cpus(tmp_path)
    assert cpus[6] == tp.Cpu(6, False, 1, (), None, ())
    assert not cpus[7].online and cpus[5].online
    domains = tp.llc_domains(cpus)
    assert domains[6] == domains[7] == 2  # after the two LLCs
    assert domains[4] == 1


def test_cpus_without_cache_info_or_numa_info(tmp_path):
    _write(tmp_path / tp.SYS_CPU / "possible", "0-3")
    _write(tmp_path / tp.SYS_CPU / "online", "0-3")
    for cpu in range(4):
        _cpu(tmp_path, cpu, str(cpu))
    _cache(tmp_path, 0, 0, 3, "Unified", "0-1")
    _cache(tmp_path, 1, 0, 3, "Unified", "0-1")
    cpus = tp.read_cpus(tmp_path)  # CPUs 2 and 3: no cache directory, no node
    assert [(c.node, c.llc) for c in cpus] == [(None, (0, 1))] * 2 + [(None, ())] * 2
    assert tp.llc_domains(cpus) == {0: 0, 1: 0, 2: 1, 3: 1}


def test_node_from_the_node_cpulist_when_the_cpu_has_no_link(tmp_path):
    _write(tmp_path / tp.SYS_CPU / "possible", "0-1")
    _write(tmp_path / tp.SYS_CPU / "online", "0-1")
    _write(tmp_path / tp.SYS_NODE / "node3" / "cpulist", "1")
    assert [c.node for c in tp.read_cpus(tmp_path)] == [None, 3]


def test_not_a_linux_root(tmp_path):
    with pytest.raises(UsageError, match="possible"):
        tp.read_cpus(tmp_path)


@pytest.mark.parametrize(("text", "cpus"), [
    ("0-3,8", (0, 1, 2, 3, 8)), ("", ()), ("5", (5,)), (" 2,0-1 \n", (0, 1, 2)),
    ("0-1,1-2", (0, 1, 2)),
])
def test_parse_cpulist(text, cpus):
    assert tp.parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "1-", "-1", "0;1", "1.5"])
def test_parse_cpulist_rejects(text):
    with pytest.raises(UsageError, match="CPU list"):
        tp.parse_cpulist(text)


def test_gpu_cpus_override(tmp_path):
    two_sockets(tmp_path)
    cpus = tp.read_cpus(tmp_path)
    assert tp.gpu_cpus_override("0-3,6", cpus) == (0, 1, 2, 3, 6)
    with pytest.raises(UsageError, match="no CPU 8, 9 here"):
        tp.gpu_cpus_override("7-9", cpus)
    with pytest.raises(UsageError, match="at least one CPU"):
        tp.gpu_cpus_override(",", cpus)


def _gpu(root: Path, minor: int, pci: str, node: int | None, local: str | None) -> None:
    info = (f"Model: \t\t NVIDIA H200\nIRQ:   \t\t 77\nGPU UUID: \t GPU-{minor:08d}\n"
            f"Bus Type: \t PCIe\nBus Location: \t {pci}\nDevice Minor: \t {minor}\n"
            "GPU Excluded:\t No")
    _write(root / tp.NVIDIA_GPUS / pci / "information", info)
    device = root / tp.SYS_PCI / pci
    _write(device / "numa_node", str(-1 if node is None else node))
    if local is not None:
        _write(device / "local_cpulist", local)


# /proc/PID/maps lines of /dev/nvidiaN files on an H200 host (driver 580,
# docs/results/h200/gpu-map/): write-only pages of every GPU once the driver
# is initialised, and a read-write one of each GPU the process has a context on.
DRIVER_PAGES = ["7f6a51cb9000-7f6a51cc9000 -w-s 00000000 00:06 176  /dev/nvidia{}",
                "7f6a51cc9000-7f6a51cd9000 -w-s 00000000 00:06 176  /dev/nvidia{}"]
CONTEXT = "200600000-200800000 rw-s 00000000 00:06 175  /dev/nvidia{}"
OTHERS = ["7f6a52000000-7f6a52200000 rw-s 00000000 00:06 170  /dev/nvidiactl",
          "7f6a52200000-7f6a52400000 rw-s 00000000 00:06 171  /dev/nvidia-uvm",
          "7f6a53000000-7f6a53001000 r--p 00000000 08:01 999  /usr/lib/libcuda.so.1",
          "7ffd1000-7ffd2000 rw-p 00000000 00:00 0  [stack]", "7ffe1000-7ffe2000 r-xp 0 0 0"]


def _process(root: Path, pid: int, contexts: tuple[int, ...],
             gpus: tuple[int, ...] = (0, 1)) -> None:
    lines = [*OTHERS, *(page.format(m) for m in gpus for page in DRIVER_PAGES),
             *(CONTEXT.format(m) for m in contexts)]
    _write(root / "proc" / str(pid) / "maps", "\n".join(lines))


def test_gpus_on_two_nodes_and_the_processes_that_use_them(tmp_path):
    two_sockets(tmp_path)
    _gpu(tmp_path, 0, "0000:18:00.0", 0, "0-3")
    _gpu(tmp_path, 1, "0000:9a:00.0", 1, "4-7")
    _process(tmp_path, 100, (1,))
    _process(tmp_path, 101, (0, 1))
    _process(tmp_path, 102, ())  # the driver initialised, no context: a serving stack's helper
    _process(tmp_path, 103, (1,), gpus=(1,))  # CUDA_VISIBLE_DEVICES=1
    gpus = tp.read_gpus(tmp_path)
    assert gpus == {0: tp.Gpu(0, "0000:18:00.0", 0, (0, 1, 2, 3)),
                    1: tp.Gpu(1, "0000:9a:00.0", 1, (4, 5, 6, 7))}
    cpus = tp.read_cpus(tmp_path)
    assert tp.process_gpus(100, tmp_path) == [gpus[1]]
    assert tp.gpu_cpus(tp.process_gpus(100, tmp_path, gpus), cpus) == (4, 5, 6, 7)
    assert tp.used_gpu_minors(101, tmp_path) == (0, 1)
    assert tp.gpu_cpus(tp.process_gpus(101, tmp_path, gpus), cpus) == tuple(range(8))
    assert tp.used_gpu_minors(102, tmp_path) == ()
    assert tp.gpu_cpus(tp.process_gpus(102, tmp_path, gpus), cpus) == ()
    assert tp.used_gpu_minors(103, tmp_path) == (1,)
    assert tp.used_gpu_minors(999, tmp_path) == ()  # gone


def test_gpu_without_numa_node(tmp_path):
    two_sockets(tmp_path)
    _gpu(tmp_path, 0, "0000:18:00.0", None, "0-7")
    _gpu(tmp_path, 1, "0000:3b:00.0", None, None)
    gpus = tp.read_gpus(tmp_path)
    assert gpus[0].node is None and gpus[1].node is None
    cpus = tp.read_cpus(tmp_path)
    assert tp.gpu_cpus([gpus[0]], cpus) == tuple(range(8))  # local_cpulist still says
    assert tp.gpu_cpus([gpus[1]], cpus) == ()  # nothing says where it sits


def test_gpu_node_when_local_cpulist_is_missing(tmp_path):
    two_sockets(tmp_path)
    _gpu(tmp_path, 2, "0000:9a:00.0", 1, None)
    cpus = tp.read_cpus(tmp_path)
    assert tp.gpu_cpus(list(tp.read_gpus(tmp_path).values()), cpus) == (4, 5, 6, 7)


def test_no_driver_no_gpus_and_a_bad_information_file_is_skipped(tmp_path):
    assert tp.read_gpus(tmp_path) == {}
    _write(tmp_path / tp.NVIDIA_GPUS / "0000:18:00.0" / "information", "Model: weird")
    assert tp.read_gpus(tmp_path) == {}


def test_a_maps_file_that_cannot_be_read(tmp_path):
    (tmp_path / "proc" / "7" / "maps").mkdir(parents=True)
    assert tp.used_gpu_minors(7, tmp_path) == ()


@pytest.mark.root
def test_another_users_process_is_skipped():
    """As an unprivileged user, PID 1's (root's) mappings cannot be read."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        status = b"crash"
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                Path("/proc/1/maps").read_text()
                status = b"readable"  # the premise does not hold: the test says so
            except PermissionError:
                status = b"skipped" if tp.used_gpu_minors(1) == () else b"wrong"
        finally:
            os.write(write, status)
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        status = pipe.read()
    os.waitpid(child, 0)
    assert status == b"skipped", status


def test_tagged_threads_map_to_their_processes_and_gpus(tmp_path):
    two_sockets(tmp_path)
    _gpu(tmp_path, 0, "0000:18:00.0", 0, "0-3")
    _gpu(tmp_path, 1, "0000:9a:00.0", 1, "4-7")
    _process(tmp_path, 100, (1,))
    _process(tmp_path, 200, ())
    for tid, pid in ((100, 100), (101, 100), (102, 100), (200, 200)):
        _write(tmp_path / "proc" / str(tid) / "status", f"Name:\tpython3\nTgid:\t{pid}\n")
    processes = tp.gpu_processes([101, 102, 200, 300], tmp_path)  # 300: gone
    assert processes == {100: [tp.read_gpus(tmp_path)[1]], 200: []}


@pytest.mark.parametrize(("cpus", "text"), [((0, 1, 2, 3, 8), "0-3,8"), ((), ""), ((5,), "5"),
                                            ((3, 1, 2, 7, 6), "1-3,6-7")])
def test_format_cpulist_round_trips(cpus, text):
    assert tp.format_cpulist(cpus) == text
    assert tp.parse_cpulist(text) == tuple(sorted(cpus))
