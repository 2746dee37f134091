#!/bin/sh
# Issue 7's experiments on the lent H200 machine (kernel without sched_ext).
# Run from the repository root there, with the built BPF objects
# (scx_gpu/bpf/) and .carry/lib (libbpf.so.1 and what it links) carried:
#   sh bench/gpu/run.sh probe|tracer|bench   (bench: REPS, DURATION, NOISES, POLICIES)
# and bench/gpu/detector_cost.sh, bench/gpu/hog_count.sh.
# Results go to $OUT; commit them under docs/results/h200/.
set -eu
export LD_LIBRARY_PATH="$PWD/.carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
case "${1:-}" in
probe)
	{ uname -a; nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
	  python3 -c 'import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda)'
	  python3 -m scx_gpu doctor --json; } 2>&1 | tee "$OUT/probe.txt" ;;
tracer)
	# Optional parts: launches, overhead (default both).
	shift
	python3 bench/gpu/tracer_evidence.py "$OUT/tracer.json" "$@" 2>&1 | tee "$OUT/tracer-log.txt" ;;
bench)
	# Stopped gracefully (SIGINT keeps the completed cells) before the call's limit.
	rm -rf /tmp/bench
	timeout -s INT "${BENCH_LIMIT_S:-540}" python3 -m scx_gpu bench run --workload torch \
		--noise "${NOISES:-none,cpu,heavy}" \
		--policy "${POLICIES:-stock,pin-nice,gpu-nice,batch-idle,fallback,fallback-undeclared}" \
		--reps "${REPS:-3}" --duration "${DURATION:-3}" -o /tmp/bench 2>&1 \
		| tee "$OUT/bench-log.txt" || true
	cp /tmp/bench/bench.json /tmp/bench/results.parquet "$OUT/"
	python3 -m scx_gpu bench compare /tmp/bench --format markdown -o "$OUT/report.md" ;;
*)
	echo "usage: sh bench/gpu/run.sh probe|tracer|bench" >&2; exit 2 ;;
esac
