/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The tracer's one event record: an explicit type and a fixed schema (the
 * original tool inferred the type from the record size). tracer/events.py
 * mirrors it as a numpy dtype; tests check the mirror against BTF.
 */
#ifndef __SCX_GPU_TRACE_INTF_H
#define __SCX_GPU_TRACE_INTF_H

enum trace_event_type {
	EV_LAUNCH		= 1,
	EV_SYNC_ENTER		= 2,
	EV_SYNC_EXIT		= 3,
	EV_SCHED_SWITCH		= 4,
	EV_SCHED_WAKEUP		= 5,
	EV_HARDIRQ_ENTRY	= 6,
	EV_HARDIRQ_EXIT		= 7,
	EV_SOFTIRQ_ENTRY	= 8,
	EV_SOFTIRQ_EXIT		= 9,
};

/* Which entry point a launch or sync event came from (the uprobe's cookie). */
enum trace_api {
	API_CU_LAUNCH_KERNEL		= 1,
	API_CU_LAUNCH_KERNEL_PTSZ	= 2,
	API_CU_LAUNCH_KERNEL_EX		= 3,
	API_CU_LAUNCH_KERNEL_EX_PTSZ	= 4,
	API_CU_LAUNCH_COOPERATIVE	= 5,
	API_CU_LAUNCH_COOPERATIVE_PTSZ	= 6,
	API_CU_GRAPH_LAUNCH		= 7,
	API_CU_GRAPH_LAUNCH_PTSZ	= 8,
	API_CUDA_LAUNCH_KERNEL		= 9,	/* runtime layer, optional */
	API_CU_CTX_SYNCHRONIZE		= 10,
	API_CU_STREAM_SYNCHRONIZE	= 11,
	API_CUDA_DEVICE_SYNCHRONIZE	= 12,
};

enum {
	TRACE_COMM_LEN	= 16,
	IRQ_NAME_LEN	= 16,
	LIB_NAME_LEN	= 32,
	EV_FLAG_PREEMPT	= 1,	/* schedSwitch: prev was still runnable */
};

/* The `traced` map's values: traced, or traced and held at a new libcuda. */
enum {
	TRACE_FOLLOW	= 1,
	TRACE_HOLD	= 2,
};

struct gpu_trace_event {
	__u64 ts_ns;
	__u32 type;
	__u32 api;
	__u32 pid;
	__u32 tid;
	__u32 cpu;
	__u32 flags;
	char comm[TRACE_COMM_LEN];
	__u32 grid[3];
	__u32 block[3];
	__u32 shared_mem;
	__u32 irq;		/* hard IRQ number or softirq vector */
	__u64 stream;
	__u64 last_offcpu_ns;	/* schedSwitch: when next last left the CPU */
	__u64 last_oncpu_ns;	/* schedSwitch: when prev last got the CPU */
	__u32 prev_tid;
	__u32 next_tid;
	__s64 prev_state;
	__u64 duration_ns;	/* *Exit events */
	char irq_name[IRQ_NAME_LEN];
};

/*
 * A process mapped a libcuda file that has no probes yet (the `libs` ring).
 * dev is the kernel's dev_t of the file's filesystem (major << 20 | minor).
 */
struct gpu_lib_event {
	__u64 dev;
	__u64 ino;
	__u32 tgid;
	__u32 held;		/* stopped (SIGSTOP) until user space has probed it */
	char name[LIB_NAME_LEN];
};

#endif /* __SCX_GPU_TRACE_INTF_H */
