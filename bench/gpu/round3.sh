#!/bin/sh
# What issue 15 left after round 2, on the lent H200 machine (kernel without
# sched_ext, so `fallback` is the mainline fallback). Run as root from a copy
# of the repository with the built BPF objects (scx_gpu/bpf/), the workload
# programs (scx_gpu/workloads/bin/), .carry/lib (libbpf.so.1, libelf.so.1) and
# .carry/py (jeepney, which the control plane imports and the image lacks);
# results go to $OUT, for docs/results/h200/round3/.
#   sh bench/gpu/round3.sh start       in the background (its own session, so it
#                                      outlives the call), in this order, each step
#                                      stopping (keeping what it finished) at DEADLINE
#                                      (epoch seconds):
#                                      probe: versions, one hf_generate.py start timed;
#                                      hf: the transformers bench, noise in its own
#                                      cgroup (item 3: stock, batch-idle,
#                                      fallback-undeclared, fallback);
#                                      detector: detector_windows.py (item 2);
#                                      hf-shared, torch-shared: the benches' rows of
#                                      interest with --noise-cgroup shared
#   sh bench/gpu/round3.sh wait SECS   until all is done or SECS passed; copies what is
#                                      finished to $OUT (again in the next call if not done)
# REPS (3), DURATION (3 s), 2 x CPUs hogs for cpu; ROUNDS (6) for the detector.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/gpu/device-env.sh"
WORK=/tmp/round3
STEPS="probe hf detector hf-shared torch-shared"
mkdir -p "$OUT" "$WORK"

left() { echo $((DEADLINE - $(date +%s))); }

bench() {  # $1: the step's name; the rest: bench run arguments
	name=$1 dir="$WORK/$1"
	shift
	rm -rf "$dir"
	if [ "$(left)" -gt 30 ]; then
		# the common options first: "$@" may end in `-- CMD`
		timeout -s INT "$(left)" python3 -m scx_gpu bench run --cpu-hogs $((2 * N)) \
			--reps "${REPS:-3}" --duration "${DURATION:-3}" -o "$dir" "$@" || echo "bench run: exit $?"
		python3 -m scx_gpu bench compare "$dir" --format markdown -o "$dir/report.md"
	fi
}

hf() {  # the transformers workload's command, after `--`
	echo python3 "$ROOT/bench/gpu/hf_generate.py" --duration "${DURATION:-3}"
}

step() {
	case $1 in
	probe)
		{ uname -a; nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
		  python3 -c 'import sys, torch, transformers; print(sys.version); print(torch.__version__, torch.version.cuda, transformers.__version__)'
		  echo "cgroup: $(cat /proc/self/cgroup)"
		  echo "root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
		  for _ in 1 2; do
			# shellcheck disable=SC2046
			python3 -c 'import subprocess, sys, time; t = time.monotonic(); subprocess.run(sys.argv[1:]); print(f"wall {time.monotonic() - t:.1f} s")' $(hf)
		  done
		} > "$WORK/probe.txt" 2>&1 ;;
	hf)
		# shellcheck disable=SC2046
		bench hf --workload cmd --noise none,cpu,heavy \
			--policy stock,batch-idle,fallback-undeclared,fallback -- $(hf) ;;
	detector)
		[ "$(left)" -gt 200 ] && python3 bench/gpu/detector_windows.py "$WORK/detector-windows.json" \
			torch "${ROUNDS:-6}" > "$WORK/detector-windows.txt" 2>&1 ;;
	hf-shared)
		# shellcheck disable=SC2046
		bench hf-shared --workload cmd --noise none,cpu --noise-cgroup shared \
			--policy stock,batch-idle,fallback-undeclared -- $(hf) ;;
	torch-shared)
		bench torch-shared --workload torch --noise none,cpu --noise-cgroup shared \
			--policy stock,batch-idle,gpu-nice,fallback-undeclared ;;
	esac
}

case "${1:-}" in
start)
	: "${DEADLINE:?set DEADLINE, epoch seconds}"
	rm -rf "${WORK:?}"/*
	setsid sh "$0" chain > "$WORK/chain.log" 2>&1 < /dev/null &
	echo "started: $!" ;;
chain)
	for s in $STEPS; do
		echo "$(date +%T) $s ($(left) s left)"
		step "$s" > "$WORK/$s.log" 2>&1 || echo "$s: exit $?"
		touch "$WORK/$s.done"
	done
	echo "$(date +%T) all done" ;;
wait)
	set +e  # copy whatever is there
	end=$(($(date +%s) + ${2:-560}))
	while [ ! -e "$WORK/torch-shared.done" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
	cat "$WORK/chain.log"
	[ -e "$WORK/probe.done" ] && cat "$WORK/probe.txt"
	[ -e "$WORK/detector.done" ] && cat "$WORK/detector-windows.txt" \
		&& cp "$WORK/detector-windows.json" "$WORK/detector-windows.txt" "$OUT/"
	for b in hf hf-shared torch-shared; do
		[ -e "$WORK/$b.done" ] || { tail -c 1500 "$WORK/$b.log" 2>/dev/null | tr '\r' '\n' | tail -4; continue; }
		tail -c 3000 "$WORK/$b.log" | tr '\r' '\n' | grep -v '^$' | tail -25
		cp "$WORK/$b.log" "$WORK/$b/bench-log.txt"
		(cd "$WORK/$b" && tar czf "$OUT/bench-$b.tgz" bench.json results.parquet summary.json \
			report.md report.png bench-log.txt)
	done
	cp "$WORK/probe.txt" "$WORK/chain.log" "$OUT/" 2>/dev/null
	ls -la "$OUT" ;;
*)
	echo "usage: sh bench/gpu/round3.sh start|wait SECS" >&2; exit 2 ;;
esac
