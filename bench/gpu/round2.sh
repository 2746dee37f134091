#!/bin/sh
# Issue 15's experiments on the lent H200 machine (kernel without sched_ext,
# so `fallback` is the mainline fallback). Run as root from a copy of the
# repository with the built BPF objects (scx_gpu/bpf/), .carry/lib
# (libbpf.so.1, libelf.so.1) and .carry/py (jeepney: the image lacks it and
# the control plane imports it); results go to $OUT, for docs/results/h200/round2/.
#   sh bench/gpu/round2.sh explore     probe; the transformers model's launches per
#                                      token, tracer vs PyTorch's profiler; mechanisms.py
#                                      on both workloads (item 4)
#   sh bench/gpu/round2.sh start       in the background (its own session, so it outlives
#                                      the call): mechanisms.py with the hogs sharing the
#                                      workload's cgroup, detector cost (item 2), the torch
#                                      bench (item 1), the transformers bench (item 3); the
#                                      benches stop (keeping finished cells) at DEADLINE
#                                      (epoch seconds)
#   sh bench/gpu/round2.sh wait SECS   until that is done or SECS passed; copies what is
#                                      finished to $OUT (again in the next call if not done)
# The benches: REPS_TORCH, REPS_HF (default 3), DURATION (3 s), 2 x CPUs hogs for cpu.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/gpu/device-env.sh"
WORK=/tmp/round2
mkdir -p "$OUT" "$WORK"

bench() {  # $1: torch|hf; $2: reps
	name=$1 dir="$WORK/$1"
	rm -rf "$dir"
	set -- --noise none,cpu,heavy --cpu-hogs $((2 * N)) --reps "$2" \
		--duration "${DURATION:-3}" -o "$dir"
	if [ "$name" = torch ]; then
		timeout -s INT $((DEADLINE - $(date +%s))) python3 -m scx_gpu bench run --workload torch "$@" \
			--policy stock,batch-idle,gpu-nice,fallback,fallback-undeclared
	else
		timeout -s INT $((DEADLINE - $(date +%s))) python3 -m scx_gpu bench run --workload cmd "$@" \
			--policy stock,batch-idle,fallback-undeclared,fallback \
			-- python3 "$ROOT/bench/gpu/hf_generate.py" --duration "${DURATION:-3}"
	fi
	echo "bench run: exit $?"
	python3 -m scx_gpu bench compare "$dir" --format markdown -o "$dir/report.md"
}

case "${1:-}" in
explore)
	{ uname -a; nproc; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
	  python3 -c 'import sys, torch, transformers; print(sys.version); print(torch.__version__, torch.version.cuda, transformers.__version__)'
	  echo "cgroup: $(cat /proc/self/cgroup)"
	  echo "root controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
	  echo "root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
	  echo "sched_rt_runtime_us: $(cat /proc/sys/kernel/sched_rt_runtime_us)"
	  echo "sched_autogroup: $(cat /proc/sys/kernel/sched_autogroup_enabled 2>&1)"
	} 2>&1 | tee "$OUT/probe.txt"
	python3 bench/gpu/tracer_evidence.py "$OUT/hf-launches.json" hf-launches > "$WORK/launches.log" 2>&1 \
		|| tail -30 "$WORK/launches.log"
	for kind in torch hf; do
		python3 bench/gpu/mechanisms.py "$kind" "$OUT/mechanisms-$kind.json" "${ROUNDS:-4}" 2>&1 \
			| tee "$OUT/mechanisms-$kind.txt"
	done ;;
start)
	rm -f "$WORK"/detector.done "$WORK"/torch.done "$WORK"/hf.done
	: "${DEADLINE:?set DEADLINE, epoch seconds}"
	setsid sh "$0" chain > "$WORK/chain.log" 2>&1 < /dev/null &
	echo "started: $!" ;;
chain)
	[ "${MECHANISMS:-1}" = 1 ] && for kind in torch hf; do
		python3 bench/gpu/mechanisms.py "$kind" "$WORK/mechanisms-shared-$kind.json" \
			"${ROUNDS:-6}" shared > "$WORK/mechanisms-shared-$kind.txt" 2>&1 || true
	done
	[ "${MECHANISMS:-1}" = 1 ] && touch "$WORK/mechanisms.done"
	WORKLOAD="python3 $ROOT/scx_gpu/workloads/torch_decode.py --warmup 1.5 --duration 4" \
		OUT="$WORK/detector" sh bench/gpu/detector_cost.sh > "$WORK/detector.log" 2>&1
	touch "$WORK/detector.done"
	bench torch "${REPS_TORCH:-3}" > "$WORK/torch.log" 2>&1 || true
	touch "$WORK/torch.done"
	bench hf "${REPS_HF:-3}" > "$WORK/hf.log" 2>&1 || true
	touch "$WORK/hf.done" ;;
wait)
	set +e  # copy whatever is there
	end=$(($(date +%s) + ${2:-560}))
	while [ ! -e "$WORK/hf.done" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
	cp "$WORK/chain.log" "$OUT/" 2>/dev/null || true
	[ -e "$WORK/mechanisms.done" ] && cat "$WORK"/mechanisms-shared-*.txt \
		&& tar czf "$OUT/mechanisms-shared.tgz" -C "$WORK" mechanisms-shared-torch.json \
			mechanisms-shared-hf.json mechanisms-shared-torch.txt mechanisms-shared-hf.txt
	[ -e "$WORK/detector.done" ] && cp "$WORK/detector/detector-cost.jsonl" "$OUT/" \
		&& cat "$WORK/detector/detector-cost.jsonl"
	for b in torch hf; do
		[ -e "$WORK/$b.done" ] || { tail -c 2000 "$WORK/$b.log" 2>/dev/null; continue; }
		tail -c 600 "$WORK/$b.log" | tr '\r' '\n' | tail -5
		cp "$WORK/$b.log" "$WORK/$b/bench-log.txt"
		(cd "$WORK/$b" && tar czf "$OUT/bench-$b.tgz" bench.json results.parquet summary.json \
			report.md report.png bench-log.txt)
	done
	ls -la "$WORK" "$OUT" ;;
*)
	echo "usage: sh bench/gpu/round2.sh explore|start|wait SECS" >&2; exit 2 ;;
esac
