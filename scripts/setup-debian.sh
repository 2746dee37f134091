#!/bin/sh
# Installs what scx-gpu needs on Debian 12 (bookworm), as root, idempotently.
# libbpf >= 1.4, bpftool and QEMU 10 come from bookworm-backports; trixie and
# sid never enter the machine's apt sources (the test kernel is fetched with
# a private apt configuration by `scx-gpu vm kernel` instead).
set -eu
[ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get install)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
backports=/etc/apt/sources.list.d/scx-gpu-bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # The same archive the machine already uses (or $SCX_GPU_DEBIAN_MIRROR).
    mirror=$(cd "$(dirname "$0")/.." && python3 -m scx_gpu.vm.mirror)
    echo "deb $mirror bookworm-backports main" > "$backports"
fi
apt-get -q update
apt-get -q install -y --no-install-recommends \
    clang-19 llvm-19 zstd debootstrap e2fsprogs fdisk stress-ng \
    iproute2 python3-venv ca-certificates gpg debian-archive-keyring dbus-daemon
# QEMU 10: bookworm's 7.2 can run stale translations of kernel code that
# sched_ext live-patches (static keys) under multi-threaded TCG.
apt-get -q install -y --no-install-recommends -t bookworm-backports \
    libbpf1 libbpf-dev bpftool qemu-system-x86
