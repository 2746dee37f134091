#!/bin/sh
# The test VM on the lent GPU machine, for what needs more host cores than
# the 2-core build machine has (issue 18: the 8-vCPU two-socket tests and
# the wake-up scaling at 2, 4 and 8 vCPUs, where each vCPU must get a host
# core of its own). That machine has 16 cores but no QEMU, no network, no
# KVM (TCG then, as here) and takes at most 64 MiB a call, so the VM travels
# in pieces that calls made back to back leave in $STASH:
#   sh bench/vm/device.sh pack      here: .devvm/tools (QEMU and the e2fsprogs
#                                   and zstd it runs with, their libraries,
#                                   the firmware, the kernel; for the host
#                                   side of the tests jeepney, pyroute2 and
#                                   the workload programs)
#                                   and .devvm/part1, part2, ... (a slim guest
#                                   image: the CI image less bcc, clang and
#                                   headers, xz-compressed, split); one call
#                                   carries one of them
#   sh bench/vm/device.sh stash     there: keep what this call carried
#   sh bench/vm/device.sh ready     there: unpack the stash (all parts there)
#   sh bench/vm/device.sh start     there: in the background (its own session,
#                                   so it outlives the call), one after another:
#     domains                       the topology and domain vm tests
#     scaling                       bench wakeup at 2, 4 and 8 vCPUs
#     core                          the core vm tests on 2 sockets
#     sched                         make bench-sched's run (BENCH_REPS, 3)
#                                   at 2 vCPUs
#                                   (STEPS="domains core" picks some)
#   sh bench/vm/device.sh wait SECS there: until the chain ends or SECS passed,
#                                   then what it has so far into $OUT/devvm.tar.gz
# Results for docs/results/vm/device/.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PACK=$ROOT/.devvm
STASH=${STASH:-/tmp/devvm}
RESULTS=$STASH/out
OUT=${OUT:-/tmp/devvm-out}
PART_MB=48
# What the tests in question never use, and most of the image's size.
SLIM_EXCLUDE="./usr/src ./usr/lib/llvm-* ./usr/share/bcc ./usr/lib/python3/dist-packages/bcc
*/libLLVM* */libclang* */libz3* */libbcc*"
TOOLS="qemu-system-x86_64 mkfs.ext4 debugfs e2fsck zstd"
FIRMWARE="bios-256k.bin linuxboot_dma.bin kvmvapic.bin"

pack() {
	cd "$ROOT"
	exclude=$(git rev-parse --git-path info/exclude)
	mkdir -p "$(dirname "$exclude")"
	grep -qsx '/.devvm/' "$exclude" || echo /.devvm/ >>"$exclude"
	rm -rf "$PACK"
	tools=$PACK/stage/tools
	mkdir -p "$tools/bin" "$tools/lib" "$tools/libexec" "$tools/share" "$tools/py"
	image=$(.venv/bin/python -m scx_gpu vm image | cut -f1)
	kernel=$(.venv/bin/python -m scx_gpu vm kernel | cut -f1)
	cp "$kernel" "$tools/vmlinuz"
	for tool in $TOOLS; do pack_tool "$(command -v "$tool")" "$tools"; done
	for fw in $FIRMWARE; do
		cp "$(find /usr/share/qemu /usr/share/seabios -name "$fw" | head -1)" "$tools/share/"
	done
	for mod in jeepney pyroute2; do
		cp -r "$(.venv/bin/python -c "import $mod, os; print(os.path.dirname($mod.__file__))")" \
			"$tools/py/"
	done
	cp -r scx_gpu/workloads/bin "$tools/programs"
	mkdir "$PACK/tools"
	tar -C "$PACK/stage" -cf - tools | xz -T0 -6 >"$PACK/tools/tools.tar.xz"
	rm -rf "$PACK/stage"
	pack_image "$(dirname "$image")/base-$(basename "$image" | cut -d- -f2)"
	du -sh "$PACK"/*
}

pack_tool() {  # a binary into the tools folder, behind a wrapper with its own libraries
	name=$(basename "$1")
	cp "$1" "$2/libexec/$name"
	ldd "$1" | awk '$3 ~ /^\// {print $3}' | grep -v -E '/(libc|libm|libpthread|libdl|librt)\.so' |
		while read -r lib; do cp -n "$lib" "$2/lib/"; done
	extra=
	[ "$name" != qemu-system-x86_64 ] || extra='-L "$here/share"'
	cat >"$2/bin/$name" <<EOF
#!/bin/sh
here=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$here/lib" exec "\$here/libexec/$name" $extra "\$@"
EOF
	chmod +x "$2/bin/$name"
}

pack_image() {  # the base tree of the CI image (this project in it), slimmed
	tree=$(mktemp -d /tmp/devvm-tree.XXXXXX)
	excludes=$(for e in $SLIM_EXCLUDE; do printf -- "--exclude=%s " "$e"; done)
	# shellcheck disable=SC2086
	tar -C "$1" -cf - $excludes . | tar -C "$tree" -xf -
	.venv/bin/python -c "import sys; from pathlib import Path; \
from scx_gpu.vm.image import write_disk; write_disk(Path(sys.argv[1]), Path(sys.argv[2]))" \
		"$tree" "$tree.img"
	rm -rf "$tree"
	xz -T0 -6 -c "$tree.img" | split -b "${PART_MB}M" -d -a 1 - "$PACK/image.xz."
	rm "$tree.img"
	for part in "$PACK"/image.xz.*; do
		n=$(( ${part##*.} + 1 ))
		mkdir -p "$PACK/part$n" && mv "$part" "$PACK/part$n/"
	done
}

stash() {  # the tools unpacked (no xz there: Python's), the image's parts as they are
	mkdir -p "$STASH"
	if [ -e "$PACK/tools/tools.tar.xz" ]; then
		python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
			"$PACK/tools/tools.tar.xz" "$STASH"
	fi
	for part in "$PACK"/part*; do [ ! -e "$part" ] || cp -r "$part" "$STASH/"; done
	ls -la "$STASH"
}

ready() {  # the image, sparse, from the parts; the tools where the tests find them
	[ -s "$STASH/scxgpu.img" ] && return
	cat "$STASH"/part*/image.xz.* | python3 -c "
import lzma, sys
with lzma.open(sys.stdin.buffer) as src, open(sys.argv[1], 'wb') as dst:
    while chunk := src.read(1 << 20):
        if chunk.count(0) == len(chunk):
            dst.seek(len(chunk), 1)
        else:
            dst.write(chunk)
    dst.truncate()
" "$STASH/scxgpu.img.partial"
	mv "$STASH/scxgpu.img.partial" "$STASH/scxgpu.img"
	du -h --apparent-size "$STASH/scxgpu.img"
}

