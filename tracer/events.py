"""The tracer's event record as a numpy dtype (mirror of tracer/trace_intf.h)."""

import numpy as np

from scx_gpu.bpf.libcuda import LAUNCH_SYMBOLS

EVENT_DTYPE = np.dtype([
    ("ts_ns", "<u8"), ("type", "<u4"), ("api", "<u4"),
    ("pid", "<u4"), ("tid", "<u4"), ("cpu", "<u4"), ("flags", "<u4"),
    ("comm", "S16"), ("grid", "<u4", (3,)), ("block", "<u4", (3,)),
    ("shared_mem", "<u4"), ("irq", "<u4"), ("stream", "<u8"),
    ("last_offcpu_ns", "<u8"), ("last_oncpu_ns", "<u8"),
    ("prev_tid", "<u4"), ("next_tid", "<u4"), ("prev_state", "<i8"),
    ("duration_ns", "<u8"), ("irq_name", "S16"),
])

# struct gpu_lib_event: a process mapped a libcuda file without probes.
LIB_DTYPE = np.dtype([
    ("dev", "<u8"), ("ino", "<u8"), ("tgid", "<u4"), ("held", "<u4"), ("name", "S32"),
])
TRACE_FOLLOW, TRACE_HOLD = 1, 2  # values of the `traced` map

EV_LAUNCH, EV_SYNC_ENTER, EV_SYNC_EXIT, EV_SCHED_SWITCH, EV_SCHED_WAKEUP = 1, 2, 3, 4, 5
EV_HARDIRQ_ENTRY, EV_HARDIRQ_EXIT, EV_SOFTIRQ_ENTRY, EV_SOFTIRQ_EXIT = 6, 7, 8, 9
FLAG_PREEMPT = 1

TYPE_NAMES = {
    EV_SYNC_ENTER: "syncEnter", EV_SYNC_EXIT: "syncExit", EV_SCHED_SWITCH: "schedSwitch",
    EV_SCHED_WAKEUP: "schedWakeup", EV_HARDIRQ_ENTRY: "hardirqEntry",
    EV_HARDIRQ_EXIT: "hardirqExit", EV_SOFTIRQ_ENTRY: "softirqEntry",
    EV_SOFTIRQ_EXIT: "softirqExit",
}
# enum trace_api: launch events are named by their entry point.
API_NAMES = dict(enumerate((*LAUNCH_SYMBOLS, "cudaLaunchKernel", "cuCtxSynchronize",
                            "cuStreamSynchronize", "cudaDeviceSynchronize"), start=1))
API_IDS = {name: api for api, name in API_NAMES.items()}
RUNTIME_APIS = {"cudaLaunchKernel", "cudaDeviceSynchronize"}
SOFTIRQ_NAMES = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
                 "HRTIMER", "RCU")


def driver_launches(events: np.ndarray) -> int:
    """Launch records of the driver layer (the counting one) among events."""
    runtime = [API_IDS[name] for name in RUNTIME_APIS]
    launch = (events["type"] == EV_LAUNCH) & ~np.isin(events["api"], runtime)
    return int(launch.sum())
