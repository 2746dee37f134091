#!/bin/sh
# Issue 7, item 3's cross-check: the torch workload alone, beside one CPU hog
# per CPU (the bench's cpu noise) and beside two per CPU (the issue's
# reference probe used 32 hogs on 16 cores). Untraced, interleaved, 2 reps.
set -eu
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
N=$(nproc)
decode() { python3 scx_gpu/workloads/torch_decode.py --warmup 1.5 --duration 4 | tail -1; }
for rep in 1 2; do
	for hogs in 0 "$N" $((2 * N)); do
		pid=""
		if [ "$hogs" -gt 0 ]; then
			python3 -m scx_gpu.bench.noisegen cpu --workers "$hogs" & pid=$!
			sleep 1
		fi
		printf '{"rep": %s, "hogs": %s, "report": %s}\n' "$rep" "$hogs" "$(decode)"
		[ -n "$pid" ] && { pkill -P "$pid"; kill "$pid"; wait "$pid" 2>/dev/null || true; }
	done
done | tee "$OUT/hog-count.jsonl"
