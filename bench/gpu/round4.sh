#!/bin/sh
# Issue 15, round 4, on the lent H200 machine (kernel without sched_ext, so
# `fallback` is the mainline fallback): the `--noise-cgroup shared` rows with 3
# reps (32 hogs competing with the launching thread task by task), and point
# 4, whether the fallback with nothing declared reaches 95% of batch-idle
# there. Run as root from a copy of the repository with the built BPF objects
# (scx_gpu/bpf/), the workload programs (scx_gpu/workloads/bin/), .carry/lib
# (libbpf.so.1, libelf.so.1) and .carry/py (jeepney and pyroute2, which the
# control plane imports and the image lacks); results go to $OUT, for
# docs/results/h200/round4/.
#   sh bench/gpu/round4.sh start      copy the tree to $WORK/root and run the chain
#                                     from there in the background (its own session,
#                                     so it outlives the call); each step stops,
#                                     keeping what it finished, at DEADLINE (epoch s):
#     probe         versions, stress-ng, the libcuda files the detector finds
#     torch-shared  torch workload, noise none,cpu, shared cgroup, stock,
#                   batch-idle, fallback-undeclared
#     hf-shared     the same for the transformers workload (bench/gpu/hf_generate.py)
#     extra         what `stage` chose (default: hf-variants)
#   sh bench/gpu/round4.sh stage STEP [POLICIES]
#                                     choose the extra step: hf-variants or
#                                     torch-variants (bench_variants.py, noise
#                                     none,cpu, shared; POLICIES default
#                                     batch-idle,nice-10,gpu-nice,fallback-undeclared),
#                                     or none
#   sh bench/gpu/round4.sh wait SECS  until the chain ends or SECS passed; copies what
#                                     is finished to $OUT (again next call if not done)
#   sh bench/gpu/round4.sh finish SECS  the same, but at SECS - 45 s the bench under
#                                     way is interrupted (its finished cells kept)
#                                     and no further step starts
#   DRY=1 sh bench/gpu/round4.sh chain  print each step's commands, run nothing
# Every bench step samples, once a second, the threads not at nice 0 (the
# fallback's renice shows there) into STEP-nice.txt, and time-stamps the
# bench's cell lines. REPS (3), DURATION (3 s), 2 x CPUs hogs.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/gpu/device-env.sh"
WORK=${WORK:-/tmp/round4}
STEPS="probe torch-shared hf-shared extra"
BENCHES="torch-shared hf-shared hf-variants torch-variants"
VARIANT_POLICIES=batch-idle,nice-10,gpu-nice,fallback-undeclared
mkdir -p "$OUT" "$WORK"

left() {  # seconds to the deadline: DEADLINE, or what `finish` set
	d=$DEADLINE
	[ ! -e "$WORK/deadline" ] || d=$(cat "$WORK/deadline")
	echo $((d - $(date +%s)))
}

run() {  # a command, or with DRY set its words
	if [ -n "${DRY:-}" ]; then echo "+ $*"; else "$@"; fi
}

stamp() {  # stdin's lines, each after the time
	while IFS= read -r line; do echo "$(date +%T) $line"; done
}

nice_sampler() {  # $1: file; until $1.stop exists
	while [ ! -e "$1.stop" ]; do
		echo "$(date +%T) $(ps -eLo pid=,ppid=,tid=,ni=,pcpu=,comm= |
			awk '$1 != 2 && $2 != 2 && $4 != 0 && $4 != "-" {printf "%s/%s:%s:%s:%s ", $1, $3, $4, $5, $6}')"
		sleep 1
	done > "$1"
}

bench() {  # $1: the step's name; $2: the program (python3's arguments); the rest: bench run's
	name=$1 prog=$2 dir="$WORK/$1"
	shift 2
	rm -rf "$dir"
	[ "$(left)" -gt 60 ] || { echo "$name: not started, $(left) s left"; return 0; }
	[ -n "${DRY:-}" ] || { nice_sampler "$WORK/$name-nice.txt" & }
	# the common options first: "$@" may end in `-- CMD`
	# shellcheck disable=SC2086
	set -- timeout -s INT "$(left)" python3 $prog bench run --cpu-hogs $((2 * N)) \
		--noise none,cpu --noise-cgroup shared --reps "${REPS:-3}" \
		--duration "${DURATION:-3}" -o "$dir" "$@"
	if [ -n "${DRY:-}" ]; then
		echo "+ $*"
	else  # timeout's pid in bench.pid: `finish` interrupts the bench through it
		{ "$@" 2>&1 & echo $! > "$WORK/bench.pid"; wait $!; } | stamp > "$WORK/$name-bench.txt"
	fi
	touch "$WORK/$name-nice.txt.stop"
	run python3 -m scx_gpu bench compare "$dir" --format markdown -o "$dir/report.md"
	wait
}

hf() {  # the transformers workload's command, after `--`
	echo python3 "$ROOT/bench/gpu/hf_generate.py" --duration "${DURATION:-3}"
}

