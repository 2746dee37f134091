"""The tracer on real CUDA work (run on the GPU machine).

1. Launches per token as the tracer counts them, in the workload's measured
   window, against PyTorch's profiler (eager), and graph replays counted as
   cuGraphLaunch (graph mode). libcuda comes from discovery, not from flags.
   Part `hf-launches` does the same for a model we did not write
   (bench/gpu/hf_generate.py: transformers' generate()).
2. Tracer overhead: tokens/s untraced and traced, interleaved, REPS times.
Writes one JSON document (argv[1]).
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from scx_gpu.tracer import capture, tracefile
from scx_gpu.tracer.analysis import LAUNCH_EVENTS

DECODE = [sys.executable, str(Path(__file__).resolve().parents[2] / "scx_gpu" / "workloads"
                              / "torch_decode.py")]
GENERATE = [sys.executable, str(Path(__file__).resolve().parent / "hf_generate.py")]
REPS = 3


def _report(stdout: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return report


def traced(args: list[str], cmd: list[str] = DECODE) -> tuple[dict[str, Any], capture.Capture]:
    with tempfile.TemporaryFile("w+") as out:
        cap = capture.capture(capture.CaptureSpec(cmd=[*cmd, *args], stdout=out), print)
        out.seek(0)
        return _report(out.read()), cap


def untraced(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([*DECODE, *args], capture_output=True, text=True, check=True)
    return _report(proc.stdout)


def launches_per_token(mode: str) -> dict[str, Any]:
    args = ["--mode", mode, "--warmup", "2", "--duration", "4"]
    if mode == "eager":
        args += ["--profile-tokens", "20"]
    return counted(*traced(args), mode)


def generate_launches() -> dict[str, Any]:
    """The same for transformers' generate(): per new token, each call's prefill included."""
    report, cap = traced(["--duration", "4", "--profile-calls", "2"], GENERATE)
    return counted(report, cap, "generate") | {
        "calls": report["calls"], "new_tokens_per_call": report["new_tokens_per_call"],
        "transformers": report["transformers"], "attn": report["attn"]}


def counted(report: dict[str, Any], cap: capture.Capture, mode: str) -> dict[str, Any]:
    frame = tracefile.to_frame(cap.events)  # its timestamps start at the first event
    raw = cap.events["ts_ns"].astype("int64")
    window = frame[(raw >= report["measured_from_ns"]) & (raw <= report["measured_to_ns"])]
    by_api = window[window.event_type.isin(LAUNCH_EVENTS)].event_type.value_counts()
    return {
        "mode": mode, "tokens": report["tokens"], "tokens_per_s": report["tokens_per_s"],
        "traced_launches_per_token": {str(k): v / report["tokens"] for k, v in by_api.items()},
        "traced_launches_per_token_total": int(by_api.sum()) / report["tokens"],
        "profiler_kernels_per_token": report["profiler_kernels_per_token"],
        "libraries": cap.meta["libraries"], "drops": cap.meta["drops"],
        "events_by_type": {str(k): int(v) for k, v in frame.event_type.value_counts().items()},
        "trace_ns": [int(raw.min()), int(raw.max())],
        "window_ns": [report["measured_from_ns"], report["measured_to_ns"]],
        "pids": sorted(int(x) for x in frame.pid.unique()), "workload_pid": report["pid"],
        "workload": {k: report[k] for k in ("layers", "dim", "dtype", "torch", "cuda", "device")},
    }


def overhead(mode: str) -> dict[str, Any]:
    args = ["--mode", mode, "--warmup", "2", "--duration", "8"]
    plain, with_tracer = [], []
    for _ in range(REPS):
        plain.append(untraced(args)["tokens_per_s"])
        with_tracer.append(traced(args)[0]["tokens_per_s"])
    mean_plain, mean_traced = statistics.mean(plain), statistics.mean(with_tracer)
    return {"mode": mode, "untraced_tokens_per_s": plain, "traced_tokens_per_s": with_tracer,
            "overhead_pct": 100 * (mean_plain - mean_traced) / mean_plain}


def main() -> None:
    parts = sys.argv[2:] or ["launches", "overhead"]
    result: dict[str, Any] = {}
    if "launches" in parts:
        result["launches"] = [launches_per_token(m) for m in ("eager", "graph")]
    if "hf-launches" in parts:
        result["hf_launches"] = generate_launches()
    if "overhead" in parts:
        result["overhead"] = [overhead(m) for m in ("eager", "graph")]
    Path(sys.argv[1]).write_text(json.dumps(result, indent=2, default=int))
    print(json.dumps(result, indent=2, default=int))


if __name__ == "__main__":
    main()
