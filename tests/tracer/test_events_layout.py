"""tracer/events.py's dtype mirrors struct gpu_trace_event: checked against BTF."""

import json
import subprocess

from scx_gpu.bpf import object_path
from scx_gpu.tracer.events import EVENT_DTYPE


def test_event_dtype_matches_btf():
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file",
                          str(object_path("cuda_trace.bpf.o"))], capture_output=True, text=True,
                         check=True).stdout
    btf = next(t for t in json.loads(out)["types"]
               if t["kind"] == "STRUCT" and t["name"] == "gpu_trace_event")
    assert EVENT_DTYPE.itemsize == btf["size"]
    fields: dict[str, tuple[object, ...]] = dict(EVENT_DTYPE.fields or {})
    ours = [(name, offset) for name, (_, offset, *_) in fields.items()]
    assert ours == [(m["name"], m["bits_offset"] // 8) for m in btf["members"]]
