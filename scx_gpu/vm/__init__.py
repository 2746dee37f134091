"""The sched_ext test VM: a Debian kernel with sched_ext under QEMU."""
