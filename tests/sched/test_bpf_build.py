"""Every BPF source builds into an object shipped inside the package and the wheel."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from scx_gpu.bpf import OBJECT_DIR, object_path

REPO = Path(__file__).resolve().parents[2]
EM_BPF = 247


def shipped_objects() -> list[Path]:
    """Every compiled BPF object in the package, sorted by name."""
    return sorted(OBJECT_DIR.glob("*.bpf.o"))


def sources() -> list[Path]:
    return sorted([*REPO.glob("sched/bpf/*.bpf.c"), *REPO.glob("tracer/*.bpf.c")])


def test_every_source_has_an_object():
    assert sources(), "no BPF sources found"
    built = {p.name for p in shipped_objects()}
    assert {s.name.replace(".bpf.c", ".bpf.o") for s in sources()} <= built


def test_objects_are_bpf_elf_with_btf():
    for obj in shipped_objects():
        data = obj.read_bytes()
        assert data[:4] == b"\x7fELF"
        assert int.from_bytes(data[18:20], "little") == EM_BPF, obj
        assert b".BTF" in data, f"{obj} has no BTF (CO-RE needs it)"


def test_scheduler_object_is_named_scx_gpu():
    assert b"scx_gpu" in object_path("scx_gpu.bpf.o").read_bytes()


def test_versioned_kfuncs_are_named_for_libbpf():
    # libbpf looks a ksym up by its name before the last "___": an extern named
    # scx_bpf_reenqueue_local___v2 is looked up as the older kfunc, whose
    # prototype differs, and being weak it is silently left out (the old call
    # ran instead). The versioned ones need a suffix of their own (___compat).
    for obj in shipped_objects():
        bare = re.findall(rb"(\w+?___v\d+)\x00", obj.read_bytes())
        assert not bare, f"{obj.name}: {bare} resolve to another kfunc; add ___compat"


def test_vmlinux_h_comes_from_a_sched_ext_kernel():
    header = (REPO / "sched/bpf/vmlinux.h").read_text()
    assert header.startswith("/* Generated from ") and "make vmlinux-h" in header.splitlines()[0]
    assert "struct sched_ext_ops {" in header


def test_wheel_ships_objects_and_installs_without_a_compiler(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True)
    wheel = next(tmp_path.glob("scx_gpu-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for obj in shipped_objects():
        assert f"scx_gpu/bpf/{obj.name}" in names
    assert {"scx_gpu/bpf/libbpf.py", "scx_gpu/controlplane/loader.py",
            "scx_gpu/tracer/__init__.py"} <= set(names)
    # Install into a bare target dir and use it with no compiler on PATH.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(wheel)], check=True)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    code = ("from scx_gpu.bpf import object_path; p = object_path('scx_gpu.bpf.o');"
            f"print(p.stat().st_size > 0, str(p).startswith({str(target)!r}))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
