"""Debian packages fetched with a private apt configuration, one per suite.

Own source list, lists and cache dirs, no dpkg status: the machine's own
apt sources are never touched, since installing trixie packages on bookworm
breaks it. Packages are only downloaded here; callers unpack them (dpkg -x)
or install them into the guest's tree.
"""

from pathlib import Path

from scx_gpu.cache import cache_dir
from scx_gpu.vm.command import checked
from scx_gpu.vm.mirror import debian_mirror

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _options(suite: str) -> list[str]:
    root = cache_dir("apt", suite)
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {debian_mirror()} {suite} main\n")
    settings = {
        "Dir::Etc::SourceList": str(sources),
        "Dir::Etc::SourceParts": "/dev/null",
        "Dir::State::Lists": str(root / "lists"),
        "Dir::State::status": "/dev/null",
        "Dir::Cache": str(root / "cache"),
        "Debug::NoLocking": "1",
        "APT::Sandbox::User": "root",
    }
    return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]


def _apt(tool: str, suite: str, *args: str, cwd: Path | None = None) -> str:
    return checked([tool, *_options(suite), "-q", *args], f"{tool} {args[0]} ({suite})", cwd)


def update(suite: str) -> None:
    """Fetch the suite's package lists."""
    _apt("apt-get", suite, "update")


def show(suite: str, package: str) -> str:
    """The package's records in the suite (lists fetched by update)."""
    return _apt("apt-cache", suite, "show", package)


def download(suite: str, packages: list[str], dest: Path) -> None:
    """Download packages ("name=version") of the suite into dest."""
    _apt("apt-get", suite, "download", *packages, cwd=dest)
