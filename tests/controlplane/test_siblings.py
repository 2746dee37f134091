"""The other threads of GPU processes, read from a fake /proc and the real one."""

import threading
import time
from pathlib import Path

from scx_gpu.controlplane import siblings


def fake_thread(proc: Path, tgid: int, tid: int, comm: str, state: str, ran_ns: int) -> None:
    for base in (proc / str(tgid) / "task" / str(tid), proc / str(tid)):
        base.mkdir(parents=True, exist_ok=True)
        (base / "status").write_text(f"Name:\t{comm}\nTgid:\t{tgid}\nPid:\t{tid}\n")
        (base / "stat").write_text(f"{tid} ({comm}) {state} 1 {tgid} 0 0 -1\n")
        (base / "schedstat").write_text(f"{ran_ns} 5 7\n")


def test_the_untagged_threads_of_tagged_processes_only(tmp_path):
    fake_thread(tmp_path, 100, 100, "main", "S", 10)
    fake_thread(tmp_path, 100, 101, "worker ) S (", "R", 20)  # a hostile name
    fake_thread(tmp_path, 100, 102, "launcher", "R", 30)  # tagged
    fake_thread(tmp_path, 100, 103, "loader", "D", 40)
    fake_thread(tmp_path, 200, 201, "other", "R", 50)  # another process
    assert siblings.siblings([102, 999], tmp_path) == {100: (10, False), 101: (20, True),
                                                        103: (40, False)}
    assert siblings.cpu_ns([101, 103, 555], tmp_path) == {101: 20, 103: 40}


def test_at_most_max_siblings_are_followed(tmp_path, monkeypatch):
    monkeypatch.setattr(siblings, "MAX_SIBLINGS", 3)
    for tid in range(300, 310):
        fake_thread(tmp_path, 300, tid, "t", "R", tid)
    assert len(siblings.siblings([300], tmp_path)) == 3


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
        while not (found := siblings.siblings([threading.get_native_id()]))[tid][1]:
            assert time.monotonic() < deadline, "the spinner never showed as runnable"
        time.sleep(0.05)
        assert siblings.cpu_ns([tid])[tid] > found[tid][0]
    finally:
        stop.set()
        spinner.join()
