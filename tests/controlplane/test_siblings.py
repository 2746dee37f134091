"""The other threads of GPU processes, read from a fake /proc and the real one."""

import threading
import time
from pathlib import Path

from scx_gpu.controlplane import siblings, topology
from scx_gpu.controlplane.siblings import Sibling


def fake_thread(root: Path, tgid: int, tid: int, comm: str, state: str, ran_ns: int) -> None:
    proc = root / "proc"
    for base in (proc / str(tgid) / "task" / str(tid), proc / str(tid)):
        base.mkdir(parents=True, exist_ok=True)
        (base / "status").write_text(f"Name:\t{comm}\nTgid:\t{tgid}\nPid:\t{tid}\n")
        (base / "stat").write_text(f"{tid} ({comm}) {state} 1 {tgid} 0 0 -1\n")
        (base / "schedstat").write_text(f"{ran_ns} {ran_ns * 2} 7\n")


def test_the_untagged_threads_of_tagged_processes_only(tmp_path):
    fake_thread(tmp_path, 100, 100, "main", "S", 10)
    fake_thread(tmp_path, 100, 101, "worker ) S (", "R", 20)  # a hostile name
    fake_thread(tmp_path, 100, 102, "launcher", "R", 30)  # tagged
    fake_thread(tmp_path, 100, 103, "loader", "D", 40)
    fake_thread(tmp_path, 200, 201, "other", "R", 50)  # another process
    assert siblings.siblings([102, 999], tmp_path) == {
        100: Sibling(10, 20, False), 101: Sibling(20, 40, True), 103: Sibling(40, 80, False)}
    assert siblings.threads_now([101, 103, 555], tmp_path) == {
        101: Sibling(20, 40, True), 103: Sibling(40, 80, False)}


def test_reads_are_bounded_and_shared_among_processes(tmp_path, monkeypatch):
    for tgid in (1000, 2000):
        for tid in range(tgid, tgid + 200):  # all tagged in 1000, none in 2000 but one
            fake_thread(tmp_path, tgid, tid, "t", "R", tid)
    reads: list[Path] = []
    real_read = siblings._read

    def counted(path: Path) -> str | None:
        reads.append(path)
        return real_read(path)
    monkeypatch.setattr(siblings, "_read", counted)
    monkeypatch.setattr(topology, "_read", counted)
    found = siblings.siblings([*range(1100, 1200), 2000], tmp_path)
    assert len(found) == siblings.MAX_THREADS
    assert {t // 1000 for t in found} == {1, 2}  # each process its share
    # One status a process, whatever its tagged threads; two files a thread.
    assert len([p for p in reads if p.name == "status"]) == 2
    assert len(reads) == 2 + 2 * siblings.MAX_THREADS


def spin(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


def test_a_busy_thread_of_this_process_is_seen_running():
    stop = threading.Event()
    spinner = threading.Thread(target=spin, args=(stop,))
    spinner.start()
    try:
        tid = spinner.native_id
        assert tid is not None
        deadline = time.monotonic() + 10
        while not (found := siblings.siblings([threading.get_native_id()]))[tid].runnable:
            assert time.monotonic() < deadline, "the spinner never showed as runnable"
        time.sleep(0.05)
        assert siblings.threads_now([tid])[tid].ran_ns > found[tid].ran_ns
    finally:
        stop.set()
        spinner.join()
