"""controlplane/intf.py mirrors sched/bpf/intf.h: checked against the object's BTF."""

import ctypes
import json
import subprocess

import pytest

from scx_gpu.bpf import object_path
from scx_gpu.controlplane import intf


@pytest.fixture(scope="module")
def btf_structs():
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file",
                          str(object_path("scx_gpu.bpf.o"))], capture_output=True, text=True,
                         check=True).stdout
    return {t["name"]: t for t in json.loads(out)["types"] if t["kind"] == "STRUCT"}


@pytest.mark.parametrize("name", sorted(intf.MIRRORS))
def test_mirror_matches_btf(btf_structs, name):
    mirror = intf.MIRRORS[name]
    btf = btf_structs[name]
    assert ctypes.sizeof(mirror) == btf["size"]
    btf_members = [(m["name"], m["bits_offset"] // 8) for m in btf["members"]]
    ours = [(f[0], getattr(mirror, f[0]).offset) for f in mirror._fields_]
    assert ours == btf_members
