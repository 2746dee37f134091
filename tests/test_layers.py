"""The layers the folders promise, as the imports keep them.

sched/bpf's runtime (`scx_gpu.bpf`: the libbpf binding, objects, maps, probe
sites, libcuda discovery) and `scx_gpu.errors` sit beneath the control plane
and the tracer, which do not import each other; the rest of `scx_gpu` (CLI,
status, bench, vm, workloads) sits on top and may import any of them.
"""

import ast
import os
from pathlib import Path

import scx_gpu

SOURCE_ROOT = Path(scx_gpu.__file__).parent.parent
BASE = ("scx_gpu.bpf", "scx_gpu.errors")
MIDDLE = ("scx_gpu.controlplane", "scx_gpu.tracer")


def _layer(module: str, layers: tuple[str, ...]) -> str | None:
    return next((p for p in layers if module == p or module.startswith(p + ".")), None)


def allowed(importer: str, imported: str) -> bool:
    """Whether module importer may import module imported."""
    if imported == "scx_gpu" or not _layer(imported, ("scx_gpu",)):
        return True  # the package's version, the standard library, third parties
    if _layer(importer, BASE):
        return _layer(imported, BASE) is not None
    if own := _layer(importer, MIDDLE):
        return _layer(imported, (own, *BASE)) is not None
    return True


def _is_module(name: str) -> bool:
    path = SOURCE_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(source: str, module: str) -> list[str]:
    """The modules source imports, `from package import module` as package.module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}".rstrip(".")
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
    return found


def modules() -> dict[str, Path]:
    """Every module of the package, the linked controlplane/ and tracer/ included."""
    found = {}
    for folder, _, files in os.walk(SOURCE_ROOT / "scx_gpu", followlinks=True):
        for name in files:
            if name.endswith(".py"):
                parts = Path(folder, name).relative_to(SOURCE_ROOT).with_suffix("").parts
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = Path(
                    folder, name)
    return found


def test_every_import_follows_the_layers() -> None:
    found = modules()
    assert {"scx_gpu.controlplane.loader", "scx_gpu.tracer.capture", "scx_gpu.bpf.libbpf",
            "scx_gpu.cli"} <= set(found)
    against = [f"{module} imports {name}" for module, path in sorted(found.items())
               for name in imports(path.read_text(), module) if not allowed(module, name)]
    assert against == []


def test_a_planted_reverse_import_is_found() -> None:
    planted = "from scx_gpu.tracer import capture\nfrom scx_gpu import cli, errors\n"
    found = imports(planted, "scx_gpu.controlplane.loader")
    assert [n for n in found if not allowed("scx_gpu.controlplane.loader", n)] == [
        "scx_gpu.tracer", "scx_gpu.tracer.capture", "scx_gpu.cli"]
    assert not allowed("scx_gpu.bpf.maps", "scx_gpu.controlplane.intf")
    assert not allowed("scx_gpu.tracer.session", "scx_gpu.bench.scenario")
    assert allowed("scx_gpu.cli", "scx_gpu.tracer.capture")
