"""A model we did not write, through its library's own loop.

transformers' LlamaForCausalLM built from a config with random weights (no
downloads: 12 layers, 1024 wide, bf16), batch 1, driven by `generate()`:
greedy, a fixed number of new tokens per call (no end-of-sequence token, so
no early stop), called again and again for --duration seconds. generate()
hands every new token to a streamer; the streamer's clock gives the token
times. Prints one JSON line like the torch workload's (tokens/s, token time
percentiles, the measured window), so `scx-gpu bench run --workload cmd`
reads it; with --profile-calls N, also the kernels per token that PyTorch's
profiler saw over N calls, and the seconds its start took (imports, model
build, warm-up calls).

A bench cell starts this afresh, so the start is kept short: torchvision is
hidden from transformers (its image utilities import it, and with it
torch._dynamo and sympy, seconds of imports a text model never uses), and
the model is built in bf16 on the GPU with transformers' weight init
skipped, then filled as that init would (normal(0, initializer_range),
norm weights 1) in a few GPU kernels.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.modules.setdefault("torchvision", None)  # type: ignore[arg-type]
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.initialization import no_init_weights  # noqa: E402


def _process_age_s() -> float:
    """Seconds since this process started (/proc/self/stat's starttime, in clock ticks)."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: after pid, comm, state
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


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
    with torch.device("cuda"), no_init_weights():
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:  # RMSNorm weights
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range)
    model.eval()
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
    imported = time.monotonic()
    age = _process_age_s()  # the interpreter's start and the imports
    model = build(args)
    prompt = torch.randint(1, args.vocab, (1, args.prompt), device="cuda")
    torch.cuda.synchronize()
    built = time.monotonic()

    def call(clock: Clock | None = None) -> int:
        out = model.generate(prompt, max_new_tokens=args.new_tokens, streamer=clock)
        return int(out.shape[1] - args.prompt)

    with torch.inference_mode():
        for _ in range(args.warmup_calls):
            call()
        torch.cuda.synchronize()
        warm = time.monotonic()
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
        "start_s": {"imports": age, "build": built - imported,
                    "warmup": warm - built},
        "measured_from_ns": start_ns, "measured_to_ns": end_ns,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
