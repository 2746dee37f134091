"""Build and cache the guest root filesystem of the test VM.

Two layers: a debootstrap'ed bookworm base (slow, cached by its package
list) and, on top, what goes with the kernel (its headers and modules) and
this project (fast, redone whenever either changes). The ext4 image is
cached by both keys.
"""

import fcntl
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata, resources
from pathlib import Path

import scx_gpu
from scx_gpu.cache import cache_dir, digest
from scx_gpu.errors import EnvironmentProblem
from scx_gpu.vm import apt
from scx_gpu.vm.command import checked
from scx_gpu.vm.kernel import Kernel, headers_debs, modules
from scx_gpu.vm.mirror import debian_mirror
from scx_gpu.vm.progress import say, step

SUITE = "bookworm"
BASE_PACKAGES = (
    "python3", "python3-click", "python3-rich", "python3-pytest", "python3-jeepney",
    "python3-pyroute2",
    "stress-ng", "iproute2", "procps", "util-linux",
    "dbus-daemon",  # a private bus for the scx_loader takeover test
    "systemd",      # the service test runs systemd (in a PID namespace)
    # bcc, the tests' independent referee (never a runtime dependency): it
    # compiles against the kernel's headers, added per kernel by ensure_image;
    # its libbpf-tools builds (CO-RE) compile nothing in the guest.
    "bpfcc-tools", "python3-bpfcc", "libbpf-tools",
)
# libbpf >= 1.2 is needed for .struct_ops.link; bookworm has 1.1.2.
BACKPORTS_PACKAGES = ("libbpf1",)
# The tracer's analysis stack and the metrics tests' parser, at the host
# environment's versions (bookworm has no pyarrow), installed from wheels for
# the guest's Python 3.11.
GUEST_WHEELS = ("numpy", "pandas", "pyarrow", "prometheus-client")
GUEST_PYTHON = "3.11"
SITE_PACKAGES = f"usr/local/lib/python{GUEST_PYTHON}/dist-packages"
# What the co-location features need of the kernel that Debian's cloud kernel
# builds as a module, not in (cgroup BPF, fq_codel, the cgroup v2 controllers
# are built in): netshape's HTB qdisc. Only these go into the image, and
# the kernel loads them itself: asked for an htb qdisc, it runs modprobe
# (request_module), which finds the module by the alias depmod indexes, so
# loading stays on demand, as on a real node, with nothing loaded at boot.
GUEST_MODULES = ("sch_htb",)
# kmod (modprobe, depmod) goes in with the modules, per image: a user's
# kernel brings none, and the base's slow debootstrap stays cached. It must
# be at the version of the base's libkmod2.
KMOD, LIBKMOD = "kmod", "libkmod2"
# Guest images kept in the cache besides the one built: another `scx-gpu vm
# run` (another checkout) may be about to boot one of them.
OTHER_IMAGES_KEPT = 2
INIT_PATH = "usr/local/sbin/scx-gpu-init"
ROOT_LABEL = "scxgpu-root"
# The kernel finds the root by this GPT partition UUID (root=PARTUUID=...):
# NVMe namespaces and controllers probe asynchronously, so device names are
# not stable, and the cloud kernel has no initramfs to find a label.
ROOT_PARTUUID = "6a1c7f0e-2b9d-4e3a-8c5f-0d4b7e9a2c61"
PART_START_MB = 1
GPT_TAIL_MB = 1
FREE_SPACE_MB = 512
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
        "var/cache/apt/archives", "var/lib/apt/lists")


