"""Resolve, download, cache and verify a kernel with sched_ext for the VM.

Debian's cloud kernels from trixie-backports enable CONFIG_SCHED_CLASS_EXT.
They are fetched with a private apt configuration (vm.apt) and unpacked with
dpkg -x; of their modules only those the guest needs are kept.
"""

import lzma
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from scx_gpu.cache import cache_dir, digest
from scx_gpu.errors import EnvironmentProblem, UsageError
from scx_gpu.vm import apt
from scx_gpu.vm.command import checked
from scx_gpu.vm.progress import step

SUITE = "trixie-backports"
METAPACKAGE = "linux-image-cloud-amd64"
FLAVOUR = "-cloud-amd64"
# x86 boot protocol: "HdrS" at offset 0x202 of every bzImage.
BZIMAGE_MAGIC_OFFSET, BZIMAGE_MAGIC = 0x202, b"HdrS"
# A kernel with sched_ext has struct sched_ext_ops in its BTF string table.
SCHED_EXT_MARKER = b"sched_ext_ops"
ZSTD_MAGIC, GZIP_MAGIC, XZ_MAGIC = b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08", b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class Kernel:
    """A bootable bzImage with sched_ext, and where it came from."""

    version: str
    vmlinuz: Path
    origin: str

    @property
    def vmlinux(self) -> Path:
        """The decompressed kernel (for BTF), extracted once and cached."""
        return extract_vmlinux(self.vmlinuz)


def resolve_debian(progress: bool = False) -> tuple[str, str]:
    """(ABI name, package version) of the current cloud kernel in trixie-backports."""
    apt.update(SUITE)
    show = apt.show(SUITE, METAPACKAGE)
    version = re.search(r"^Version: (\S+)", show, re.M)
    abi = re.search(r"linux-image-(\S+-cloud-amd64) \(", show)
    if not (version and abi):
        raise EnvironmentProblem(f"cannot read the kernel version from {METAPACKAGE} in {SUITE}")
    return abi.group(1), version.group(1)


def _fetch_unpacked(packages: list[str], work: Path) -> None:
    """Download packages of the suite into work and unpack them all into work/root."""
    apt.download(SUITE, packages, work)
    for deb in work.glob("*.deb"):
        checked(["dpkg", "-x", str(deb), str(work / "root")], f"dpkg -x {deb.name}")


