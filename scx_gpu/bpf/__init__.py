"""Compiled BPF objects shipped inside the package (built by `make bpf`)."""

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


def shipped_objects() -> list[Path]:
    """Every compiled BPF object in the package, sorted by name."""
    return sorted(OBJECT_DIR.glob("*.bpf.o"))
