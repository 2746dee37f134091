"""Which libcuda files the detector may probe (root-owned, from trusted places)."""

import os
from pathlib import Path

import pytest

from scx_gpu.controlplane.libcuda import CudaLib
from scx_gpu.controlplane.trust import untrusted

pytestmark = pytest.mark.root


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    folder = tmp_path / "driver"
    folder.mkdir(mode=0o755)
    path = folder / "libcuda.so.1"
    path.write_bytes(b"\x7fELF")
    path.chmod(0o755)
    return path


def test_root_owned_from_the_operators_sources_is_probed(lib):
    for source in ("ldconfig", "path", "option"):
        assert untrusted(CudaLib(lib, source), []) is None


def test_a_file_a_process_maps_is_probed_only_under_a_trusted_dir(lib):
    found = CudaLib(lib, "pid 42")
    assert "only mapped by a process" in (untrusted(found, []) or "")
    assert untrusted(found, [lib.parent]) is None


def test_another_owner_or_a_writable_file_or_folder_is_refused(lib):
    os.chown(lib, 65534, 65534)
    assert untrusted(CudaLib(lib, "ldconfig"), []) == "owned by uid 65534, not root"
    os.chown(lib, 0, 0)
    lib.chmod(0o775)
    assert untrusted(CudaLib(lib, "ldconfig"), []) == "writable by group or others"
    lib.chmod(0o755)
    lib.parent.chmod(0o777)
    assert untrusted(CudaLib(lib, "ldconfig"), []) == (
        f"its folder {lib.parent} is writable by group or others")


def test_a_symlink_is_judged_by_its_target(lib, tmp_path):
    os.chown(lib, 65534, 65534)
    link = tmp_path / "libcuda.so"
    link.symlink_to(lib)
    assert untrusted(CudaLib(link, "ldconfig"), []) == "owned by uid 65534, not root"