env_there() {
	export PATH="$STASH/tools/bin:$PATH" PYTHONPATH="$ROOT:$STASH/tools/py"
	export SCX_GPU_VM_IMAGE="$STASH/scxgpu.img" SCX_GPU_VM_KERNEL="$STASH/tools/vmlinuz"
	export SCX_GPU_CACHE="$STASH/cache" PYTHONUNBUFFERED=1 TMPDIR=$STASH/tmp
	mkdir -p "$RESULTS" "$SCX_GPU_CACHE" "$TMPDIR"
	cd "$ROOT"
	# The tests name the programs when they are collected (built here, not tracked).
	[ -e scx_gpu/workloads/bin ] || cp -r "$STASH/tools/programs" scx_gpu/workloads/bin
}

vm_tests() {  # NAME, then pytest's arguments
	name=$1
	shift
	env_there
	python3 -m pytest -p no:cacheprovider -q -rA -m vm --durations=20 "$@" \
		>"$RESULTS/$name.txt" 2>&1 || echo "$name: pytest exit $?" >>"$RESULTS/$name.txt"
}

scaling() {
	env_there
	for shape in 2 sockets=2,cores=2,threads=1 sockets=2,cores=2,threads=2; do
		case $shape in
		2) args="--cpus 2" n=2 ;;
		*) args="--topology $shape" n=$(echo "$shape" | awk -F'[=,]' '{print $2 * $4 * $6}') ;;
		esac
		# shellcheck disable=SC2086
		python3 -m scx_gpu vm run $args --timeout 500 --out "$RESULTS" -- \
			scx-gpu bench wakeup --policy stock,fair,scx-gpu --reps 3 --loops 2000 \
			--mode process -o "/job/out/cpus$n.json" >"$RESULTS/scaling-cpus$n.txt" 2>&1 ||
			echo "cpus $n: exit $?" >>"$RESULTS/scaling-cpus$n.txt"
	done
}

sched() {  # the Makefile's bench-sched, its results where the others' go
	env_there
	python3 -m scx_gpu vm run --timeout 3000 --out "$RESULTS" -- \
		scx-gpu bench sched --reps "${BENCH_REPS:-3}" -o /job/out/bench-sched \
		>"$RESULTS/sched.txt" 2>&1 || echo "sched: exit $?" >>"$RESULTS/sched.txt"
}

chain() {
	for step in ${STEPS:-domains scaling core}; do
		echo "$(date +%T) $step" >>"$STASH/chain.log"
		sh "$ROOT/bench/vm/device.sh" "$step" || echo "$(date +%T) $step: exit $?" >>"$STASH/chain.log"
	done
	echo "$(date +%T) done" >>"$STASH/chain.log"
}

wait_for() {  # SECS
	end=$(( $(date +%s) + $1 ))
	while [ "$(date +%s)" -lt "$end" ] && ! grep -q done "$STASH/chain.log" 2>/dev/null; do
		sleep 5
	done
	cat "$STASH/chain.log"
	tail -3 "$RESULTS"/*.txt 2>/dev/null || true
	mkdir -p "$OUT"
	# The vm tests' guest outcomes too (results.jsonl): a step cut short keeps them.
	(cd "$STASH" && tar -czf "$OUT/devvm.tar.gz" chain.log out tmp/scx-gpu-vmtests-* 2>/dev/null) ||
		true
}

case ${1:-} in
pack) pack ;;
stash) stash ;;
ready) ready ;;
start)
	ready
	rm -rf "$RESULTS" "$STASH/tmp" "$STASH/chain.log"
	setsid sh "$ROOT/bench/vm/device.sh" chain </dev/null >/dev/null 2>&1 &
	;;
chain) chain ;;
wait) wait_for "$2" ;;
domains) vm_tests domains tests/controlplane/test_topology_vm.py \
	tests/controlplane/test_domains_vm.py ;;
core) vm_tests core --vm-topology sockets=2,cores=2,threads=2 \
	tests/controlplane/test_scheduler_vm.py ;;
scaling) scaling ;;
sched) sched ;;
*) sed -n '2,28p' "$0" >&2; exit 2 ;;
esac
