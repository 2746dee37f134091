"""netshape's checks that need no network: whether the kernel has HTB."""

import os

from scx_gpu.controlplane import netshape


def test_htb_is_available_built_in_loaded_or_as_a_module(tmp_path):
    sys_module, modules = tmp_path / "sys", tmp_path / "lib"
    sched = modules / os.uname().release / "kernel" / "net" / "sched"
    sched.mkdir(parents=True)
    (sched / "sch_tbf.ko.xz").touch()
    assert not netshape.htb_available(sys_module, modules)
    (sched / "sch_htb.ko.xz").touch()
    assert netshape.htb_available(sys_module, modules)
    (sched / "sch_htb.ko.xz").unlink()
    (sys_module / "sch_htb" / "parameters").mkdir(parents=True)
    assert netshape.htb_available(sys_module, modules)


def test_this_hosts_kernel_has_htb():
    # Built in here (testing.md): the host's network isolation tests rely on it.
    assert netshape.htb_available()
