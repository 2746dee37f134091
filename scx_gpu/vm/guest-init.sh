#!/bin/sh
# PID 1 of the scx-gpu test VM: mount what a minbase system lacks, run the
# job from the job disk, report its exit status on the console, power off.
# It must never exit: PID 1 exiting panics the kernel.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
# The console is a serial line read line by line on the host: no cursor control.
export TERM=dumb
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs shm /dev/shm
hostname scx-gpu-vm
ip link set lo up
echo SCXGPU-BOOTED
mkdir -p /job
mount "$(blkid -L scxgpu-job)" /job
mkdir -p /job/out
sh /job/run.sh </dev/null >/dev/console 2>&1
echo "SCXGPU-EXIT:$?"
sync
umount /job
echo o >/proc/sysrq-trigger
while :; do sleep 60; done
