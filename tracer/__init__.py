"""The tracer: CUDA launches, context switches and IRQs, and their analysis."""
