"""LibraryWatch's bookkeeping, on a stand-in session (the real one is tested in
test_libcuda_mapped.py): each file probed once, at most MAX_LIBS of them."""

import shutil
from pathlib import Path

from scx_gpu.bpf.libcuda import CudaLib
from scx_gpu.tracer.libwatch import MAX_LIBS, LibraryWatch
from scx_gpu.tracer.session import Probed
from scx_gpu.workloads import program


class Session:
    """What LibraryWatch uses of a TraceSession, recording the calls."""

    def __init__(self) -> None:
        self.probed: list[Probed] = []
        self.marked: set[tuple[int, int]] = set()

    def probe_driver(self, lib: Path) -> Probed:
        self.probed.append(Probed(lib, "driver", ["cuLaunchKernel"]))
        return self.probed[-1]

    def mark_probed(self, dev: int, ino: int) -> None:
        self.marked.add((dev, ino))

    def watch_mappings(self) -> None:
        pass


def test_each_file_once_and_at_most_max_libs(tmp_path):
    libs = []
    for i in range(MAX_LIBS + 2):
        lib = tmp_path / str(i) / "libcuda.so.1"
        lib.parent.mkdir()
        shutil.copy(program("libcuda.so.1"), lib)
        libs.append(CudaLib(lib, "path"))
    (tmp_path / "again").symlink_to(libs[0].path)
    said: list[str] = []
    session = Session()
    watch = LibraryWatch(session, said.append)  # type: ignore[arg-type]
    watch.start([*libs, CudaLib(tmp_path / "again", "option")])
    watch.start(libs)  # again: nothing new, nothing said
    assert [p.path for p in session.probed] == [lib.path for lib in libs[:MAX_LIBS]]
    assert len(session.marked) == MAX_LIBS
    refused = [line for line in said if line.startswith("not probing")]
    assert len(refused) == 2 and str(libs[-1].path) in refused[-1], said
