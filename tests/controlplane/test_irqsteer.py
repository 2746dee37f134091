"""IRQ steering against a fake /proc/irq tree: the edge cases."""

import errno
import os
from pathlib import Path

import pytest

from scx_gpu.controlplane import irqsteer
from scx_gpu.controlplane.irqsteer import parse_cpulist
from scx_gpu.controlplane.topology import format_cpulist
from scx_gpu.errors import EnvironmentProblem, UsageError

ONLINE = frozenset(range(8))


def fake_irqs(root: Path, irqs: dict[int, tuple[str, list[str]]]) -> Path:
    """irq number -> (affinity list, handler names), as the kernel lays them out."""
    for number, (affinity, names) in irqs.items():
        d = root / str(number)
        d.mkdir(parents=True)
        (d / "smp_affinity_list").write_text(affinity + "\n")
        (d / "spurious").write_text("count 0\n")
        for name in names:
            (d / name).mkdir()
    (root / "default_smp_affinity").write_text("ff\n")
    return root


def affinity(root: Path, number: int) -> str:
    return (root / str(number) / "smp_affinity_list").read_text().strip()


@pytest.mark.parametrize("text,cpus", [("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}), ("5", {5}),
                                       ("0-1\n", {0, 1}), ("", set())])
def test_cpulists_round_trip(text, cpus):
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(frozenset(cpus))) == cpus


def test_bad_cpulist_is_a_usage_error():
    with pytest.raises(UsageError, match="0-3,8"):
        parse_cpulist("0-x")


def test_moves_matching_interrupts_off_the_avoided_cpus_and_restores_them(tmp_path):
    root = fake_irqs(tmp_path, {24: ("0-7", ["nvme0q1"]), 25: ("0-3", ["virtio0-input.0"]),
                                26: ("4-7", ["nvme0q2"]), 27: ("0-7", ["i8042"]),
                                28: ("2", ["eth0-TxRx-0"])})
    moves, undo = irqsteer.steer(frozenset({0, 1, 2}), list(irqsteer.DEFAULT_PATTERNS),
                                 root, ONLINE)
    assert [affinity(root, n) for n in (24, 25, 26, 27, 28)] == ["3-7", "3", "4-7", "0-7",
                                                                  "3-7"]
    assert [m.irq.number for m in moves] == [24, 25, 26, 28]  # not the keyboard
    assert moves[2].after is None and "already" in moves[2].line()
    assert "moved from CPUs 0-7 to 3-7" in moves[0].line()
    undo()
    assert [affinity(root, n) for n in (24, 25, 26, 27, 28)] == ["0-7", "0-3", "4-7", "0-7", "2"]


def test_never_an_empty_mask_and_never_an_offline_cpu(tmp_path):
    # Its only CPUs are avoided (0) or offline (5): it gets every online CPU but the avoided.
    root = fake_irqs(tmp_path, {30: ("0,5", ["nvme1q0"])})
    online = frozenset({0, 1, 2, 3})
    _, undo = irqsteer.steer(frozenset({0}), ["nvme*"], root, online)
    assert affinity(root, 30) == "1-3"
    undo()
    assert affinity(root, 30) == "0,5"


def test_avoiding_every_online_cpu_is_refused_before_anything_moves(tmp_path):
    root = fake_irqs(tmp_path, {24: ("0-3", ["nvme0q1"])})
    with pytest.raises(UsageError, match="leave at least one"):
        # CPU 5 is not online: it does not count as a CPU left.
        irqsteer.steer(frozenset({0, 1, 2, 3}), ["nvme*"], root, frozenset({0, 1, 2, 3}))
    assert affinity(root, 24) == "0-3"


def test_patterns_match_any_handler_of_a_shared_interrupt(tmp_path):
    root = fake_irqs(tmp_path, {40: ("0-1", ["ahci", "mydev-rx"]), 41: ("0-1", ["ahci"])})
    moves, _ = irqsteer.steer(frozenset({0}), ["mydev-*"], root, ONLINE)
    assert [(m.irq.number, m.irq.names) for m in moves] == [(40, ("ahci", "mydev-rx"))]


def test_a_pattern_matching_nothing_is_a_usage_error(tmp_path):
    root = fake_irqs(tmp_path, {24: ("0-3", ["nvme0q1"])})
    with pytest.raises(UsageError, match="/proc/interrupts"):
        irqsteer.steer(frozenset({0}), ["mlx5*"], root, ONLINE)


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EIO])
def test_interrupts_the_kernel_keeps_are_reported_and_left(tmp_path, refusal):
    root = fake_irqs(tmp_path, {24: ("0-3", ["nvme0q1"]), 25: ("0-3", ["nvme0q0"])})

    def write(path: Path, value: str) -> None:
        if path.parent.name == "24":
            raise OSError(refusal, os.strerror(refusal))
        path.write_text(value)
    moves, undo = irqsteer.steer(frozenset({0}), ["nvme*"], root, ONLINE, write)
    assert moves[0].after is None and "kernel manages" in moves[0].line()
    assert affinity(root, 25) == "1-3"
    undo()
    assert (affinity(root, 24), affinity(root, 25)) == ("0-3", "0-3")


def test_a_failure_midway_restores_what_was_moved(tmp_path):
    root = fake_irqs(tmp_path, {24: ("0-3", ["nvme0q1"]), 25: ("0-3", ["nvme0q2"]),
                                26: ("0-3", ["nvme0q3"])})

    def write(path: Path, value: str) -> None:
        if path.parent.name == "26":
            raise OSError(errno.ENOSPC, "No space left on device")  # no vector free there
        path.write_text(value)
    with pytest.raises(EnvironmentProblem, match=r"irq 26: No space.*--irq-pattern"):
        irqsteer.steer(frozenset({0}), ["nvme*"], root, ONLINE, write)
    assert [affinity(root, n) for n in (24, 25, 26)] == ["0-3", "0-3", "0-3"]


def test_restore_goes_on_past_a_failure_and_names_it(tmp_path):
    root = fake_irqs(tmp_path, {24: ("0-3", ["nvme0q1"]), 25: ("0-3", ["nvme0q2"])})
    fail = {"24"}

    def write(path: Path, value: str) -> None:
        if path.parent.name in fail and value == "0-3":
            raise OSError(errno.EINVAL, "Invalid argument")
        path.write_text(value)
    _, undo = irqsteer.steer(frozenset({0}), ["nvme*"], root, ONLINE, write)
    with pytest.raises(EnvironmentProblem, match="irq 24: Invalid argument"):
        undo()
    assert affinity(root, 25) == "0-3"  # restored despite irq 24


def test_gpu_local_cpus_come_from_nvidia_display_devices(tmp_path):
    for name, vendor, klass, cpus in (("0000:17:00.0", "0x10de", "0x030200", "0-7"),
                                      ("0000:18:00.0", "0x10de", "0x068000", "8-15"),  # bridge
                                      ("0000:3b:00.0", "0x15b3", "0x020000", "16-23"),  # NIC
                                      ("0000:ca:00.0", "0x10de", "0x030000", "24-31")):
        d = tmp_path / name
        d.mkdir()
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(klass + "\n")
        (d / "local_cpulist").write_text(cpus + "\n")
    assert irqsteer.gpu_local_cpus(tmp_path) == set(range(8)) | set(range(24, 32))
