"""tracer/events.py's dtypes mirror the records of tracer/trace_intf.h: checked against BTF."""

import json
import subprocess

import numpy as np
import pytest

from scx_gpu.bpf import object_path
from scx_gpu.tracer.events import EVENT_DTYPE, LIB_DTYPE


@pytest.mark.parametrize(("dtype", "struct"), [(EVENT_DTYPE, "gpu_trace_event"),
                                               (LIB_DTYPE, "gpu_lib_event")])
def test_dtype_matches_btf(dtype: np.dtype, struct: str) -> None:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file",
                          str(object_path("cuda_trace.bpf.o"))], capture_output=True, text=True,
                         check=True).stdout
    btf = next(t for t in json.loads(out)["types"]
               if t["kind"] == "STRUCT" and t["name"] == struct)
    assert dtype.itemsize == btf["size"]
    fields: dict[str, tuple[object, ...]] = dict(dtype.fields or {})
    ours = [(name, offset) for name, (_, offset, *_) in fields.items()]
    assert ours == [(m["name"], m["bits_offset"] // 8) for m in btf["members"]]
