"""The Debian archive this machine already uses, read from its apt sources.

The test kernel's private apt configuration, the guest's debootstrap and the
machine's backports entry all fetch from it, so a machine behind a local
mirror or proxy works unchanged. SCX_GPU_DEBIAN_MIRROR overrides it.

Run as `python3 -m scx_gpu.vm.mirror` (stdlib only, so `make setup` can ask
before the virtual environment exists) it prints the archive's URI.
"""

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from scx_gpu.errors import EnvironmentProblem

ENV_OVERRIDE = "SCX_GPU_DEBIAN_MIRROR"
APT_ETC = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")


def _one_line_entries(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """(uri, suite, components) of each `deb` line of a sources.list file."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], words[1], words[2:]


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """The fields of each deb822 stanza (continuation lines folded in)."""
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()


def _deb822_entries(text: str) -> Iterator[tuple[str, str, list[str]]]:
    """(uri, suite, components) of each enabled `deb` source of a .sources file."""
    for fields in _stanzas(text):
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        components = fields.get("components", "").split()
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield uri, suite, components


def _entries(apt_etc: Path) -> Iterator[tuple[str, str, list[str]]]:
    """Every source apt reads, in apt's order: sources.list, then the parts sorted."""
    main = apt_etc / "sources.list"
    if main.is_file():
        yield from _one_line_entries(main.read_text(errors="replace"))
    parts = apt_etc / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        if path.suffix == ".list":
            yield from _one_line_entries(path.read_text(errors="replace"))
        elif path.suffix == ".sources":
            yield from _deb822_entries(path.read_text(errors="replace"))


def codename(os_release: Path = OS_RELEASE) -> str:
    """This machine's Debian codename (VERSION_CODENAME), e.g. bookworm."""
    try:
        text = os_release.read_text()
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read {os_release}: {exc.strerror}") from exc
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise EnvironmentProblem(f"{os_release} names no VERSION_CODENAME: is this Debian?")


def debian_mirror(env: Mapping[str, str] = os.environ, apt_etc: Path = APT_ETC,
                  os_release: Path = OS_RELEASE) -> str:
    """The archive URI that serves this release's main suite, without a trailing /."""
    override = env.get(ENV_OVERRIDE, "").strip()
    if override:
        return override.rstrip("/")
    release = codename(os_release)
    for uri, suite, components in _entries(apt_etc):
        if suite == release and "main" in components:
            return uri.rstrip("/")
    raise EnvironmentProblem(
        f"no apt source in {apt_etc} serves Debian {release} main: add one, or set "
        f"{ENV_OVERRIDE} to a Debian archive URI"
    )


def main() -> int:
    try:
        print(debian_mirror())
    except EnvironmentProblem as exc:
        print(f"scx-gpu: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
