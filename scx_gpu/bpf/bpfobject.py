"""A libbpf object: open, set read-only options, load, attach, find maps.

The scheduler and the tracer are both one of these.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from scx_gpu.bpf import libbpf, probesite

_CTYPE_BY_SIZE = {1: ctypes.c_uint8, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


class BpfObject:
    def __init__(self, path: Path) -> None:
        self._lib = libbpf.lib()
        self.path = path
        self.obj = libbpf.check_ptr(self._lib.bpf_object__open_file(str(path).encode(), None),
                                    f"open {path}")
        self.links: list[int] = []
        self._layouts: dict[str, dict[str, tuple[int, int]]] = {}
        self._views: dict[str, mmap.mmap] = {}

    def _map(self, name: str) -> int:
        return libbpf.check_ptr(self._lib.bpf_object__find_map_by_name(self.obj, name.encode()),
                                f"map {name}")

    def _prog(self, name: str) -> int:
        return libbpf.check_ptr(
            self._lib.bpf_object__find_program_by_name(self.obj, name.encode()), name)

    def map_fd(self, name: str) -> int:
        return libbpf.check(self._lib.bpf_map__fd(self._map(name)), f"fd of map {name}")

    def section_vars(self, section: str) -> dict[str, tuple[int, int]]:
        """name -> (offset, size) of the variables in a data section, from BTF."""
        if section not in self._layouts:
            btf = libbpf.check_ptr(self._lib.bpf_object__btf(self.obj), "object BTF")
            self._layouts[section] = {
                name: (off, size) for name, off, size in libbpf.datasec_vars(btf, section)}
        return self._layouts[section]

    def section_view(self, section: str) -> mmap.mmap:
        """A loaded data section (.bss, .data) mapped read-only from the kernel's
        map: reading it is a read of memory, not a syscall."""
        if section not in self._views:
            size = self._lib.bpf_map__value_size(self._map(section))
            self._views[section] = mmap.mmap(self.map_fd(section), size, mmap.MAP_SHARED,
                                             mmap.PROT_READ)
        return self._views[section]

    def _rodata(self) -> int:
        size = ctypes.c_size_t()
        return libbpf.check_ptr(self._lib.bpf_map__initial_value(self._map(".rodata"),
                                                                 ctypes.byref(size)), ".rodata")

    def set_rodata(self, values: Mapping[str, int | bool]) -> None:
        """Write read-only options (const volatile globals) before load."""
        base = self._rodata()
        layout = self.section_vars(".rodata")
        for name, value in values.items():
            offset, width = layout[name]
            _CTYPE_BY_SIZE[width].from_address(base + offset).value = int(value)

    def set_rodata_array(self, name: str, values: Sequence[int], elem_size: int) -> None:
        """Write the first len(values) elements of a read-only array before load."""
        offset, width = self.section_vars(".rodata")[name]
        if len(values) * elem_size > width:
            raise ValueError(f"{len(values)} values overflow {name} ({width // elem_size})")
        array = (_CTYPE_BY_SIZE[elem_size] * len(values)).from_address(self._rodata() + offset)
        array[:] = list(values)

    def set_max_entries(self, map_name: str, entries: int) -> None:
        libbpf.check(self._lib.bpf_map__set_max_entries(self._map(map_name), entries),
                     f"size of map {map_name}")

    def _programs(self) -> Iterator[tuple[str, int]]:
        prog = self._lib.bpf_object__next_program(self.obj, None)
        while prog:
            yield self._lib.bpf_program__name(prog).decode(), prog
            prog = self._lib.bpf_object__next_program(self.obj, prog)

    def load_only(self, programs: set[str], skip_maps: set[str]) -> None:
        """Before load: load just these programs and create none of skip_maps."""
        for name, prog in self._programs():
            libbpf.check(self._lib.bpf_program__set_autoload(prog, name in programs),
                         f"autoload of {name}")
        for name in skip_maps:
            libbpf.check(self._lib.bpf_map__set_autocreate(self._map(name), False),
                         f"autocreate of map {name}")

    def skip_program(self, name: str) -> None:
        """Before load: leave this program out of the kernel."""
        libbpf.check(self._lib.bpf_program__set_autoload(self._prog(name), False),
                     f"autoload of {name}")

    def load(self) -> None:
        libbpf.check(self._lib.bpf_object__load(self.obj), f"load {self.path.name}")

    def verified_insns(self) -> dict[str, int]:
        """After load: the instructions the verifier processed, per loaded program."""
        counts = {}
        for name, prog in self._programs():
            fd = self._lib.bpf_program__fd(prog)
            if fd < 0:  # not loaded
                continue
            info = libbpf.BpfProgInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            libbpf.check(self._lib.bpf_prog_get_info_by_fd(fd, ctypes.byref(info),
                                                           ctypes.byref(size)), f"info of {name}")
            counts[name] = info.verified_insns
        return counts

    def attach(self, prog: str) -> int:
        """Attach a program where its section says (tracepoints); kept until close."""
        link = libbpf.check_ptr(self._lib.bpf_program__attach(self._prog(prog)),
                                f"attach {prog}")
        self.links.append(link)
        return link

    def attach_uprobe(self, prog: str, binary: Path, symbol: str, cookie: int = 0,
                      retprobe: bool = False) -> int:
        """Attach prog to symbol in binary; the caller owns (destroys) the link.

        The probe goes where a hit costs least and sees what the entry sees
        (probesite), entry and return probes alike: at one address they share a trap.
        """
        opts = libbpf.BpfUprobeOpts(sz=ctypes.sizeof(libbpf.BpfUprobeOpts),
                                    func_name=symbol.encode(), bpf_cookie=cookie,
                                    retprobe=retprobe)
        offset = probesite.symbol_probe_offset(binary, symbol)  # from the symbol's start
        return libbpf.check_ptr(
            self._lib.bpf_program__attach_uprobe_opts(self._prog(prog), -1,
                                                      str(binary).encode(), offset,
                                                      ctypes.byref(opts)),
            f"uprobe {binary}:{symbol}")

    def attach_uprobe_multi(self, prog: str, binary: Path, symbols: Iterable[str],
                            cookie: Callable[[str], int] = lambda symbol: 0,
                            ) -> tuple[int, list[str]]:
        """Attach prog to every symbol binary has, in one link (at the sites
        attach_uprobe would choose, each with its cookie), registered in the
        order given; (the link, the symbols probed). The caller owns the link."""
        sites = probesite.probe_sites(binary, symbols)
        if not sites:
            raise libbpf.LibbpfError(f"uprobe_multi {binary}: none of its symbols found",
                                     errno.ENOENT)
        offsets = (ctypes.c_ulong * len(sites))(*sites.values())
        cookies = (ctypes.c_uint64 * len(sites))(*map(cookie, sites))
        opts = libbpf.BpfUprobeMultiOpts(sz=ctypes.sizeof(libbpf.BpfUprobeMultiOpts),
                                         offsets=offsets, cookies=cookies, cnt=len(sites))
        link = libbpf.check_ptr(
            self._lib.bpf_program__attach_uprobe_multi(self._prog(prog), -1,
                                                       str(binary).encode(), None,
                                                       ctypes.byref(opts)),
            f"uprobe_multi {binary}: {', '.join(sites)}")
        return link, list(sites)

    def run_syscall(self, prog: str, arg: ctypes.Structure) -> int:
        """Run a loaded SEC("syscall") program on arg; its return value (signed)."""
        opts = libbpf.BpfTestRunOpts(sz=ctypes.sizeof(libbpf.BpfTestRunOpts),
                                     ctx_in=ctypes.addressof(arg), ctx_size_in=ctypes.sizeof(arg))
        fd = libbpf.check(self._lib.bpf_program__fd(self._prog(prog)), f"fd of {prog}")
        libbpf.check(self._lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts)), f"run {prog}")
        return ctypes.c_int32(opts.retval).value

    def detach(self, link: int) -> None:
        """Destroy a link that attach() made, before close()."""
        self.links.remove(link)
        self._lib.bpf_link__destroy(link)

    def destroy_link(self, link: int) -> None:
        self._lib.bpf_link__destroy(link)

    def close(self) -> None:
        """Destroy the links this object attached and free it."""
        for view in self._views.values():
            view.close()
        self._views.clear()
        for link in self.links:
            self._lib.bpf_link__destroy(link)
        self.links.clear()
        if self.obj:
            self._lib.bpf_object__close(self.obj)
            self.obj = 0
