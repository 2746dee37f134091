import json
import os
from pathlib import Path

import pytest

from scx_gpu.bpf import libbpf
from tests.helpers import scx_gpu

# The development and CI hosts run a 6.18 kernel without sched_ext
# (shared/docs/testing.md); the VM runs Debian's cloud kernel with it.


def doctor_json():
    proc = scx_gpu("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    return {c["id"]: c for c in json.loads(proc.stdout)["checks"]}


def test_doctor_lists_every_check():
    checks = doctor_json()
    assert set(checks) == {
        "kernel", "sched_ext", "btf", "uprobes", "libbpf", "bpf", "tracefs", "root",
        "libcuda", "cgroup_v2_cpu", "psi", "numa_balancing", "irqbalance", "cpu_governor",
    }
    assert checks["kernel"]["value"] == os.uname().release
    assert checks["root"]["value"] is (os.geteuid() == 0)


def test_doctor_on_the_host_kernel():
    checks = doctor_json()
    has_scx = Path("/sys/kernel/sched_ext/state").exists()
    assert checks["sched_ext"]["value"]["present"] is has_scx
    assert checks["sched_ext"]["status"] == ("ok" if has_scx else "missing")
    assert checks["btf"]["value"] is True
    assert checks["uprobes"]["value"] is True
    assert checks["libbpf"]["value"] == "{}.{}".format(*libbpf.version())


def test_doctor_table_names_the_checks():
    proc = scx_gpu("doctor")
    assert proc.returncode == 0
    for name in ("sched_ext", "Kernel BTF", "libbpf", "NUMA balancing", "irqbalance"):
        assert name in proc.stdout


@pytest.mark.vm
def test_doctor_in_the_vm_sees_sched_ext():
    checks = doctor_json()
    assert checks["sched_ext"]["value"] == {"present": True, "state": "disabled", "ops": None}
    assert checks["sched_ext"]["status"] == "ok"
    assert checks["btf"]["value"] is True
    assert checks["bpf"]["value"] is True and checks["tracefs"]["value"] is True
    assert checks["cgroup_v2_cpu"]["value"] is True
    assert tuple(map(int, checks["libbpf"]["value"].split("."))) >= (1, 4)
    assert checks["root"]["value"] is True