def _chroot(root: Path, *cmd: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C"}
    checked(["chroot", str(root), *cmd], f"chroot {' '.join(cmd[:3])}", env=env)


def _wheel_pins() -> list[str]:
    try:
        return [f"{name}=={metadata.version(name)}" for name in GUEST_WHEELS]
    except metadata.PackageNotFoundError as exc:
        raise EnvironmentProblem(f"{exc.name} is not installed here: run `make setup`") from exc


def base_key() -> str:
    return digest(SUITE, *BASE_PACKAGES, "backports", *BACKPORTS_PACKAGES,
                  *_wheel_pins())


def _install_wheels(root: Path) -> None:
    checked([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--only-binary=:all:", "--python-version", GUEST_PYTHON, "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
             "--target", str(root / SITE_PACKAGES), *_wheel_pins()],
            f"pip install (the guest's {', '.join(GUEST_WHEELS)})")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(f"{what} needs root (debootstrap, chroot): run it with sudo")


def build_base(dest: Path) -> None:
    """debootstrap a minbase bookworm with our packages into dest."""
    _require_root("building the guest image")
    stage = dest.with_name(dest.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    mirror = debian_mirror()
    say(f"building the guest's base system once (cached in {dest.parent})")
    with step(f"[1/3] debootstrap {SUITE} minbase with {len(BASE_PACKAGES)} packages"):
        checked(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 SUITE, str(stage), mirror], "debootstrap")
    shutil.copy("/etc/resolv.conf", stage / "etc" / "resolv.conf")
    (stage / "etc/apt/sources.list.d/backports.list").write_text(
        f"deb {mirror} {SUITE}-backports main\n")
    with step(f"[2/3] {', '.join(BACKPORTS_PACKAGES)} from {SUITE}-backports"):
        _chroot(stage, "apt-get", "-q", "update")
        _chroot(stage, "apt-get", "-q", "-y", "--no-install-recommends",
                "-t", f"{SUITE}-backports", "install", *BACKPORTS_PACKAGES)
        _chroot(stage, "apt-get", "clean")
    with step(f"[3/3] wheels for the guest's Python: {', '.join(GUEST_WHEELS)}"):
        _install_wheels(stage)
    for sub in TRIM:
        shutil.rmtree(stage / sub, ignore_errors=True)
    (stage / "etc" / "hostname").write_text("scx-gpu-vm\n")
    stage.rename(dest)


def _package_files() -> list[tuple[str, Path]]:
    """(path inside the guest, source file) for the installed scx_gpu package."""
    root = Path(scx_gpu.__file__).resolve().parent
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                files.append((f"{SITE_PACKAGES}/scx_gpu/{rel / name}", Path(dirpath, name)))
    return files


def project_key(files: list[tuple[str, Path]]) -> str:
    return digest(*(item for dst, src in files for item in (dst, src.read_bytes())))


def _install_project(root: Path, files: list[tuple[str, Path]]) -> None:
    shutil.rmtree(root / SITE_PACKAGES / "scx_gpu", ignore_errors=True)
    for dst, src in files:
        target = root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)  # keeps the mode: workloads/bin holds executables
    # By the guest's own Python: otherwise each boot compiles the package on
    # its first import, seconds under emulation, paid again by every test boot.
    _chroot(root, "python3", "-m", "compileall", "-q", f"/{SITE_PACKAGES}/scx_gpu")
    script = root / "usr/local/bin/scx-gpu"
    script.write_text("#!/usr/bin/python3\nfrom scx_gpu.cli import main\n\nmain()\n")
    script.chmod(0o755)
    init = root / INIT_PATH
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_bytes(resources.files("scx_gpu.vm").joinpath("guest-init.sh").read_bytes())
    init.chmod(0o755)


def _tree_mb(root: Path) -> int:
    total = sum(f.lstat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    return total // (1 << 20)


def _make_disk(path: Path, tree: Path, fs_mb: int) -> None:
    """A GPT disk whose one partition (ROOT_PARTUUID) is an ext4 made from tree."""
    with path.open("wb") as f:
        f.truncate((PART_START_MB + fs_mb + GPT_TAIL_MB) << 20)
    layout = (f"label: gpt\nstart={PART_START_MB}MiB, size={fs_mb}MiB, "
              f"type=linux, uuid={ROOT_PARTUUID}\n")
    checked(["sfdisk", "-q", str(path)], "sfdisk (guest image)", stdin=layout)
    checked(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-E", f"offset={PART_START_MB << 20}",
             "-d", str(tree), str(path), f"{fs_mb}M"], "mkfs.ext4 (guest image)")


