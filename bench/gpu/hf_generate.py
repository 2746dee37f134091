"""Issue 15, item 3: a model we did not write, through its library's own loop.

transformers' LlamaForCausalLM built from a config with random weights (no
downloads: 12 layers, 1024 wide, bf16), batch 1, driven by `generate()`:
greedy, a fixed number of new tokens per call (no end-of-sequence token, so
no early stop), called again and again for --duration seconds. generate()
hands every new token to a streamer; the streamer's clock gives the token
times. Prints one JSON line like the torch workload's (tokens/s, token time
percentiles, the measured window), so `scx-gpu bench run --workload cmd`
reads it; with --profile-calls N, also the kernels per token that PyTorch's
profiler saw over N calls.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


class Clock:
    """A generate() streamer: the time of each put (the prompt first, then a token a step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.monotonic())

    def end(self) -> None:
        pass


def build(args: argparse.Namespace) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.dim,
                         intermediate_size=args.dim * 11 // 4, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=2048)
    with torch.device("cuda"):  # random init on the GPU
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).eval()
    generation = model.generation_config
    generation.eos_token_id = None  # random weights: never stop early
    generation.pad_token_id = 0
    generation.do_sample = False
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds")
    parser.add_argument("--warmup-calls", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32, help="per generate() call")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--profile-calls", type=int, default=0,
                        help="also count kernels per token with PyTorch's profiler")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("hf_generate: no CUDA device", file=sys.stderr)
        return 2
    model = build(args)
    prompt = torch.randint(1, args.vocab, (1, args.prompt), device="cuda")

    def call(clock: Clock | None = None) -> int:
        out = model.generate(prompt, max_new_tokens=args.new_tokens, streamer=clock)
        return int(out.shape[1] - args.prompt)

    with torch.inference_mode():
        for _ in range(args.warmup_calls):
            call()
        kernels = None
        if args.profile_calls:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(args.profile_calls):
                    call()
                torch.cuda.synchronize()
            found = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                     and not e.name.startswith(("Memcpy", "Memset"))]
            kernels = len(found) / (args.profile_calls * args.new_tokens)
        times: list[float] = []
        tokens, calls = 0, 0
        start_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, the tracer's clock
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            clock = Clock()
            new = call(clock)
            if new != args.new_tokens:
                print(f"hf_generate: generate() made {new} tokens, not {args.new_tokens}",
                      file=sys.stderr)
                return 1
            tokens, calls = tokens + new, calls + 1
            times += [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
        torch.cuda.synchronize()
        end_ns = time.monotonic_ns()
    seconds = (end_ns - start_ns) / 1e9
    report = {
        "pid": os.getpid(), "tids": [threading.get_native_id()], "model": "LlamaForCausalLM",
        "attn": getattr(model.config, "_attn_implementation", None),
        "layers": args.layers, "dim": args.dim, "dtype": "bf16", "calls": calls,
        "new_tokens_per_call": args.new_tokens, "tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "token_us_p50": 1e6 * statistics.median(times),
        "token_us_p99": 1e6 * sorted(times)[min(len(times) - 1, int(0.99 * len(times)))],
        "profiler_kernels_per_token": kernels,
        "measured_from_ns": start_ns, "measured_to_ns": end_ns,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
