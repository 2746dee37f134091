/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Structures shared by the scx_gpu BPF scheduler and its control plane.
 * controlplane/intf.py mirrors them with ctypes; tests/controlplane checks
 * the mirror against the BTF of the compiled object.
 */
#ifndef __SCX_GPU_INTF_H
#define __SCX_GPU_INTF_H

enum scx_gpu_tier {
	TIER_GPU	= 0,
	TIER_NORMAL	= 1,
	TIER_BATCH	= 2,
	NR_TIERS	= 3,
	TIER_IDLE	= 3,	/* cpu_ctx only: nothing of ours running */
	TIER_UNSET	= 255,	/* membership maps only: no explicit tier */
};

enum scx_gpu_scope {
	SCOPE_THREAD	= 0,	/* tag the launching thread */
	SCOPE_PROCESS	= 1,	/* tag every thread of the launching process */
};

enum {
	WAIT_BUCKETS	= 32,	/* log2(ns) buckets: 1 ns .. ~4 s */
	COMM_LEN	= 16,
	EXIT_REASON_LEN	= 128,
	EXIT_MSG_LEN	= 1024,
};

struct tier_stats {
	__u64 runtime_ns;
	__u64 runs;
	__u64 preemptions;		/* CPUs preempted for this tier */
	__u64 wait_hist[WAIT_BUCKETS];	/* enqueue to running, log2(ns) */
};

/* Per-CPU counters; the control plane sums them. */
struct scx_gpu_stats {
	struct tier_stats tier[NR_TIERS];
	__u64 batch_throttled_ns;	/* CPU idle while batch waited on the quota */
	__u64 floor_dispatches;		/* starving normal/batch tasks served first */
	__u64 detector_hits;		/* launch-probe hits */
};

/* Run-time tunables: one entry in the `tunables` array map. */
struct scx_gpu_tunables {
	__u32 batch_quota_pct;		/* share of all CPUs per period, 0-100 */
	__u32 comm_prefix_lens;		/* bit n: tier_comm_prefixes has n-char keys */
	__u64 batch_period_ns;
	__u64 floor_ns;			/* longest wait of a normal/batch task */
	__u64 gpu_ttl_ns;		/* a launch keeps its thread in the gpu tier this long */
};

/* Key of tier_comm_prefixes: a task name pattern "prefix*". */
struct comm_prefix {
	__u32 len;
	char prefix[COMM_LEN];
};

/* The kernel's scx_exit_info, copied when the scheduler is ejected. */
struct scx_gpu_exit {
	__s32 kind;			/* enum scx_exit_kind; 0 while running */
	__s32 pad;
	__s64 exit_code;
	char reason[EXIT_REASON_LEN];
	char msg[EXIT_MSG_LEN];
};

#endif /* __SCX_GPU_INTF_H */
