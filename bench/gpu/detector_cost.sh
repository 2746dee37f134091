#!/bin/sh
# Issue 7, item 4: the detector's cost on real hardware, through the mainline
# fallback (the lent machine's kernel has no sched_ext). The workload alone,
# 3 interleaved reps of: stock (nothing loaded); the detector always attached
# (window = period); the detector duty-cycled (the default 100 ms per 1 s).
#   sh bench/gpu/detector_cost.sh            # the torch workload, on the GPU machine
#   WORKLOAD="scx_gpu/workloads/bin/launcher --cuda-lib scx_gpu/workloads/bin/libcuda.so.1 \
#     --duration 4 --work-us 100" EXTRA="--cuda-lib scx_gpu/workloads/bin/libcuda.so.1" \
#     PYTHON=.venv/bin/python sh bench/gpu/detector_cost.sh   # a dry run with the stub
set -eu
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$PWD/.carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
WORKLOAD=${WORKLOAD:-python3 scx_gpu/workloads/torch_decode.py --warmup 1.5 --duration 6}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
run_under() {  # $1: label; the rest: scx-gpu load flags, or nothing for stock
	label=$1; shift
	loader=""
	if [ $# -gt 0 ]; then
		$PYTHON -m scx_gpu load --fallback mainline --quiet $EXTRA "$@" & loader=$!
		sleep 3
	fi
	printf '{"policy": "%s", "report": %s}\n' "$label" "$($WORKLOAD | tail -1)"
	if [ -n "$loader" ]; then kill -TERM "$loader"; wait "$loader"; fi
}
for rep in 1 2 3; do
	run_under stock
	run_under always --detect-window-ms 1000 --detect-period-ms 1000
	run_under duty-cycled --detect-window-ms 100 --detect-period-ms 1000
done | tee "$OUT/detector-cost.jsonl"