step() {
	case $1 in
	probe)
		run uname -a; run nproc
		run nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
		run python3 -c 'import sys, torch, transformers; print(sys.version); print(torch.__version__, torch.version.cuda, transformers.__version__)'
		echo "stress-ng: $(command -v stress-ng || echo none)"
		echo "cgroup: $(cat /proc/self/cgroup)"
		echo "root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
		run python3 -c 'from scx_gpu.bpf import libcuda; print(libcuda.discover(scan_processes=False))' ;;
	torch-shared)
		bench torch-shared "-m scx_gpu" --workload torch \
			--policy stock,batch-idle,fallback-undeclared ;;
	hf-shared)
		# shellcheck disable=SC2046
		bench hf-shared "-m scx_gpu" --workload cmd \
			--policy stock,batch-idle,fallback-undeclared -- $(hf) ;;
	hf-variants)
		# shellcheck disable=SC2046
		bench hf-variants "$ROOT/bench/gpu/bench_variants.py" --workload cmd \
			--policy "${POLICIES:-$VARIANT_POLICIES}" -- $(hf) ;;
	torch-variants)
		bench torch-variants "$ROOT/bench/gpu/bench_variants.py" --workload torch \
			--policy "${POLICIES:-$VARIANT_POLICIES}" ;;
	extra)
		EXTRA=hf-variants
		# shellcheck disable=SC1091
		[ -e "$WORK/stage.env" ] && . "$WORK/stage.env"
		echo "extra: $EXTRA ${POLICIES:-}"
		[ "$EXTRA" = none ] || step "$EXTRA" ;;
	esac
}

collect() {  # what is finished, to $OUT
	cat "$WORK/chain.log"
	cat "$WORK/probe.log" 2>/dev/null
	for b in $BENCHES; do
		[ -e "$WORK/$b-bench.txt" ] || continue
		tr '\r' '\n' < "$WORK/$b-bench.txt" | grep -v '^\s*$' | tail -8
		[ -d "$WORK/$b" ] || continue
		cp "$WORK/$b-bench.txt" "$WORK/$b/bench-log.txt"
		cp "$WORK/$b-nice.txt" "$WORK/$b/nice.txt" 2>/dev/null
		[ ! -e "$WORK/$b/report.md" ] || grep '^|' "$WORK/$b/report.md" | cut -d'|' -f2-6
		(cd "$WORK/$b" && tar czf "$OUT/$b.tgz" --ignore-failed-read bench.json \
			results.parquet summary.json report.md report.png bench-log.txt nice.txt 2>/dev/null)
	done
	cp "$WORK/chain.log" "$WORK/probe.log" "$OUT/" 2>/dev/null
	ls -la "$OUT"
}

case "${1:-}" in
start)
	: "${DEADLINE:?set DEADLINE, epoch seconds}"
	rm -rf "${WORK:?}"/*
	cp -a "$ROOT" "$WORK/root"
	setsid sh "$WORK/root/bench/gpu/round4.sh" chain > "$WORK/chain.log" 2>&1 < /dev/null &
	echo "started: $!" ;;
chain)
	export DEADLINE=${DEADLINE:-$(($(date +%s) + 1800))}
	for s in $STEPS; do
		echo "$(date +%T) $s ($(left) s left)"
		step "$s" > "$WORK/$s.log" 2>&1 || echo "$s: exit $?"
		[ -z "${DRY:-}" ] || cat "$WORK/$s.log"
		touch "$WORK/$s.done"
	done
	echo "$(date +%T) all done" ;;
stage)
	case "${2:-}" in
	hf-variants|torch-variants|none) ;;
	*) echo "stage: hf-variants, torch-variants or none" >&2; exit 2 ;;
	esac
	{ echo "EXTRA=$2"; [ -z "${3:-}" ] || echo "POLICIES=$3"; } > "$WORK/stage.env"
	cat "$WORK/stage.env" ;;
wait|finish)
	# finish: at SECS - 45 s, interrupt the bench under way (it keeps its
	# finished cells) and start no other step, so that all is copied by SECS
	set +e  # copy whatever is there
	end=$(($(date +%s) + ${2:-540}))
	stop=$end
	[ "$1" = wait ] || stop=$((end - 45))
	while [ ! -e "$WORK/extra.done" ] && [ "$(date +%s)" -lt "$stop" ]; do sleep 5; done
	if [ ! -e "$WORK/extra.done" ] && [ "$1" = finish ]; then
		date +%s > "$WORK/deadline"
		kill -INT "$(cat "$WORK/bench.pid")" 2>/dev/null && echo "interrupted the bench"
		while [ ! -e "$WORK/extra.done" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 2; done
	fi
	collect ;;
*)
	echo "usage: sh bench/gpu/round4.sh start|stage STEP [POLICIES]|wait SECS|finish SECS|chain" >&2
	exit 2 ;;
esac
