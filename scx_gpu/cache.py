"""Where downloads and built artefacts are cached (kernel, guest image)."""

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """~/.cache/scx-gpu (or $SCX_GPU_CACHE) joined with parts, created."""
    root = os.environ.get("SCX_GPU_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "scx-gpu")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(*items: str | bytes) -> str:
    """A short stable key for cache entries derived from their inputs."""
    h = hashlib.sha256()
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]
