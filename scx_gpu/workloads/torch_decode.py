"""The `torch` workload: greedy decoding with a random-weight transformer.

No downloads: the weights are random, the shapes those of a small decoder
(12 layers, 1024 wide by default), batch 1, so each token is a burst of small
kernels the CPU must launch in time: the job CPU noise hurts. Every token
reads its id back (the host decides when to stop, as real generation does).
`--mode graph` captures one decode step as a CUDA graph and replays it.
Prints one JSON line: tokens/s, token time percentiles, and with
`--profile-tokens N` the kernels per token that PyTorch's profiler saw.
Stands alone (needs only PyTorch and a CUDA GPU), so it can run anywhere.
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
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        shape = (1, heads, context, dim // heads)
        self.register_buffer("k_cache", torch.randn(shape) * 0.02)
        self.register_buffer("v_cache", torch.randn(shape) * 0.02)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).split(self.dim, dim=-1)
        head = (1, 1, self.heads, self.dim // self.heads)
        q, k, v = (t.view(head).transpose(1, 2) for t in (q, k, v))
        # A fixed-size cache written at a device-side position: static shapes,
        # so the step can be captured as a graph.
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        att = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache)
        x = x + self.proj(att.transpose(1, 2).reshape(1, 1, self.dim))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Decoder(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, vocab: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, context) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> None:
        """One greedy step, in place: token and pos hold the next ones."""
        x = self.embed(token).view(1, 1, -1)
        for block in self.blocks:
            x = block(x, pos)
        token.copy_(self.head(x).argmax(-1).view(1))
        pos.add_(1).remainder_(self.context)


def _build(args: argparse.Namespace) -> tuple[Decoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    with torch.device("cuda"):  # random init on the GPU: seconds faster than on the CPU
        model = Decoder(args.layers, args.dim, args.heads, args.vocab, args.context)
    model = model.to(dtype).eval()
    token = torch.zeros(1, dtype=torch.long, device="cuda")
    pos = torch.zeros(1, dtype=torch.long, device="cuda")
    return model, token, pos


def _stepper(args: argparse.Namespace, model: Decoder, token: torch.Tensor,
             pos: torch.Tensor) -> Any:
    if args.mode == "eager":
        return lambda: model.step(token, pos)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up the kernels' lazy initialisation before capture
            model.step(token, pos)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.step(token, pos)
    return graph.replay


def _profile(step: Any, token: torch.Tensor, tokens: int) -> float:
    """Kernels per token as PyTorch's profiler counts them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(tokens):
            step()
            token.item()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]
    return len(kernels) / tokens


def _decode(step: Any, token: torch.Tensor, seconds: float) -> list[float]:
    """Token times (s) over `seconds` of decoding."""
    times: list[float] = []
    end = time.monotonic() + seconds
    while (start := time.monotonic()) < end:
        step()
        token.item()  # the host reads every token
        times.append(time.monotonic() - start)
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--mode", choices=("eager", "graph"), default="eager")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--profile-tokens", type=int, default=0,
                        help="also count kernels per token with PyTorch's profiler")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("torch_decode: no CUDA device (the torch workload needs a GPU)", file=sys.stderr)
        return 2
    with torch.inference_mode():
        model, token, pos = _build(args)
        step = _stepper(args, model, token, pos)
        _decode(step, token, args.warmup)
        kernels = _profile(step, token, args.profile_tokens) if args.profile_tokens else None
        start_ns = time.monotonic_ns()  # CLOCK_MONOTONIC, the tracer's clock
        times = _decode(step, token, args.duration)
        end_ns = time.monotonic_ns()
    report = {
        "pid": os.getpid(), "tids": [threading.get_native_id()], "mode": args.mode,
        "layers": args.layers, "dim": args.dim, "dtype": args.dtype,
        "tokens": len(times), "seconds": sum(times), "tokens_per_s": len(times) / sum(times),
        "token_us_p50": 1e6 * statistics.median(times), "token_us_p99": 1e6 * _pct(times, 99),
        "profiler_kernels_per_token": kernels,
        "measured_from_ns": start_ns, "measured_to_ns": end_ns,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(),
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
