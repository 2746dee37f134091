"""A loader killed with co-location applied: the next load restores what it left.

SIGKILL runs no exit path, so only the undo record the loader kept tells the
next one what to write back. A real loader process (tests.controlplane.
killedcoloc) applies cgroup settings and IRQ steering to fake trees (this
host's cgroup v2 has neither the io nor the memory controller, and its real
interrupts are not ours to move); test_netiso_host kills a real `scx-gpu
load` with its qdisc on a veth device.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scx_gpu.controlplane import colocation, irqsteer, undorecord
from scx_gpu.controlplane.config import Config
from scx_gpu.controlplane.runstate import read_json
from scx_gpu.errors import EnvironmentProblem
from tests.controlplane.test_irqsteer import affinity, fake_irqs

REPO = Path(__file__).resolve().parents[2]
CGROUP_FILES = {"batch/io.weight": "default 100\n", "batch/io.max": "",
                "batch/memory.high": "max\n", "jobs/memory.low": "0\n",
                "jobs/gpu/memory.low": "0\n"}
IRQS = {24: ("0-1", ["nvme0q1"]), 25: ("0", ["nvme0q2"]), 26: ("1", ["nvme0q3"]),
        27: ("0-1", ["i8042"])}


def fake_cgroups(root: Path) -> Path:
    for name, text in CGROUP_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "cgroup.controllers").write_text("cpu io memory\n")
    for level in (root, root / "jobs"):  # controllers already passed down
        (level / "cgroup.subtree_control").write_text("io memory\n")
    return root


def cgroup_files(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in CGROUP_FILES}


@pytest.fixture
def trees(tmp_path, monkeypatch):
    cgroups = fake_cgroups(tmp_path / "cgroup")
    irqs = fake_irqs(tmp_path / "irq", IRQS)
    state = tmp_path / "run" / "colocation.json"
    monkeypatch.setattr(colocation, "STATE", state)
    monkeypatch.setattr(colocation, "CGROUP_ROOT", cgroups)
    monkeypatch.setattr(irqsteer, "IRQ_ROOT", irqs)
    return state, cgroups, irqs


def killed_loader(state: Path, cgroups: Path, irqs: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.controlplane.killedcoloc", str(state),
                             str(cgroups), str(irqs), str(cgroups / "batch"),
                             str(cgroups / "jobs" / "gpu")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.communicate(timeout=30)[0]
    return proc


def test_next_load_restores_every_value_a_killed_loader_changed(trees):
    state, cgroups, irqs = trees
    before_files = cgroup_files(cgroups)
    before_irqs = {n: affinity(irqs, n) for n in IRQS}
    proc = killed_loader(state, cgroups, irqs)
    try:
        applied_files = cgroup_files(cgroups)
        applied_irqs = {n: affinity(irqs, n) for n in IRQS}
        # A loader that runs owns its settings: a second one applying more is refused,
        # one applying nothing leaves them.
        with pytest.raises(EnvironmentProblem, match=f"pid {proc.pid}.*stop it first"):
            colocation.restore_left(print, applying=True)
        colocation.restore_left(print, applying=False)
        assert cgroup_files(cgroups) == applied_files
        assert colocation.saved()["irqs"] and colocation.left_by_killed_loader() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert all(applied_files[n] != before_files[n] for n in CGROUP_FILES), applied_files
    assert [n for n in IRQS if applied_irqs[n] != before_irqs[n]] == [24, 25], applied_irqs
    # Dead: status no longer shows its settings as applied, and names it.
    assert colocation.saved() == {} and colocation.left_by_killed_loader() == proc.pid
    lines: list[str] = []
    with colocation.applied(Config(), lines.append, [], []):
        pass
    assert lines == [f"scx-gpu: restored what a killed scx-gpu load (pid {proc.pid}) left: "
                     "5 cgroup file(s), 2 interrupt affinity(ies)"], lines
    after = cgroup_files(cgroups)
    assert after.pop("batch/io.max") == "8:0 rbps=max wbps=max riops=max wiops=max"
    assert after == {n: v.strip() for n, v in before_files.items() if n != "batch/io.max"}
    assert {n: affinity(irqs, n) for n in IRQS} == before_irqs
    assert not state.exists()
    lines.clear()
    with colocation.applied(Config(), lines.append, [], []):
        pass
    assert lines == []  # restored once


def test_restore_runs_the_steps_backwards_and_reports_what_it_could_not(tmp_path):
    knob, control = tmp_path / "io.weight", tmp_path / "cgroup.subtree_control"
    record = undorecord.UndoRecord(tmp_path / "record.json")
    record.controller(control, "io")
    record.file(knob, ["default 100"])
    record.file(knob, ["default 50"])  # written twice: the first value wins
    record.file(tmp_path / "gone" / "io.max", ["8:0 wbps=max"])  # its cgroup removed since
    record.irq(tmp_path / "irq" / "7" / "smp_affinity_list", "0-3")
    directory = tmp_path / "dir"
    directory.mkdir()
    record.file(directory, ["x"])  # EISDIR: a failure to report
    removed: list[str] = []
    record.qdisc("eth0")
    failed = undorecord.restore(record.steps, removed.append)
    assert knob.read_text() == "default 100" and control.read_text() == "-io"
    assert removed == ["eth0"]
    assert failed == [f"{directory} (Is a directory)"]


def test_a_record_is_whole_or_absent(tmp_path):
    path = tmp_path / "record.json"
    record = undorecord.UndoRecord(path)
    record.save({"irqs": []})
    record.qdisc("eth0")
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no partial file left
    saved = read_json(path)
    assert saved["undo"] == [{"kind": "qdisc", "dev": "eth0"}] and saved["irqs"] == []
    assert saved["owner"]["pid"] == os.getpid() and undorecord.alive(saved)
    assert not undorecord.alive({**saved, "owner": {"pid": os.getpid(), "start": 1}})
