"""What the guest image takes from the kernel's modules, and kmod's version, on fake trees."""

import lzma

import pytest

from scx_gpu.errors import EnvironmentProblem
from scx_gpu.vm import image
from scx_gpu.vm.kernel import needed_modules


def _module(path, depends):
    """A stand-in .ko.xz: only its .modinfo strings matter here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    modinfo = b"\0".join([b"license=GPL", f"depends={depends}".encode(), b"intree=Y"])
    path.write_bytes(lzma.compress(b"\x7fELF" + b"\0" * 60 + modinfo + b"\0"))


def test_modules_come_with_their_dependencies_and_no_others(tmp_path):
    sched = tmp_path / "kernel/net/sched"
    _module(sched / "sch_a.ko.xz", "cls-b,act_c")
    _module(sched / "cls_b.ko.xz", "act_c")
    _module(sched / "act_c.ko.xz", "")
    _module(sched / "sch_d.ko.xz", "")
    got = needed_modules(tmp_path, ("sch-a",))
    assert [p.name for p in got] == ["act_c.ko.xz", "cls_b.ko.xz", "sch_a.ko.xz"]
    assert needed_modules(tmp_path, ("sch_d",)) == [sched / "sch_d.ko.xz"]


def test_a_module_the_package_lacks_is_an_error_naming_it(tmp_path):
    _module(tmp_path / "kernel/net/sched/sch_a.ko.xz", "gone")
    with pytest.raises(EnvironmentProblem, match="no module gone"):
        needed_modules(tmp_path, ("sch_a",))


def test_kmod_is_taken_at_the_base_s_libkmod_version(tmp_path):
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: libkmod2-dev\nStatus: install ok installed\nVersion: 9\n\n"
                      "Package: libkmod2\nStatus: install ok installed\nPriority: optional\n"
                      "Version: 30+20221128-1\n\n")
    assert image._installed_version(tmp_path, "libkmod2") == "30+20221128-1"
    with pytest.raises(EnvironmentProblem, match="kmod is not installed"):
        image._installed_version(tmp_path, "kmod")
