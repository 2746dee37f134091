"""scx-gpu: a GPU-aware sched_ext scheduler, its control plane and its tracer."""

__version__ = "0.1.0"