def write_disk(tree: Path, path: Path) -> None:
    """A bootable guest disk at path from a root tree, with FREE_SPACE_MB to spare."""
    _make_disk(path, tree, _tree_mb(tree) * 5 // 4 + FREE_SPACE_MB)


def _install_headers(root: Path, debs: list[Path]) -> None:
    """The kernel's headers where bcc looks (/lib/modules/RELEASE/build), and no others."""
    for old in [*root.glob("usr/src/linux-headers-*"), *root.glob("usr/lib/modules/*")]:
        shutil.rmtree(old)
    for deb in debs:
        checked(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")


def _installed_version(root: Path, package: str) -> str:
    """The version of a package installed in root (its dpkg status)."""
    status = (root / "var/lib/dpkg/status").read_text()
    found = re.search(rf"^Package: {re.escape(package)}\n(?:.+\n)*?Version: (\S+)", status, re.M)
    if not found:
        raise EnvironmentProblem(f"{package} is not installed in the guest's base {root}: "
                                 "delete that folder to rebuild it")
    return found.group(1)


def _guest_deb(package: str, version: str) -> Path:
    """A package of the guest's suite, downloaded once."""
    folder = cache_dir("debs", SUITE)
    cached = sorted(folder.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
    if cached:
        return cached[0]
    with (step(f"downloading {package} {version} for the guest (cached)"),
          tempfile.TemporaryDirectory(dir=folder) as tmp):
        apt.update(SUITE)
        apt.download(SUITE, [f"{package}={version}"], Path(tmp))
        deb = next(Path(tmp).glob("*.deb"))
        return deb.rename(folder / deb.name)


def _install_modules(root: Path, tree: Path, kmod: Path, release: str) -> None:
    """The kernel's modules from tree, kmod to load them, and their index (depmod)."""
    shutil.copytree(tree, root, symlinks=True, dirs_exist_ok=True)
    # dpkg in the guest's tree, not dpkg -x: kmod's files are under /bin and /sbin,
    # which the base has as links into /usr.
    shutil.copy(kmod, root / "tmp" / kmod.name)
    try:
        _chroot(root, "dpkg", "-i", f"/tmp/{kmod.name}")
    finally:
        (root / "tmp" / kmod.name).unlink()
    _chroot(root, "depmod", release)


@contextmanager
def _building(images: Path) -> Iterator[None]:
    """The image cache to one builder at a time: every build rewrites the base."""
    with (images / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _prune(images: Path, built: Path) -> None:
    """Unfinished images, and all but the newest OTHER_IMAGES_KEPT others."""
    for partial in images.glob("rootfs-*.partial"):
        partial.unlink()
    others = sorted((p for p in images.glob("rootfs-*.ext4") if p != built),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[OTHER_IMAGES_KEPT:]:
        old.unlink()


def ensure_image(kernel: Kernel) -> Path:
    """The cached guest image for the installed project and kernel, built if needed."""
    images = cache_dir("image")
    with _building(images):
        return _ensure_image(images, kernel)


def _ensure_image(images: Path, kernel: Kernel) -> Path:
    base = images / f"base-{base_key()}"
    if not base.is_dir():
        build_base(base)
        for old in images.glob("base-*"):
            if old != base:
                shutil.rmtree(old)
    files = _package_files()
    if not any(dst.endswith(".bpf.o") for dst, _ in files):
        raise EnvironmentProblem("no compiled BPF objects in the package: run `make bpf` first")
    debian = kernel.origin.startswith("debian")
    headers = headers_debs(kernel) if debian else []
    mods = modules(kernel, GUEST_MODULES) if debian else None
    kmod = _guest_deb(KMOD, _installed_version(base, LIBKMOD)) if debian else None
    key = digest(project_key(files), *(deb.name for deb in headers),
                 *(path.name for path in (mods, kmod) if path))
    image = images / f"rootfs-{base_key()}-{key}.ext4"
    if image.is_file():
        return image
    _require_root("building the guest image")
    with step("writing the guest image with this project installed"):
        _install_headers(base, headers)
        if mods and kmod:
            _install_modules(base, mods, kmod, kernel.vmlinuz.parent.name.partition("_")[0])
        _install_project(base, files)
        partial = image.with_suffix(".partial")
        try:
            write_disk(base, partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.rename(image)
    _prune(images, image)
    return image