def _download_debian(abi: str, version: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        work = Path(tmp)
        _fetch_unpacked([f"linux-binary-{abi}={version}", f"linux-base-{abi}={version}"],
                        work)
        moddir = work / "root" / "usr" / "lib" / "modules" / abi
        stage = work / "kernel"
        stage.mkdir()
        shutil.copy(moddir / "vmlinuz", stage / "vmlinuz")
        shutil.copy(moddir / "config", stage / "config")
        config = (stage / "config").read_text()
        if "CONFIG_SCHED_CLASS_EXT=y" not in config.splitlines():
            raise EnvironmentProblem(f"Debian kernel {abi} {version} has no CONFIG_SCHED_CLASS_EXT")
        stage.rename(dest)


def headers_debs(kernel: Kernel) -> list[Path]:
    """Debian's header packages for a Debian kernel, downloaded once beside it.

    bcc, the test referee in the guest, compiles its programs against them.
    """
    if not kernel.origin.startswith("debian"):
        raise EnvironmentProblem(f"no Debian kernel headers for {kernel.version}: bcc in the "
                                 "guest needs the Debian kernel (leave out --kernel)")
    abi, _, version = kernel.vmlinuz.parent.name.partition("_")
    folder = kernel.vmlinuz.parent / "headers"
    if not folder.is_dir():
        common = abi.removesuffix(FLAVOUR) + "-common"
        partial = folder.with_name("headers.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        with step(f"downloading the headers of {abi} (for bcc in the guest; cached)"):
            apt.download(SUITE, [f"linux-headers-{abi}={version}",
                                 f"linux-headers-{common}={version}"], partial)
        partial.rename(folder)
    return sorted(folder.glob("*.deb"))


def _modinfo_depends(module: Path) -> list[str]:
    """The modules a .ko.xz needs loaded first (its .modinfo's depends=)."""
    found = re.search(rb"(?:^|\0)depends=([^\0]*)", lzma.decompress(module.read_bytes()))
    return [name for name in (found.group(1).decode().split(",") if found else []) if name]


def _module_name(name: str) -> str:
    """The kernel's name for a module: '-' and '_' are one."""
    return name.split(".ko")[0].replace("-", "_")


def needed_modules(moddir: Path, names: tuple[str, ...]) -> list[Path]:
    """The named modules under moddir and the modules they depend on, recursively."""
    by_name = {_module_name(p.name): p for p in moddir.rglob("*.ko*")}
    wanted: set[str] = set()
    todo = list(names)
    while todo:
        name = _module_name(todo.pop())
        if name not in by_name:
            raise EnvironmentProblem(f"no module {name} in {moddir} (is it built in? see the "
                                     "kernel's config)")
        if name not in wanted:
            wanted.add(name)
            todo.extend(_modinfo_depends(by_name[name]))
    return [by_name[name] for name in sorted(wanted)]


def modules(kernel: Kernel, names: tuple[str, ...]) -> Path:
    """A tree (usr/lib/modules/ABI/kernel/...) of the named modules of a Debian kernel and
    those they depend on, taken once from its modules package and cached beside it."""
    abi, _, version = kernel.vmlinuz.parent.name.partition("_")
    folder = kernel.vmlinuz.parent / f"modules-{digest(*sorted(names))}"
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with (step(f"taking {', '.join(names)} from the modules of {abi} (cached)"),
          tempfile.TemporaryDirectory(dir=folder.parent) as tmp):
        work = Path(tmp)
        _fetch_unpacked([f"linux-modules-{abi}={version}"], work)
        for module in needed_modules(work / "root" / "usr" / "lib" / "modules" / abi, names):
            target = partial / module.relative_to(work / "root")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(module, target)
    partial.rename(folder)
    return folder


def debian_kernel() -> Kernel:
    """The current Debian sched_ext kernel, from cache when offline."""
    root = cache_dir("kernel")
    try:
        abi, version = resolve_debian()
    except EnvironmentProblem as exc:
        cached = sorted(root.glob("*/vmlinuz"), key=lambda p: p.stat().st_mtime)
        if not cached:
            raise EnvironmentProblem(f"{exc}; and no kernel is cached in {root}") from exc
        return Kernel(cached[-1].parent.name, cached[-1], "debian (cached, offline)")
    dest = root / f"{abi}_{version}"
    if not (dest / "vmlinuz").is_file():
        with step(f"downloading Debian's sched_ext kernel {abi} {version} (cached afterwards)"):
            _download_debian(abi, version, dest)
    return Kernel(f"{abi} {version}", dest / "vmlinuz", f"debian {SUITE}")


def user_kernel(path: Path) -> Kernel:
    """A user's bzImage, checked to be one and to have sched_ext."""
    try:
        head = path.read_bytes()[: BZIMAGE_MAGIC_OFFSET + 4]
    except OSError as exc:
        raise UsageError(f"--kernel {path}: {exc.strerror}") from exc
    if head[BZIMAGE_MAGIC_OFFSET:] != BZIMAGE_MAGIC:
        raise UsageError(f"--kernel {path}: not an x86 bzImage (no HdrS boot header)")
    if SCHED_EXT_MARKER not in extract_vmlinux(path).read_bytes():
        raise UsageError(
            f"--kernel {path}: this kernel has no sched_ext (build it with "
            "CONFIG_SCHED_CLASS_EXT=y and CONFIG_DEBUG_INFO_BTF=y)"
        )
    return Kernel(path.name, path, "user")


def _decompress_at(data: bytes, offset: int) -> bytes:
    """Decompress the stream starting at offset, ignoring trailing bytes."""
    if data.startswith(ZSTD_MAGIC, offset):
        proc = subprocess.run(["zstd", "-dcq"], input=data[offset:], capture_output=True)
        return proc.stdout
    if data.startswith(GZIP_MAGIC, offset):
        return zlib.decompressobj(wbits=31).decompress(data[offset:])
    if data.startswith(XZ_MAGIC, offset):
        return lzma.LZMADecompressor().decompress(data[offset:])
    return b""


def extract_vmlinux(vmlinuz: Path) -> Path:
    """The ELF inside a bzImage (as scripts/extract-vmlinux finds it), cached."""
    data = vmlinuz.read_bytes()
    out = cache_dir("vmlinux") / f"vmlinux-{digest(data)}"
    if out.is_file():
        return out
    for magic in (ZSTD_MAGIC, GZIP_MAGIC, XZ_MAGIC):
        offset = data.find(magic)
        while offset != -1:
            try:
                elf = _decompress_at(data, offset)
            except (zlib.error, lzma.LZMAError):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                out.write_bytes(elf)
                return out
            offset = data.find(magic, offset + 1)
    raise UsageError(f"{vmlinuz}: cannot find a zstd, gzip or xz compressed kernel inside")


def write_vmlinux_h(kernel: Kernel, dest: Path) -> None:
    """Dump the kernel's BTF as C (the vmlinux.h the BPF code compiles against)."""
    header = checked(["bpftool", "btf", "dump", "file", str(kernel.vmlinux), "format", "c"],
                     "bpftool btf dump")
    dest.write_text(f"/* Generated from {kernel.version} by `make vmlinux-h`. */\n{header}")
