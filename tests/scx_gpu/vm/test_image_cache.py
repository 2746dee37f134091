"""The guest image cache: one builder at a time, and old images pruned but not the newest."""

import fcntl
import os

import pytest

from scx_gpu.vm import image


def test_old_images_go_and_the_newest_others_stay(tmp_path):
    names = [f"rootfs-b-{n}.ext4" for n in range(5)]
    for age, name in enumerate(names):  # names[0] the newest
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1000 - age, 1000 - age))
    (tmp_path / "rootfs-b-9.partial").write_bytes(b"")
    built = tmp_path / names[4]  # the oldest file, but the one just built
    image._prune(tmp_path, built)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted([names[4], *names[:image.OTHER_IMAGES_KEPT]])


def test_a_second_builder_waits_for_the_first(tmp_path):
    with (image._building(tmp_path), (tmp_path / ".lock").open("a") as other,
          pytest.raises(BlockingIOError)):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with (tmp_path / ".lock").open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
