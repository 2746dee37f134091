"""The BPF runtime beneath the control plane and the tracer: the compiled
objects shipped inside the package (built by `make bpf`), the libbpf binding
(libbpf), objects and maps (bpfobject, maps), where probes go (probesite) and
the CUDA driver libraries they go on (libcuda)."""

from pathlib import Path

from scx_gpu.errors import EnvironmentProblem

OBJECT_DIR = Path(__file__).resolve().parent


def object_path(name: str) -> Path:
    """Path of the compiled object `name` (for example "scx_gpu.bpf.o")."""
    path = OBJECT_DIR / name
    if not path.is_file():
        raise EnvironmentProblem(
            f"BPF object {name} is missing from {OBJECT_DIR}: run `make bpf` in a source checkout"
        )
    return path
