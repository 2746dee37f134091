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

/*
 * The bounds the scheduler is built around (see the design comment in
 * scx_gpu.bpf.c); the control plane refuses a configuration whose
 * normal/batch wait bound could reach the watchdog's timeout.
 */
enum {
	TIMEOUT_MS	= 20000,	/* ops.timeout_ms: the kernel's watchdog */
	FLOOR_PCT	= 10,	/* per tier, of all CPUs per period: floor service */
	MIN_SLICE_US	= 500,	/* shortest slice; floor service runs in these */
	DESIGN_RUNNABLE	= 1000,	/* runnable tasks per CPU the bound is checked at */
};

/*
 * Scheduling domains: a CPU's domain is its LLC (or its NUMA node where LLCs
 * outnumber MAX_DOMS); each tier has a queue per domain and one per CPU.
 */
enum {
	MAX_CPUS	= 1024,
	MAX_DOMS	= 64,
};

/*
 * GPU locality: a home is a set of CPUs local to the GPUs a process uses (or
 * --gpu-cpus); tasks of that process and of its cgroup prefer it.
 */
enum {
	MAX_HOMES	= 16,		/* distinct sets of GPU-local CPUs at a time */
	AWAY_HOME	= MAX_HOMES,	/* homes slot: the CPUs outside every home in use */
	NO_HOME		= 255,		/* a task's home when it has none */
	GPU_CPUS_HOME	= 0,		/* --gpu-cpus: the one home, of all gpu-tier work */
	MAX_GPU_PROCS	= 4096,		/* processes with a home */
	MAX_GPU_CGROUPS	= 1024,		/* cgroups with a home */
	CPU_WORDS	= MAX_CPUS / 64,
};

/* The argument of the gpu_set_home program: a home's CPUs, a bit each. */
struct home_cpus {
	__u32 home;			/* 0 .. MAX_HOMES - 1, or AWAY_HOME */
	__u32 pad;
	__u64 cpus[CPU_WORDS];
};

enum scx_gpu_smt {
	SMT_SHARED	= 0,	/* siblings run anything */
	SMT_EXCLUSIVE	= 1,	/* no batch beside a gpu thread on its core */
};

enum {
	WAIT_BUCKETS	= 32,	/* log2(ns) buckets: 1 ns .. ~4 s */
	COMM_LEN	= 16,
	EXIT_REASON_LEN	= 128,
	EXIT_MSG_LEN	= 1024,
	EXIT_DUMP_LEN	= 4096,	/* the head of the kernel's dump: ours comes first */
	LAUNCH_SITES	= 8,	/* the launch entry points probed (libcuda.py) */
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
	__u64 slice_kicks;		/* short slices the slice timer ended */
	__u64 site_hits[LAUNCH_SITES];	/* launch-probe hits by entry point (the cookie) */
	__u64 cpu_mismatches;		/* ops.stopping saw another task on its CPU's record */
	__u64 classifications;		/* tiers looked up in the maps (not the cached one) */
	__u64 budget_demotions;		/* tagged threads moved out of the gpu tier by a budget */
	__u64 rcu_readers;		/* preemptions inside an RCU read-side section */
};

/* Who sets the batch quota: `scx-gpu quota set N`, or the loader's loop. */
enum scx_gpu_quota_mode {
	QUOTA_FIXED	= 0,
	QUOTA_AUTO	= 1,
};

/*
 * Run-time tunables: one entry in the `tunables` array map. The control
 * plane writes it whole, the quota and its mode in one update.
 */
struct scx_gpu_tunables {
	__u32 batch_quota_pct;		/* share of all CPUs per period, 0-100 */
	__u32 comm_prefix_lens;		/* bit n: tier_comm_prefixes has n-char keys */
	__u64 batch_period_ns;
	__u64 floor_ns;			/* longest wait of a normal/batch task */
	__u64 gpu_ttl_ns;		/* a launch keeps its thread in the gpu tier this long */
	__u64 tier_gen;			/* bumped when membership or home maps or gpu_ttl_ns change */
	__u32 quota_mode;		/* enum scx_gpu_quota_mode; the control plane's */
	__u32 pad;
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
	char dump[EXIT_DUMP_LEN];
};

#endif /* __SCX_GPU_INTF_H */
