/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_gpu: a sched_ext scheduler that runs GPU-launching threads first.
 *
 * Three tiers:
 *  - gpu: threads that called a CUDA launch entry point within gpu_ttl (the
 *    detect_launch uprobe tags them; the control plane stretches gpu_ttl up
 *    to 3 times while its probes are slow to attach), or pinned there by
 *    the operator. FIFO by the time it became runnable.
 *    A waking gpu task takes an idle CPU, else preempts a CPU running a lower
 *    tier at once.
 *  - normal: everything else, in deadline order: deadline = the time it
 *    became runnable + min(slice * 100 / weight, floor_ns). Whoever became
 *    runnable before a task's deadline runs before it, so the head is never
 *    more than floor_ns younger than the longest waiter.
 *  - batch: runs only on CPU time the others leave idle, within a quota of all
 *    CPUs per period, FIFO by the time it became runnable.
 * Each tier has a queue per scheduling domain (an LLC, or a NUMA node where
 * LLCs outnumber MAX_DOMS; the control plane writes each CPU's domain before
 * load) and one per CPU for tasks that may run on that CPU only: a task
 * waits in its CPU's queue when pinned, else in its CPU's domain's. A CPU
 * takes, tier by tier: the earlier head of its own queue and its domain's,
 * else the first task another domain's queue of that tier gives up
 * (domains in turn from its own). Tier order is global; only the order
 * within a tier prefers the local domain. A dispatch locks its own domain's
 * queues, another domain's only when its own has nothing of that tier;
 * floor checks and queue lengths are lockless reads, O(domains). Preemption
 * targets come from per-domain masks of the CPUs running normal and batch,
 * kept in ops.running/ops.stopping: O(domains), no loop over CPUs or tasks.
 * A CPU keeps running its task when its slice ends and nothing of the same
 * or a higher tier waits (batch over its quota yields).
 *
 * Guarantees (defaults: slice 5 ms, batch slice 2 ms, period P = 100 ms,
 * floor_ns F = 1 s, FLOOR_PCT f = 10, MIN_SLICE_US s = 0.5 ms, C CPUs):
 *  - floor service: a normal or batch task at the head of its queue that has
 *    waited F runs next, ahead of the gpu tier, in slices of s, within f% of
 *    all CPUs per period per tier (batch's also within its quota, which is
 *    at least f), the tier whose head has waited longer first. Only a
 *    waking gpu thread preempts it, so floor service never delays one; a
 *    task whose floor slice it cut short keeps its place (its wait goes
 *    on). A gpu thread whose slice ended waits at most s,
 *    and floor slices alternate with queued gpu work. The gpu tier keeps at
 *    least 100 - 2f = 80% of the CPUs when all tiers are saturated.
 *  - RCU readers: a normal or batch task preempted inside an RCU read-side
 *    critical section holds up every grace period, so it counts as having
 *    waited F, queued as of then whatever its weight: floor service runs it
 *    after the tasks of its tier that have waited F already (the N term of
 *    the bound below, none on a node that keeps up), slice after slice
 *    until it leaves the section. A slice per F would let a section of 21
 *    slices reach the kernel's RCU stall timeout, whose handler ejects the
 *    scheduler. Any user can make long sections (MADV_COLLAPSE); they run
 *    within the floor share like any floor service.
 *  - a kthread (kworker, ksoftirqd, rcu_preempt, jbd2) of the normal tier
 *    waits in the local queue of the CPU it is queued on, which the CPU
 *    takes before any tier when its running task's slice ends, in slices of
 *    s, until it has run KTHREAD_BURST_NS (5 ms) since it woke; after that it
 *    counts as having waited F (like an RCU reader, above) while its runs as
 *    due took less than f% of F (100 ms) in its current window of F, and
 *    beyond that it queues in the normal tier like any task. So a waking
 *    kthread waits at most the running slice (a 5 ms slice ends at the next
 *    tick: 8 ms at HZ=250), plus s per kthread queued ahead of it and the
 *    slices of gpu threads that preempt the CPU meanwhile, however busy the
 *    gpu tier keeps the CPU; the kernel work that waits for kthreads (RCU
 *    grace periods, work flushed on every CPU, journal commits) waits as
 *    long. A higher class taking the CPU meanwhile (a stop or RT task)
 *    sends it to floor service as having waited F, for one run that counts
 *    as its burst's. A kthread takes at most 5 ms per wake-up ahead of the
 *    tiers, that run as due, and beyond those at most 2 x (f% of F + one
 *    run) in any F ahead of the normal tier, however often it sleeps:
 *    218 ms for a 5 ms slice, which ends at the first tick after it (9 ms
 *    at HZ=250), plus any floor slices of s that gpu threads cut short
 *    after it. Of the gpu tier's time it takes only floor service, within
 *    the floor share.
 *  - higher classes: a stop or RT task that takes a CPU has everything in
 *    its local queue, the task it preempted included, queued again through
 *    the tiers (ops.cpu_release), so however often they take a CPU nothing
 *    waits there behind them and the tiers keep their order.
 *  - across domains: a gpu task waiting in any domain runs before any CPU
 *    it may use starts a normal or batch slice (dispatch takes it first,
 *    from any domain); a waking one claims batch (then normal) on its
 *    previous CPU, in its domain, then in the others, and preempts it at
 *    once. So its wait is at most one batch slice (2 ms), whatever the
 *    domains, while any CPU it may use runs batch. Floor service serves the
 *    longest waiter of all domains (and of the CPU's own queue).
 *  - GPU locality: the control plane gives each GPU process a home, the
 *    CPUs local to the GPUs it has a context on (--gpu-cpus: those CPUs,
 *    for all gpu work), and the rest of its cgroup the same home; a task's
 *    home is looked up when its tier is. A waking gpu or normal task with a
 *    home (its affinity allowing all of it) goes to a CPU of its home
 *    whenever one is idle or runs a tier it may preempt (gpu: batch, then
 *    normal; normal: batch), barring a race with another waker for the
 *    same CPU: a gpu task runs there at once, a normal task in its queue's
 *    deadline order. Only when every CPU of its home runs its own tier or
 *    a higher one does it go elsewhere, as a task without a home would. A
 *    waking batch task takes an idle CPU outside every home in use before
 *    any other (and starts there at once when nothing waits in any queue
 *    and the quota allows). These are choices at wakeup: a task that waits
 *    in a queue runs on whichever CPU takes it first, and the cross-domain
 *    guarantee above holds as without homes.
 *  - --gpu-smt exclusive: no CPU starts a batch slice (floor service
 *    excepted) while its SMT sibling runs a gpu task, and a gpu task
 *    starting preempts batch on its sibling at once.
 *  - the normal slice shrinks to slice * C / queued (not below s) so a round
 *    over N runnable normal tasks takes N * s / C; a slice timer enforces
 *    slices shorter than the kernel's tick.
 *  - a runnable normal or batch task (N runnable in its tier) waits at most
 *    2F + P + N * s / (C * f / 100): 7.1 s at N = DESIGN_RUNNABLE (1000) per
 *    CPU, against ops.timeout_ms = TIMEOUT_MS (20 s); the control plane
 *    refuses settings whose bound exceeds half of it. Waits count from when
 *    a task became runnable (ops.runnable, or the end of its last run).
 *  - while batch starves, floor service gives each of its N runnable tasks a
 *    slice of s per F: N * s / F of CPU time, up to f% of all CPUs per
 *    period; batch never gets more than its quota (the control plane
 *    refuses a quota below f).
 *  - a launch tag is a claim any local user can make, so detected gpu
 *    threads are metered: all the CPU time of a process's tagged threads,
 *    in any tier, against gpu_proc_budget_pct % of all CPUs (90), and of
 *    all of them against gpu_budget_pct % (95), as token buckets whose
 *    bank lets a process hold every CPU for BANK_RUNS (2) runs at a time
 *    (100%: not metered). A process over either runs in the normal tier,
 *    in slices of s, until back within it, and its debt never exceeds a
 *    period: over-use costs the gpu tier at most P after it stops. The
 *    control plane and operator-pinned members are not metered. Its
 *    threads wait in a budget queue (their CPU's when pinned to one),
 *    ordered by when they are within budget again: from then on they are
 *    gpu tasks (first come, first served with the gpu queue of the CPU's
 *    domain), before then they run only where no gpu or normal task waits.
 *    So an over-budget thread waits at most P + slice for its turn,
 *    however many normal tasks wait (in the normal queue it waited a round
 *    of all of them, and a launcher's tag expired meanwhile), plus a
 *    dispatch per BUDGET_TRIES due threads ahead of it (each leaves the
 *    queue), however many threads that its CPUs may not run wait too.
 */
#include "common.bpf.h"
#include "intf.h"
#include "compat.bpf.h"

char _license[] SEC("license") = "GPL";

#define DOMAIN_SHIFT	8	/* queue id = domain << DOMAIN_SHIFT | tier */
#define PCPU_DSQS	(1ULL << 24)	/* per-CPU queue id = PCPU_DSQS | cpu << DOMAIN_SHIFT | tier */
#define BUDGET_DSQ	(1ULL << 32)	/* tagged tasks over a gpu budget, unless pinned */
#define PCPU_BUDGET	NR_TIERS	/* pcpu_dsq(PCPU_BUDGET, cpu): those pinned to cpu */
#define BUDGET_TRIES	8		/* due heads a dispatch releases from a budget queue */
#define CLAIM_TRIES	2	/* picks per domain mask: a raced claim leaves its bit a moment */
#define SCHED_IDLE	5
#define PF_KTHREAD	0x00200000	/* include/linux/sched.h */
#define KTHREAD_BURST_NS (5 * NSEC_PER_MSEC)	/* a kthread's CPU time per wake-up ahead of the tiers */
#define NSEC_PER_USEC	1000ULL
#define NSEC_PER_MSEC	1000000ULL
#define MIN_SLICE_NS	(MIN_SLICE_US * NSEC_PER_USEC)
#define CLOCK_MONOTONIC	1
#define FOREVER		(~0ULL >> 1)	/* a tier that no clock expires */

/* Read-only options, set by the control plane before load. */
const volatile u64 slice_ns = 5 * NSEC_PER_MSEC;
const volatile u64 batch_slice_ns = 2 * NSEC_PER_MSEC;
const volatile u32 nr_cpus = 1;
const volatile bool fair_only;		/* policy "fair": no tiers at all */
const volatile bool gpu_preempts_normal = true;
const volatile bool sched_idle_is_batch;
const volatile u32 detect_scope = SCOPE_THREAD;
const volatile s32 control_tgid;	/* the control plane: every thread of it */
const volatile bool gpu_allow_set;	/* only gpu_allow_uids/_cgroups may be tagged */
const volatile u32 gpu_budget_pct = 100;	/* detected gpu threads, all together */
const volatile u32 gpu_proc_budget_pct = 100;	/* ... and one process's */
const volatile u32 nr_doms = 1;			/* scheduling domains (LLCs) */
const volatile u32 cpu_dom[MAX_CPUS];		/* each CPU's domain */
const volatile u32 smt_mode = SMT_SHARED;
const volatile u32 cpu_sibling[MAX_CPUS];	/* SMT_EXCLUSIVE: its sibling, itself if none */
const volatile bool gpu_cpus_set;		/* --gpu-cpus: gpu-tier tasks live in GPU_CPUS_HOME */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct scx_gpu_tunables);
} tunables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct scx_gpu_stats);
} stats SEC(".maps");

/* thread (or process) id -> time of its last launch */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, u64);
} gpu_tags SEC(".maps");

/*
 * The budgets of detected gpu threads as GCRA token buckets: when each bucket
 * is empty again (its theoretical arrival time), per process and for all.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, u64);
} proc_budgets SEC(".maps");

u64 tier_budget_tat;

/* Operator-pinned membership: pid/tgid, cgroup id (and its subtree), comm. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, u32);
} tier_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u64);
	__type(value, u32);
} tier_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, char[COMM_LEN]);
	__type(value, u32);
} tier_comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct comm_prefix);
	__type(value, u32);
} tier_comm_prefixes SEC(".maps");

/* --gpu-allow: who may be tagged by a launch (user ids; cgroups and their subtrees). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u32);
	__type(value, u32);
} gpu_allow_uids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u64);
	__type(value, u32);
} gpu_allow_cgroups SEC(".maps");

/* Tasks in each tier, as of their last classification. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_TIERS);
	__type(key, u32);
	__type(value, s64);
} tier_tasks SEC(".maps");

struct task_ctx {
	u64 runnable_at;	/* became runnable (or stopped running, still runnable) */
	u64 waited_from;	/* runnable_at of the wait that its current run ended */
	u64 run_at;
	u64 floor_at;		/* when the floor dispatched it: switching in counts too */
	u64 head_start;		/* runnable_at is this much earlier than the wait began */
	u64 gen;		/* tier_generation(t) when classified */
	u64 tier_until;		/* the tier holds until then (a launch tag's expiry) */
	u64 ttl;		/* gpu_ttl_ns read before it was classified */
	u64 comm[2];		/* the name it was classified under */
	u64 cgroup;		/* ... and the id of its cgroup (v2) */
	u32 policy;
	u32 tier;
	u32 home;		/* its home (homes), NO_HOME: none; classified with its tier */
	bool classified;
	bool metered;		/* holds a launch tag: its CPU time counts against budgets */
	bool floor_served;	/* dispatched by the floor: a short slice, its own budget */
	u64 kthread_woke_ns;	/* a kthread's CPU time when it last woke */
	u64 kthread_window_at;	/* when its window of floor_ns began (kthread_due()) */
	u64 kthread_due_ns;	/* its CPU time as due in that window */
	u64 kthread_due_from;	/* its CPU time when last made due; 0: not due */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

struct cpu_ctx {
	u32 tier;		/* tier of the task running, or TIER_IDLE */
	s32 pid;		/* the task running, 0 when none of ours */
	bool floor;		/* it runs floor service: only a waking gpu task preempts */
	u64 slice_end;		/* a slice shorter than the tick ends here; 0: none */
	u64 throttled_since;	/* went idle with batch held back by the quota */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct cpu_ctx);
} cpu_ctxs SEC(".maps");

/*
 * Per domain: the CPUs running a normal and a batch task, the candidates a
 * waking task may preempt. A hint, kept in ops.running/ops.stopping: the
 * claim compares and swaps cpu_ctx.tier, which is the truth.
 */
struct dom_masks {
	struct bpf_cpumask __kptr *normal;
	struct bpf_cpumask __kptr *batch;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_DOMS);
	__type(key, u32);
	__type(value, struct dom_masks);
} dom_masks SEC(".maps");

/*
 * GPU locality: each home's CPUs (the control plane writes them through
 * gpu_set_home), and which processes and cgroups live in which home.
 */
struct home {
	struct bpf_cpumask __kptr *cpus;
	u64 doms;		/* the domains its CPUs are in; 0: an unused slot */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_HOMES + 1);	/* and AWAY_HOME */
	__type(key, u32);
	__type(value, struct home);
} homes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_GPU_PROCS);
	__type(key, u32);	/* tgid */
	__type(value, u32);	/* home */
} gpu_proc_homes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_GPU_CGROUPS);
	__type(key, u64);	/* cgroup id: that cgroup only, not its subtree */
	__type(value, u32);	/* home */
} gpu_cgroup_homes SEC(".maps");

struct timer_slot {
	struct bpf_timer timer;
};

enum { PERIOD_TIMER, SLICE_TIMER, NR_TIMERS };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_TIMERS);
	__type(key, u32);
	__type(value, struct timer_slot);
} timers SEC(".maps");

u64 batch_used_ns;		/* batch CPU time in the current quota period */
u64 floor_used_ns[NR_TIERS];	/* floor service per tier in the current period */
u32 slice_timer_armed;
u64 new_tags;			/* launch tags that were not live before */
struct scx_gpu_exit exit_info;

static const u32 zero;

static struct scx_gpu_tunables *tun(void)
{
	return bpf_map_lookup_elem(&tunables, &zero);
}

static struct scx_gpu_stats *stat(void)
{
	return bpf_map_lookup_elem(&stats, &zero);
}

static struct cpu_ctx *cpu_ctx_of(s32 cpu)
{
	return bpf_map_lookup_percpu_elem(&cpu_ctxs, &zero, cpu);
}

static struct task_ctx *task_ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, NULL, 0);
}

/* The queue of @tier in scheduling domain @dom. */
static u64 dsq_of(u32 tier, u32 dom)
{
	return ((u64)dom << DOMAIN_SHIFT) | tier;
}

/* The queue of @tier for tasks that may run on @cpu only. */
static u64 pcpu_dsq(u32 tier, s32 cpu)
{
	return PCPU_DSQS | ((u64)cpu << DOMAIN_SHIFT) | tier;
}

static u32 dom_of(s32 cpu)
{
	u32 dom;

	if (cpu < 0 || cpu >= MAX_CPUS)
		return 0;
	/* The mask proves the index in bounds to the verifier. */
	dom = cpu_dom[cpu & (MAX_CPUS - 1)];
	return dom < nr_doms && dom < MAX_DOMS ? dom : 0;
}

/* The @i-th domain counting from @home: a CPU's own domain first, then the others. */
static u32 dom_from(u32 home, u32 i)
{
	u32 dom = home + i;

	return dom >= nr_doms ? dom - nr_doms : dom;
}

/*
 * The CPU @p may run on when its affinity allows one only; -1 otherwise. (A
 * task with migration disabled stays in its domain's queue: only its own
 * CPU takes it from there, and the BPF program itself runs with migration
 * disabled, so the flag is ambiguous for the current task.)
 */
static s32 pinned_cpu(struct task_struct *p)
{
	return p->nr_cpus_allowed == 1 ? (s32)bpf_cpumask_first(p->cpus_ptr) : -1;
}

/* The queue of @tier that @p waits in: its CPU's when pinned, else its CPU's domain's. */
static u64 queue_of(struct task_struct *p, u32 tier)
{
	s32 cpu = pinned_cpu(p);

	if (cpu >= 0 && cpu < MAX_CPUS)
		return pcpu_dsq(tier, cpu);
	cpu = scx_bpf_task_cpu(p);
	/* Its affinity changed while it was queued: a domain where it may run. */
	if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
		cpu = bpf_cpumask_any_distribute(p->cpus_ptr);
	return dsq_of(tier, dom_of(cpu));
}

/* Tasks in a queue; a negative count is the kernel saying the queue is gone. */
static u32 queued(u64 dsq_id)
{
	s32 n = scx_bpf_dsq_nr_queued(dsq_id);

	if (n < 0) {
		scx_gpu_error("queue %llu: nr_queued %d", dsq_id, n);
		return 0;
	}
	return n;
}

static u32 log2_bucket(u64 v)
{
	u32 b = 0;

	bpf_for(b, 0, WAIT_BUCKETS - 1) {
		if (v < (2ULL << b))
			break;
	}
	return b;
}

/*
 * @p's value in a map keyed by cgroup id: the deepest listed ancestor's, so
 * a subtree inherits. The cgroup's ancestors array holds every level, from
 * the root (0) to itself. Probe reads only: this runs in uprobes too.
 */
static u32 *cgroup_lookup(struct task_struct *p, void *map)
{
	u64 css = (u64)BPF_CORE_READ(p, cgroups), cgrp, ancestors, id;
	struct cgroup *anc;
	s32 level, i;
	u32 *value;

	/*
	 * Addresses as plain numbers read with probe reads: given a typed
	 * cgroup pointer, the compiler may fold the offset into it, and the
	 * verifier refuses a variable offset on a trusted pointer.
	 */
	if (bpf_probe_read_kernel(&cgrp, sizeof(cgrp),
				  (void *)(css + bpf_core_field_offset(struct css_set, dfl_cgrp))) ||
	    bpf_probe_read_kernel(&level, sizeof(level),
				  (void *)(cgrp + bpf_core_field_offset(struct cgroup, level))))
		return NULL;
	ancestors = cgrp + bpf_core_field_offset(struct cgroup, ancestors);
	bpf_for(i, 0, level + 1) {
		if (bpf_probe_read_kernel(&anc, sizeof(anc),
					  (void *)(ancestors + (u64)(level - i) * sizeof(anc))) || !anc)
			break;
		id = BPF_CORE_READ(anc, kn, id);
		value = bpf_map_lookup_elem(map, &id);
		if (value)
			return value;
	}
	return NULL;
}

static u32 cgroup_tier(struct task_struct *p)
{
	u32 *tier = cgroup_lookup(p, &tier_cgroups);

	return tier ? *tier : TIER_UNSET;
}

/* "prefix*" patterns: one lookup per prefix length in use. */
static u32 comm_prefix_tier(const char *comm)
{
	struct scx_gpu_tunables *t = tun();
	struct comm_prefix key;
	u32 len, i, *tier;

	if (!t || !t->comm_prefix_lens)
		return TIER_UNSET;
	bpf_for(len, 1, COMM_LEN) {
		if (!(t->comm_prefix_lens & (1U << len)))
			continue;
		__builtin_memset(&key, 0, sizeof(key));
		key.len = len;
		bpf_for(i, 0, len)
			key.prefix[i & (COMM_LEN - 1)] = comm[i & (COMM_LEN - 1)];
		tier = bpf_map_lookup_elem(&tier_comm_prefixes, &key);
		if (tier)
			return *tier;
	}
	return TIER_UNSET;
}

static u32 pinned_tier(struct task_struct *p)
{
	char comm[COMM_LEN];
	u32 pid = p->pid, tgid = p->tgid, tier_by_prefix;
	u32 *tier;

	tier = bpf_map_lookup_elem(&tier_pids, &pid);
	if (!tier)
		tier = bpf_map_lookup_elem(&tier_pids, &tgid);
	if (tier)
		return *tier;
	__builtin_memcpy(comm, p->comm, sizeof(comm));
	tier = bpf_map_lookup_elem(&tier_comms, comm);
	if (tier)
		return *tier;
	tier_by_prefix = comm_prefix_tier(comm);
	if (tier_by_prefix < NR_TIERS)
		return tier_by_prefix;
	return cgroup_tier(p);
}

static void count_tier(u32 tier, s64 delta)
{
	s64 *n = bpf_map_lookup_elem(&tier_tasks, &tier);

	if (n)
		__sync_fetch_and_add(n, delta);
}

/* Record @p's tier, keeping the per-tier task counts. */
static void set_task_tier(struct task_ctx *tctx, u32 tier)
{
	if (tctx->tier == tier)
		return;
	count_tier(tctx->tier, -1);
	count_tier(tier, 1);
	tctx->tier = tier;
}

/* When @p's launch tag expires; 0 if it has none that is live. */
static u64 gpu_tag_expiry(struct task_struct *p, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	u32 key = detect_scope == SCOPE_PROCESS ? p->tgid : p->pid;
	u64 *seen = bpf_map_lookup_elem(&gpu_tags, &key);

	/* Signed: another CPU's probe may have stored a later time than @now. */
	return t && seen && (s64)(now - *seen) < (s64)t->gpu_ttl_ns ? *seen + t->gpu_ttl_ns : 0;
}

/*
 * A bucket's bank: the debt it may run up within budget, in its own time.
 * Running on every CPU at pct % adds (100 - pct) / pct of debt per ns, so
 * a metered process may hold them all for BANK_RUNS runs at a time. A
 * launcher whose threads start a token together on every CPU runs about
 * one slice there, often a little more (a full slice ends at the next
 * tick, 8 ms at HZ=250): with a bank of one run the synthetic launcher
 * (70% busy on 2 vCPUs) was demoted 300 times in 13 s, with two 160-180.
 * A bank of one slice let a spinner hold 2 vCPUs for 45 ms at 90%.
 */
#define BANK_RUNS	2
static u64 budget_bank_ns(u32 pct)
{
	return pct ? BANK_RUNS * slice_ns * (100 - pct) / pct : 0;
}

/*
 * Is the bucket at @pct that empties at @tat over budget at @now (beyond its
 * bank)? Never at 100%: all CPUs all the time is within it, whatever the
 * order in which their slices are charged.
 */
static bool bucket_over(u64 tat, u32 pct, u64 now)
{
	return pct < 100 && (s64)(tat - now) > (s64)budget_bank_ns(pct);
}

/* When @p's process and the gpu tier are both within budget again; 0: now. */
static u64 over_budget(struct task_struct *p, u64 now)
{
	u32 tgid = p->tgid;
	u64 *tat = bpf_map_lookup_elem(&proc_budgets, &tgid), until = 0, tier_due;

	if (tat && bucket_over(*tat, gpu_proc_budget_pct, now))
		until = *tat - budget_bank_ns(gpu_proc_budget_pct);
	tier_due = tier_budget_tat - budget_bank_ns(gpu_budget_pct);
	if (bucket_over(tier_budget_tat, gpu_budget_pct, now) && tier_due > until)
		until = tier_due;
	return until;
}

/*
 * Take @used ns of CPU, run until @now, from a bucket filled at @pct % of all
 * CPUs. A bucket that emptied before the run began starts from its start:
 * no credit beyond its bank, and no debt for time not yet run (from @now, a
 * process whose threads end their slices together looked a slice in debt).
 */
static void bucket_charge(u64 *tat, u64 used, u32 pct, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	u64 old = *tat, start = now - used, cap;

	if ((s64)(old - start) < 0)
		__sync_val_compare_and_swap(tat, old, start);
	__sync_fetch_and_add(tat, used * 100 / ((u64)pct * nr_cpus));
	/* Debt of at most a period: over-use ends within one after it stops. */
	cap = now + budget_bank_ns(pct) + (t ? t->batch_period_ns : 0);
	old = *tat;
	if ((s64)(old - cap) > 0)
		__sync_val_compare_and_swap(tat, old, cap);
}

/* Charge @used ns of a tagged thread's CPU time; is its process over budget now? */
static bool charge_budget(struct task_struct *p, u64 used, u64 now)
{
	u32 tgid = p->tgid;
	u64 *tat;

	tat = bpf_map_lookup_elem(&proc_budgets, &tgid);
	if (!tat) {
		bpf_map_update_elem(&proc_budgets, &tgid, &(u64){0}, BPF_NOEXIST);
		tat = bpf_map_lookup_elem(&proc_budgets, &tgid);
	}
	if (tat)
		bucket_charge(tat, used, gpu_proc_budget_pct, now);
	bucket_charge(&tier_budget_tat, used, gpu_budget_pct, now);
	return over_budget(p, now) != 0;
}

/*
 * @p's tier from the membership maps and its launch tag, until when it holds,
 * and whether its CPU time is metered (a launch tag, which anyone can get).
 */
static u32 classify(struct task_struct *p, u64 now, u64 *until, bool *metered)
{
	u64 over;
	u32 tier;

	*until = FOREVER;
	*metered = false;
	if (fair_only)
		return TIER_NORMAL;
	/*
	 * It renews the launch tags: behind a storm of normal tasks they would
	 * expire. All its threads: one starved while holding Python's GIL
	 * stops the detector too.
	 */
	if (p->tgid == control_tgid)
		return TIER_GPU;
	tier = pinned_tier(p);
	if (tier < NR_TIERS)
		return tier;
	*until = gpu_tag_expiry(p, now);
	if (*until) {
		*metered = true;
		over = over_budget(p, now);
		if (!over)
			return TIER_GPU;
		if (over < *until)
			*until = over;
	} else {
		*until = FOREVER;
	}
	if (sched_idle_is_batch && p->policy == SCHED_IDLE)
		return TIER_BATCH;
	return TIER_NORMAL;
}

/*
 * @p's home: its process's, else its cgroup's (@cgroup); a gpu-tier task's
 * under --gpu-cpus. Batch and the control plane have none.
 */
static u32 task_home(struct task_struct *p, u32 tier, u64 cgroup)
{
	u32 tgid = p->tgid, *home;

	if (tier == TIER_BATCH || p->tgid == control_tgid)
		return NO_HOME;
	home = bpf_map_lookup_elem(&gpu_proc_homes, &tgid);
	if (!home)
		home = bpf_map_lookup_elem(&gpu_cgroup_homes, &cgroup);
	if (home)
		return *home;
	return tier == TIER_GPU && gpu_cpus_set ? GPU_CPUS_HOME : NO_HOME;
}

/* What invalidates every cached tier: the control plane's and new launch tags. */
static u64 tier_generation(struct scx_gpu_tunables *t)
{
	return (t ? t->tier_gen : 0) + new_tags;
}

/*
 * @p's tier and home, classified again only when something they depend on
 * changed: the generation (membership and home maps, gpu_ttl_ns, a new
 * launch tag), its launch tag's expiry, its name (exec), its policy, or its
 * cgroup (ops.cgroup_move).
 */
__scx_gpu_global u32 task_tier(struct task_struct *p __arg_trusted,
			       struct task_ctx *tctx __arg_nonnull, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	u64 gen = tier_generation(t), ttl = t ? t->gpu_ttl_ns : 0, until, comm[2];
	u64 cgroup = BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
	struct scx_gpu_stats *s;
	bool metered;
	u32 tier;

	/*
	 * ops.cgroup_move misses moves that the cpu controller does not see. The
	 * ttl too: the control plane writes it and the generation in one update,
	 * which this CPU may see half done.
	 */
	__builtin_memcpy(comm, p->comm, sizeof(comm));
	if (tctx->classified && tctx->gen == gen && (s64)(now - tctx->tier_until) < 0 &&
	    tctx->comm[0] == comm[0] && tctx->comm[1] == comm[1] && tctx->policy == p->policy &&
	    tctx->cgroup == cgroup && tctx->ttl == ttl)
		return tctx->tier;
	tier = classify(p, now, &until, &metered);
	set_task_tier(tctx, tier);
	tctx->home = task_home(p, tier, cgroup);
	tctx->metered = metered;
	tctx->gen = gen;
	tctx->ttl = ttl;
	tctx->tier_until = until;
	tctx->comm[0] = comm[0];
	tctx->comm[1] = comm[1];
	tctx->policy = p->policy;
	tctx->cgroup = cgroup;
	tctx->classified = true;
	s = stat();
	if (s)
		s->classifications++;
	return tier;
}

static bool batch_budget_left(void)
{
	struct scx_gpu_tunables *t = tun();

	if (!t)
		return false;
	return batch_used_ns * 100 < (u64)t->batch_quota_pct * t->batch_period_ns * nr_cpus;
}

/* Floor service left this period for @tier: FLOOR_PCT of all CPUs. */
static bool floor_budget_left(u32 tier)
{
	struct scx_gpu_tunables *t = tun();

	if (!t || tier >= NR_TIERS)
		return false;
	return floor_used_ns[tier] * 100 < (u64)FLOOR_PCT * t->batch_period_ns * nr_cpus;
}

/*
 * Claim @cpu, running a @victim task, for @tier: a compare-and-swap, so two
 * wakers never take the same victim; the claim holds until the CPU runs its
 * next task (ops.running records that task's tier). Floor service lasts one
 * MIN_SLICE_NS: only a waking gpu task, which the guarantee protects, cuts it
 * short.
 */
static bool try_claim(struct task_struct *p, s32 cpu, u32 victim, u32 tier, bool waking_gpu)
{
	struct cpu_ctx *c = cpu_ctx_of(cpu);

	return c && c->tier == victim && (!c->floor || waking_gpu) &&
	       bpf_cpumask_test_cpu(cpu, p->cpus_ptr) &&
	       __sync_val_compare_and_swap(&c->tier, victim, tier) == victim;
}

/* Domain @dom's CPUs running a @victim task (batch or normal); RCU: the caller's. */
static __always_inline struct bpf_cpumask *victims_in(u32 dom, u32 victim)
{
	struct dom_masks *m = bpf_map_lookup_elem(&dom_masks, &dom);
	struct bpf_cpumask *mask, *other;

	if (!m)
		return NULL;
	/* Two loads: the verifier refuses a variable offset into a map value with kptrs. */
	mask = m->batch;
	other = m->normal;
	barrier_var(mask);
	barrier_var(other);
	return victim == TIER_BATCH ? mask : other;
}

/*
 * A CPU of domain @dom and of @within running a @victim task that @p may
 * take, claimed; -1: none. RCU: the caller's.
 */
static __always_inline s32 claim_within(struct task_struct *p, u32 dom,
					const struct cpumask *within, u32 victim,
					u32 tier, bool waking_gpu)
{
	struct bpf_cpumask *mask = victims_in(dom, victim);
	s32 cpu;
	u32 i;

	bpf_for(i, 0, CLAIM_TRIES) {
		if (!mask)
			break;
		cpu = bpf_cpumask_any_and_distribute((const struct cpumask *)mask, within);
		if (cpu >= scx_bpf_nr_cpu_ids())
			break;
		if (try_claim(p, cpu, victim, tier, waking_gpu))
			return cpu;
	}
	return -1;
}

/* A CPU of domain @dom running a @victim task that @p may take, claimed; -1: none. */
static s32 claim_in(struct task_struct *p, u32 dom, u32 victim, u32 tier, bool waking_gpu)
{
	s32 cpu;

	bpf_rcu_read_lock();
	cpu = claim_within(p, dom, p->cpus_ptr, victim, tier, waking_gpu);
	bpf_rcu_read_unlock();
	return cpu;
}

/* The lowest tier a task of @tier may preempt. */
static u32 lowest_victim(u32 tier)
{
	return tier == TIER_GPU && gpu_preempts_normal ? TIER_NORMAL : TIER_BATCH;
}

/*
 * The CPUs of home @home when @p may run on all of them, else NULL (its
 * affinity decides alone); RCU: the caller's.
 */
static __always_inline struct bpf_cpumask *home_cpus(struct task_struct *p, u32 home, u64 *doms)
{
	struct home *h;
	struct bpf_cpumask *mask;

	if (home > AWAY_HOME)
		return NULL;
	h = bpf_map_lookup_elem(&homes, &home);
	if (!h || !h->doms)
		return NULL;
	mask = h->cpus;
	if (!mask || (home != AWAY_HOME &&
		      !bpf_cpumask_subset((const struct cpumask *)mask, p->cpus_ptr)))
		return NULL;
	*doms = h->doms;
	return mask;
}

/* An idle CPU of @idle and @mask that @p may run on, taken; -1: none. */
static s32 take_idle_from(struct task_struct *p, const struct cpumask *idle,
			  const struct cpumask *mask)
{
	s32 cpu;
	u32 i;

	bpf_for(i, 0, CLAIM_TRIES) {
		cpu = bpf_cpumask_any_and_distribute(idle, mask);
		if (cpu >= scx_bpf_nr_cpu_ids())
			break;
		if (bpf_cpumask_test_cpu(cpu, p->cpus_ptr) && scx_bpf_test_and_clear_cpu_idle(cpu))
			return cpu;
	}
	return -1;
}

/*
 * An idle CPU of home @home (or AWAY_HOME) for @p, taken: @prev, then one
 * of a wholly idle core, then any; -1: none.
 */
static s32 take_idle_home(struct task_struct *p, u32 home, s32 prev)
{
	const struct cpumask *idle;
	struct bpf_cpumask *mask;
	s32 cpu = -1;
	u64 doms;

	bpf_rcu_read_lock();
	mask = home_cpus(p, home, &doms);
	if (!mask)
		goto out;
	if (bpf_cpumask_test_cpu(prev, (const struct cpumask *)mask) &&
	    bpf_cpumask_test_cpu(prev, p->cpus_ptr) && scx_bpf_test_and_clear_cpu_idle(prev)) {
		cpu = prev;
		goto out;
	}
	idle = scx_bpf_get_idle_smtmask();
	cpu = take_idle_from(p, idle, (const struct cpumask *)mask);
	scx_bpf_put_idle_cpumask(idle);
	if (cpu >= 0)
		goto out;
	idle = scx_bpf_get_idle_cpumask();
	cpu = take_idle_from(p, idle, (const struct cpumask *)mask);
	scx_bpf_put_idle_cpumask(idle);
out:
	bpf_rcu_read_unlock();
	return cpu;
}

/*
 * A CPU of @p's home running a tier below @tier that it may preempt:
 * claimed when @claim (else only found, a hint), batch first, then normal;
 * for each, @p's previous CPU, then the home's domains. -1: none.
 */
static s32 home_victim(struct task_struct *p, u32 home, u32 tier, u64 enq_flags, bool claim)
{
	bool waking_gpu = tier == TIER_GPU && (enq_flags & SCX_ENQ_WAKEUP);
	s32 prev = scx_bpf_task_cpu(p), cpu = -1;
	struct bpf_cpumask *mask, *victims;
	struct cpu_ctx *c;
	u32 victim, dom;
	u64 doms = 0;

	bpf_rcu_read_lock();
	mask = home_cpus(p, home, &doms);
	for (victim = TIER_BATCH; mask && victim >= lowest_victim(tier) && victim > tier; victim--) {
		c = cpu_ctx_of(prev);
		if (bpf_cpumask_test_cpu(prev, (const struct cpumask *)mask) && c &&
		    (claim ? try_claim(p, prev, victim, tier, waking_gpu) : c->tier == victim)) {
			cpu = prev;
			break;
		}
		bpf_for(dom, 0, nr_doms) {
			if (dom >= MAX_DOMS || !(doms & (1ULL << dom)))
				continue;
			if (claim) {
				cpu = claim_within(p, dom, (const struct cpumask *)mask, victim, tier,
						   waking_gpu);
			} else {
				victims = victims_in(dom, victim);
				cpu = victims ? bpf_cpumask_any_and_distribute(
						(const struct cpumask *)victims,
						(const struct cpumask *)mask) : -1;
				if (cpu >= scx_bpf_nr_cpu_ids())
					cpu = -1;
			}
			if (cpu >= 0)
				break;
		}
		if (cpu >= 0)
			break;
	}
	bpf_rcu_read_unlock();
	return cpu;
}

/*
 * A CPU running a task of a lower tier than @tier that @p may run on,
 * claimed: batch first, then normal when allowed; for each, @p's previous
 * CPU (its cache), then its domain, then the other domains, from the
 * domains' masks: O(domains), not O(CPUs).
 */
static s32 claim_anywhere(struct task_struct *p, u32 tier, u64 enq_flags)
{
	bool waking_gpu = tier == TIER_GPU && (enq_flags & SCX_ENQ_WAKEUP);
	s32 prev = scx_bpf_task_cpu(p), cpu;
	u32 home = dom_of(prev), victim, i;

	for (victim = TIER_BATCH; victim >= lowest_victim(tier) && victim > tier; victim--) {
		if (try_claim(p, prev, victim, tier, waking_gpu))
			return prev;
		bpf_for(i, 0, nr_doms) {
			cpu = claim_in(p, dom_from(home, i), victim, tier, waking_gpu);
			if (cpu >= 0)
				return cpu;
		}
	}
	return -1;
}

/* claim_anywhere, a CPU of @p's home first. */
static s32 claim_cpu(struct task_struct *p, u32 tier, u64 enq_flags)
{
	struct task_ctx *tctx = task_ctx_of(p);
	s32 cpu = tctx ? home_victim(p, tctx->home, tier, enq_flags, true) : -1;

	return cpu >= 0 ? cpu : claim_anywhere(p, tier, enq_flags);
}

static void count_preemption(u32 tier)
{
	struct scx_gpu_stats *s = stat();

	if (s && tier < NR_TIERS)
		s->tier[tier].preemptions++;
}

/*
 * The kernel waits for its threads: a grace period for rcu_preempt, work
 * flushed on every CPU (lru_add_drain_all(), schedule_on_each_cpu()) for a
 * kworker bound to each. Queued in the normal tier behind gpu threads that
 * keep the CPUs busy, each waited for floor service (F), and so did every
 * task waiting on them: a launch probe's detach took 1-2.4 s while the
 * launcher ran, its probes firing all along; a grace period 1-4 s. So a
 * kthread that has run less than KTHREAD_BURST_NS since it woke
 * (gpu_runnable() notes when, whichever callback queues the wake-up) goes
 * to its CPU's local queue, in slices of s. Without that bound two busy
 * kthreads on a CPU would take turns there for good, dispatch never running
 * (a user can keep ksoftirqd and a kworker busy). After it, the kthread
 * counts as having waited F (kthread_due(), wait_start()): as a fresh wait,
 * a grace period whose kthread ran past the burst (6-45 ms at 8 emulated
 * vCPUs beside RT tasks) waited F behind gpu threads. Due, it also runs
 * before every normal task that has waited less than F, whether or not the
 * gpu tier holds the CPUs: its share of F bounds that for a kthread that
 * works on (kswapd, a crypto worker), however often it sleeps.
 */
static bool normal_kthread(struct task_struct *p, u32 tier)
{
	return (p->flags & PF_KTHREAD) && tier == TIER_NORMAL && !fair_only;
}

static bool kthread_burst(struct task_struct *p, struct task_ctx *tctx, u32 tier)
{
	return tctx && normal_kthread(p, tier) &&
	       p->se.sum_exec_runtime - tctx->kthread_woke_ns < KTHREAD_BURST_NS;
}

/* Charge the run @p had as due, if it was due, to its window (at its stop or wake-up). */
static void kthread_charge(struct task_struct *p, struct task_ctx *tctx)
{
	if (tctx->kthread_due_from)
		tctx->kthread_due_ns += p->se.sum_exec_runtime - tctx->kthread_due_from;
	tctx->kthread_due_from = 0;
}

/*
 * Make normal-tier kthread @p, past its burst, due for floor service for its
 * next run? While its runs as due took less than FLOOR_PCT % of floor_ns in
 * its current window of floor_ns (restarted here once over), whatever its
 * wake-ups. Its bursts are not charged: a kthread that wakes often would
 * spend its share there, then wait F as soon as a burst ran over.
 */
static bool kthread_due(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	struct scx_gpu_tunables *t;

	kthread_charge(p, tctx);
	/* Before the map lookup: every task's slice end comes here. */
	if (!normal_kthread(p, tctx->tier) || kthread_burst(p, tctx, tctx->tier))
		return false;
	t = tun();
	if (!t)
		return false;
	if (now - tctx->kthread_window_at >= t->floor_ns) {
		tctx->kthread_window_at = now;
		tctx->kthread_due_ns = 0;
	}
	if (tctx->kthread_due_ns * 100 >= t->floor_ns * FLOOR_PCT)
		return false;
	tctx->kthread_due_from = p->se.sum_exec_runtime;
	return true;
}

/*
 * Count @p's wait as having lasted floor_ns already (its real start stays
 * in head_start): floor service runs it next, after only those of its tier
 * that have waited floor_ns. The time it became runnable is returned.
 */
static u64 floor_due(struct task_ctx *tctx, u64 since, u64 now)
{
	struct scx_gpu_tunables *t = tun();

	tctx->head_start = 0;
	if (!t || now <= t->floor_ns || since <= now - t->floor_ns)
		return since;
	tctx->head_start = since - (now - t->floor_ns);
	return now - t->floor_ns;
}

/* When @p became runnable: each tier's queue is in this order (normal's plus its lag). */
static u64 runnable_since(struct task_ctx *tctx, u64 now)
{
	return tctx && tctx->runnable_at ? tctx->runnable_at : now;
}

/*
 * Queue @p in @tier at @vtime: its CPU's queue when it may run there only
 * (that CPU is told, should it be idle), else its CPU's domain's.
 */
static void queue_task(struct task_struct *p, u32 tier, u64 slice, u64 vtime, u64 enq_flags)
{
	s32 cpu = pinned_cpu(p);

	dsq_insert_vtime(p, queue_of(p, tier), slice, vtime, enq_flags & ~SCX_ENQ_HEAD);
	if (cpu >= 0)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
}

/* @p's previous CPU if idle, else any idle CPU it may use, taken; -1: none. */
static s32 take_idle_cpu(struct task_struct *p)
{
	s32 cpu = scx_bpf_task_cpu(p);

	if (bpf_cpumask_test_cpu(cpu, p->cpus_ptr) && scx_bpf_test_and_clear_cpu_idle(cpu))
		return cpu;
	return scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
}

/* Run gpu task @p at once on @cpu, claimed from a lower tier. */
static void preempt_for_gpu(struct task_struct *p, s32 cpu, u64 enq_flags)
{
	dsq_insert(p, SCX_DSQ_LOCAL_ON | cpu, slice_ns, enq_flags | SCX_ENQ_PREEMPT);
	count_preemption(TIER_GPU);
}

/*
 * A gpu task takes an idle CPU of its home, else preempts a lower tier
 * there; only then an idle CPU anywhere, else preempts a lower tier
 * anywhere; else it waits in its queue. A task whose slice ran out lands
 * here only when another gpu task waited for its CPU, so it too looks for
 * a CPU to take.
 */
static void queue_gpu_task(struct task_struct *p, struct task_ctx *tctx, u64 enq_flags,
			   u64 now)
{
	u32 home = tctx ? tctx->home : NO_HOME;
	s32 cpu = take_idle_home(p, home, scx_bpf_task_cpu(p));

	if (cpu < 0 && (cpu = home_victim(p, home, TIER_GPU, enq_flags, true)) >= 0) {
		preempt_for_gpu(p, cpu, enq_flags);
		return;
	}
	if (cpu < 0)
		cpu = take_idle_cpu(p);
	if (cpu >= 0) {
		dsq_insert(p, SCX_DSQ_LOCAL_ON | cpu, slice_ns, enq_flags);
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		return;
	}
	cpu = claim_anywhere(p, TIER_GPU, enq_flags);
	if (cpu >= 0) {
		preempt_for_gpu(p, cpu, enq_flags);
		return;
	}
	queue_task(p, TIER_GPU, slice_ns, runnable_since(tctx, now), enq_flags);
}

/*
 * Deadline: when it became runnable plus its weighted slice, at most
 * floor_ns. A task due for floor service (an RCU reader, a kthread within its
 * share) has when it became runnable: its head start puts
 * it behind only tasks that have waited floor_ns (whatever its weight:
 * khugepaged runs at nice 19), so the head is due floor service.
 */
static u64 normal_deadline(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	u64 lag = slice_ns * 100 / (p->scx.weight ?: 1);

	if (tctx && tctx->head_start)
		lag = 0;
	if (t && lag > t->floor_ns)
		lag = t->floor_ns;
	return runnable_since(tctx, now) + lag;
}

static void queue_normal_task(struct task_struct *p, struct task_ctx *tctx, u64 enq_flags,
			      u64 now)
{
	s32 cpu;

	queue_task(p, TIER_NORMAL, slice_ns, normal_deadline(p, tctx, now), enq_flags);
	if (fair_only || !(enq_flags & SCX_ENQ_WAKEUP))
		return;
	cpu = claim_cpu(p, TIER_NORMAL, enq_flags);
	if (cpu >= 0) {
		scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
		count_preemption(TIER_NORMAL);
	}
}

/*
 * A kthread in its burst goes to its CPU's local queue. When a higher class
 * takes that CPU (a stop task: the soft-lockup watchdog every 4 s, an
 * affinity change; an RT task), gpu_cpu_release() queues it again: then it
 * goes to the normal tier as due for floor service, which any CPU it may
 * use (its own, when pinned) gives it at its next dispatch. Queued there as
 * a fresh wait, it waited F behind the gpu tier (1-2 s per grace period).
 * Not back to the local queue: each takeover would queue it again there,
 * and the kernel ejects a scheduler whose task is queued again 256 times
 * without running.
 */
static void queue_kthread(struct task_struct *p, struct task_ctx *tctx, u64 enq_flags, u64 now)
{
	if (!(enq_flags & SCX_ENQ_REENQ)) {
		dsq_insert(p, SCX_DSQ_LOCAL, MIN_SLICE_NS, enq_flags);
		return;
	}
	tctx->runnable_at = floor_due(tctx, runnable_since(tctx, now) + tctx->head_start, now);
	queue_normal_task(p, tctx, enq_flags, now);
}

__scx_gpu_global bool tier_waiting(u32 tier, s32 cpu);
static bool batch_may_run(s32 cpu);

/*
 * May batch start on idle @cpu at once? Only when nothing waits in any queue
 * it serves (tier order is global) and the quota allows: what its dispatch
 * would choose, without a wait in a queue that another domain could steal.
 */
static bool batch_starts_on(s32 cpu)
{
	return batch_may_run(cpu) && !tier_waiting(TIER_GPU, cpu) &&
	       !tier_waiting(TIER_NORMAL, cpu) && !tier_waiting(TIER_BATCH, cpu);
}

/*
 * The budget queue @p waits in: its CPU's when it may run there only, so
 * that no CPU scans a crowd pinned elsewhere; else the shared one.
 */
static u64 budget_queue_of(struct task_struct *p)
{
	s32 cpu = pinned_cpu(p);

	return cpu >= 0 && cpu < MAX_CPUS ? pcpu_dsq(PCPU_BUDGET, cpu) : BUDGET_DSQ;
}

/*
 * A tagged task over a gpu budget (in the normal tier, its tag outliving its
 * debt) waits in a budget queue until it is within budget again; an idle
 * CPU takes it at once. False: it is not such a task.
 */
static bool queue_over_budget(struct task_struct *p, struct task_ctx *tctx, u32 tier,
			      u64 enq_flags, u64 now)
{
	u64 due;
	s32 cpu;

	if (!tctx || !tctx->metered || tier != TIER_NORMAL)
		return false;
	due = over_budget(p, now);
	if (!due || due >= gpu_tag_expiry(p, now))
		return false;
	dsq_insert_vtime(p, budget_queue_of(p), slice_ns, due, enq_flags & ~SCX_ENQ_HEAD);
	cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	if (cpu >= 0)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	return true;
}

/*
 * Where @p should wake before the kernel's default choice, -1: no
 * preference; *@direct: it runs there at once. With a home: an idle CPU
 * there, else one running a tier it may preempt (its enqueue claims one).
 * Batch: an idle CPU outside every home in use.
 */
static s32 preferred_cpu(struct task_struct *p, struct task_ctx *tctx, u32 tier, s32 prev,
			 bool *direct)
{
	s32 cpu = take_idle_home(p, tier == TIER_BATCH ? AWAY_HOME : tctx->home, prev);

	*direct = cpu >= 0 && (tier != TIER_BATCH || batch_starts_on(cpu));
	if (cpu >= 0 || tier == TIER_BATCH)
		return cpu;
	return home_victim(p, tctx->home, tier, 0, false);
}

s32 BPF_STRUCT_OPS(gpu_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	struct task_ctx *tctx = task_ctx_of(p);
	bool is_idle = false, direct;
	u32 tier;
	s32 cpu;

	if (!tctx)
		return scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	tier = task_tier(p, tctx, bpf_ktime_get_ns());
	cpu = preferred_cpu(p, tctx, tier, prev_cpu, &direct);
	if (cpu < 0) {
		cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
		/* Batch must go through its queue: the quota decides when it runs. */
		direct = is_idle && tier != TIER_BATCH;
	}
	if (direct)
		dsq_insert(p, SCX_DSQ_LOCAL, tier == TIER_BATCH ? batch_slice_ns : slice_ns, 0);
	return cpu;
}

void BPF_STRUCT_OPS(gpu_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = task_ctx_of(p);
	u64 now = bpf_ktime_get_ns(), until;
	bool metered;
	u32 tier = tctx ? task_tier(p, tctx, now) : classify(p, now, &until, &metered);

	/* The CPU takes its local queue when the running slice ends. */
	if (kthread_burst(p, tctx, tier))
		queue_kthread(p, tctx, enq_flags, now);
	else if (tier == TIER_GPU)
		queue_gpu_task(p, tctx, enq_flags, now);
	else if (tier == TIER_BATCH)
		queue_task(p, TIER_BATCH, batch_slice_ns, runnable_since(tctx, now), enq_flags);
	else if (!queue_over_budget(p, tctx, tier, enq_flags, now))
		queue_normal_task(p, tctx, enq_flags, now);
	/*
	 * SCX_ENQ_LAST: dispatch already keeps a runnable task that may go on,
	 * so this is batch over its quota, which waits for the next period
	 * (the period timer kicks idle CPUs). Anything else gets its CPU back.
	 */
	if ((enq_flags & SCX_ENQ_LAST) && tier != TIER_BATCH)
		scx_bpf_kick_cpu(scx_bpf_task_cpu(p), 0);
}

enum head_key { HEAD_VTIME, HEAD_SINCE };

static u64 key_of(struct task_struct *p, u32 key)
{
	struct task_ctx *tctx;

	if (key == HEAD_VTIME)
		return p->scx.dsq_vtime;
	tctx = task_ctx_of(p);
	return tctx && tctx->runnable_at ? tctx->runnable_at : FOREVER;
}

/*
 * The head of a queue's order (HEAD_VTIME) or when it became runnable
 * (HEAD_SINCE); FOREVER when the queue is empty. Lockless where the kernel
 * can peek (7.x), under the queue's lock through an iterator before.
 */
static u64 head_key(u64 dsq_id, u32 key)
{
	struct task_struct *p;

	if (bpf_ksym_exists(scx_bpf_dsq_peek)) {
		p = scx_bpf_dsq_peek(dsq_id);
		return p ? key_of(p, key) : FOREVER;
	}
	bpf_for_each(scx_dsq, p, dsq_id, 0)
		return key_of(p, key);
	return FOREVER;
}

/*
 * Of the queues of @tier that @cpu serves (its own CPU's, every domain's,
 * its own domain first on a tie), the one whose head became runnable first;
 * *@since: when, FOREVER when all are empty. O(domains).
 */
static u64 oldest_queue(u32 tier, s32 cpu, u64 *since)
{
	u64 best = pcpu_dsq(tier, cpu), dsq_id, at;
	u32 home = dom_of(cpu), i;

	*since = head_key(best, HEAD_SINCE);
	bpf_for(i, 0, nr_doms) {
		dsq_id = dsq_of(tier, dom_from(home, i));
		at = head_key(dsq_id, HEAD_SINCE);
		if (at < *since) {
			*since = at;
			best = dsq_id;
		}
	}
	return best;
}

/*
 * Floor service: the head of @tier's queue @dsq_id, if it has waited
 * floor_ns and may run on @cpu, runs now (the queue's order makes the head
 * the longest waiter, or within floor_ns of it), within the tier's floor share.
 */
static bool serve_floor(u32 tier, u64 dsq_id, u64 since, s32 cpu, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	struct scx_gpu_stats *s;
	struct task_struct *p;
	struct task_ctx *tctx;

	if (!t || since == FOREVER || now - since < t->floor_ns || !floor_budget_left(tier) ||
	    (tier == TIER_BATCH && !batch_budget_left()))
		return false;
	bpf_for_each(scx_dsq, p, dsq_id, 0) {
		tctx = task_ctx_of(p);
		if (!tctx || !tctx->runnable_at || now - tctx->runnable_at < t->floor_ns)
			break;
		/* Pinned elsewhere: its own CPU serves it, now, whatever runs there. */
		if (!bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
			scx_bpf_kick_cpu(scx_bpf_task_cpu(p), SCX_KICK_PREEMPT);
			break;
		}
		tctx->floor_served = true;
		tctx->floor_at = now;
		if (dsq_move(BPF_FOR_EACH_ITER, p, SCX_DSQ_LOCAL, 0)) {
			s = stat();
			if (s)
				s->floor_dispatches++;
			return true;
		}
		tctx->floor_served = false;
		break;
	}
	return false;
}

/*
 * Floor service for the tier whose head has waited longer first, in every
 * domain: a storm in one tier leaves the other's longest waiter its turn.
 */
__scx_gpu_global bool serve_floors(s32 cpu, u64 now)
{
	u64 batch_since, normal_since, batch_q, normal_q;

	batch_q = oldest_queue(TIER_BATCH, cpu, &batch_since);
	normal_q = oldest_queue(TIER_NORMAL, cpu, &normal_since);
	if (batch_since < normal_since)
		return serve_floor(TIER_BATCH, batch_q, batch_since, cpu, now) ||
		       serve_floor(TIER_NORMAL, normal_q, normal_since, cpu, now);
	return serve_floor(TIER_NORMAL, normal_q, normal_since, cpu, now) ||
	       serve_floor(TIER_BATCH, batch_q, batch_since, cpu, now);
}

/* Tasks of @tier waiting in @cpu's own queue or any domain's. */
__scx_gpu_global bool tier_waiting(u32 tier, s32 cpu)
{
	u32 dom;

	if (queued(pcpu_dsq(tier, cpu)))
		return true;
	bpf_for(dom, 0, nr_doms) {
		if (queued(dsq_of(tier, dom)))
			return true;
	}
	return false;
}

/* --gpu-smt exclusive: @cpu's SMT sibling; -1 when none or the option is off. */
static s32 sibling_of(s32 cpu)
{
	u32 sib;

	if (smt_mode != SMT_EXCLUSIVE || cpu < 0 || cpu >= MAX_CPUS)
		return -1;
	sib = cpu_sibling[cpu & (MAX_CPUS - 1)];
	return sib != cpu && sib < MAX_CPUS ? sib : -1;
}

/* No batch beside a gpu thread on its core (floor service excepted). */
static bool smt_blocked(s32 cpu)
{
	s32 sib = sibling_of(cpu);
	struct cpu_ctx *c = sib >= 0 ? cpu_ctx_of(sib) : NULL;

	return c && c->tier == TIER_GPU;
}

static bool batch_may_run(s32 cpu)
{
	return batch_budget_left() && !smt_blocked(cpu);
}

/*
 * Charge @p's run since tctx->run_at: its tier's runtime, the batch quota,
 * the floor share, a tagged thread's budgets (over them: classify it again).
 */
static void account_run(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	struct scx_gpu_stats *s = stat();
	u64 used = now - tctx->run_at;
	u32 tier = tctx->tier;

	tctx->run_at = now;
	if (tier >= NR_TIERS)
		return;
	/* From dispatch: a switch among thousands of tasks can cost more than the slice. */
	if (tctx->floor_served)
		__sync_fetch_and_add(&floor_used_ns[tier], now - tctx->floor_at);
	if (tier == TIER_BATCH)
		__sync_fetch_and_add(&batch_used_ns, used);
	if (tctx->metered && charge_budget(p, used, now) && tier == TIER_GPU) {
		tctx->classified = false;
		if (s)
			s->budget_demotions++;
	}
	if (s && tier < NR_TIERS)
		s->tier[tier].runtime_ns += used;
}

/*
 * @prev's tier if it is still runnable and may go on running; NR_TIERS if
 * not. A kept task passes through neither ops.stopping nor ops.running, so
 * its run is accounted and its tier looked at here; a floor slice that
 * reaches dispatch ran to its end.
 */
static u32 keepable_tier(struct task_struct *prev, struct task_ctx *tctx, s32 cpu, u64 now)
{
	u32 tier;

	if (!prev || !tctx || !tctx->run_at || !(prev->scx.flags & SCX_TASK_QUEUED))
		return NR_TIERS;
	account_run(prev, tctx, now);
	tctx->floor_served = false;
	tier = task_tier(prev, tctx, now);
	if (tier >= NR_TIERS || (tier == TIER_BATCH && !batch_may_run(cpu)))
		return NR_TIERS;
	return tier;
}

static void arm_slice_timer(void)
{
	struct timer_slot *ts;

	if (__sync_val_compare_and_swap(&slice_timer_armed, 0, 1) != 0)
		return;
	ts = bpf_map_lookup_elem(&timers, &(u32){SLICE_TIMER});
	if (!ts || bpf_timer_start(&ts->timer, MIN_SLICE_NS, 0))
		slice_timer_armed = 0;
}

/* A tagged process over its budget runs in short slices: normal tasks wait little. */
static bool over_budget_slice(struct task_ctx *tctx)
{
	return tctx && tctx->metered && tctx->tier != TIER_GPU;
}

static __always_inline void mark_cpu(struct bpf_cpumask *mask, s32 cpu, bool on)
{
	/* Read first: an unchanged bit costs no atomic write on a shared line. */
	if (!mask || bpf_cpumask_test_cpu(cpu, (const struct cpumask *)mask) == on)
		return;
	if (on)
		bpf_cpumask_set_cpu(cpu, mask);
	else
		bpf_cpumask_clear_cpu(cpu, mask);
}

/* Record the tier @cpu runs: its cpu_ctx, and its domain's masks. */
static void set_cpu_tier(struct cpu_ctx *c, s32 cpu, u32 tier)
{
	u32 dom = dom_of(cpu);
	struct dom_masks *m = bpf_map_lookup_elem(&dom_masks, &dom);

	c->tier = tier;
	if (!m)
		return;
	bpf_rcu_read_lock();
	mark_cpu(m->normal, cpu, tier == TIER_NORMAL);
	mark_cpu(m->batch, cpu, tier == TIER_BATCH);
	bpf_rcu_read_unlock();
}

/* Refilled: the kernel keeps prev running, with no idle gap. */
static void keep_running(struct task_struct *prev, struct task_ctx *tctx, struct cpu_ctx *c,
			 s32 cpu, u32 tier, u64 now)
{
	prev->scx.slice = tier == TIER_BATCH ? batch_slice_ns : slice_ns;
	kthread_charge(prev, tctx);	/* kept: it runs ahead of no one */
	if (!c)
		return;
	set_cpu_tier(c, cpu, tier);
	c->pid = prev->pid;
	c->floor = false;
	if (over_budget_slice(tctx)) {
		prev->scx.slice = MIN_SLICE_NS;
		c->slice_end = now + MIN_SLICE_NS;
		arm_slice_timer();
	}
}

/*
 * @tier's next task for @cpu: the earlier head of its own CPU's queue and its
 * domain's, else the first another domain gives up (in domain order from its
 * own): stealing within a tier keeps the tier order across domains.
 */
__scx_gpu_global bool take_tier(u32 tier, s32 cpu)
{
	u32 home = dom_of(cpu), i;
	u64 mine = pcpu_dsq(tier, cpu), local = dsq_of(tier, home);

	if (queued(mine) && head_key(mine, HEAD_VTIME) <= head_key(local, HEAD_VTIME) &&
	    dsq_move_to_local(mine))
		return true;
	if (dsq_move_to_local(local) || dsq_move_to_local(mine))
		return true;
	bpf_for(i, 1, nr_doms) {
		if (dsq_move_to_local(dsq_of(tier, dom_from(home, i))))
			return true;
	}
	return false;
}

/*
 * Release up to BUDGET_TRIES due heads of budget queue @dsq_id for @cpu;
 * true: one runs here. The queue is in order of when its tasks are within
 * budget again. A due head leaves it: it runs here as the gpu task it is
 * again, or waits in its own queue of its tier when it may not run here or
 * its tag expired (an idle CPU it may use is told). A head whose process
 * ran since it was queued is not due after all: it goes back in order of
 * its new time, unless its tag expires first. So no head that this CPU may
 * not take, or that is not due, holds up those behind it.
 */
__scx_gpu_global bool release_due(u64 dsq_id, s32 cpu, u64 now)
{
	struct task_struct *p;
	struct task_ctx *tctx;
	u32 tries = 0, tier;
	u64 due;
	s32 idle;

	bpf_for_each(scx_dsq, p, dsq_id, 0) {
		if (p->scx.dsq_vtime > now || ++tries > BUDGET_TRIES)
			break;
		tctx = task_ctx_of(p);
		if (!tctx) {
			dsq_move_vtime(BPF_FOR_EACH_ITER, p, queue_of(p, TIER_NORMAL), now);
			continue;
		}
		due = over_budget(p, now);
		if (due && due < gpu_tag_expiry(p, now)) {
			dsq_move_vtime(BPF_FOR_EACH_ITER, p, dsq_id, due);
			continue;
		}
		tier = task_tier(p, tctx, now);
		if (tier == TIER_GPU && bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
			if (dsq_move(BPF_FOR_EACH_ITER, p, SCX_DSQ_LOCAL, 0))
				return true;
			continue;
		}
		due = tier == TIER_NORMAL ? normal_deadline(p, tctx, now) : p->scx.dsq_vtime;
		if (!dsq_move_vtime(BPF_FOR_EACH_ITER, p, queue_of(p, tier), due))
			continue;
		idle = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
		if (idle >= 0)
			scx_bpf_kick_cpu(idle, SCX_KICK_IDLE);
	}
	return false;
}

/* When the first task of @cpu's budget queues is due; FOREVER: none waits. */
static u64 budget_due(s32 cpu)
{
	u64 mine = pcpu_dsq(PCPU_BUDGET, cpu), due = FOREVER, shared = FOREVER;

	if (queued(mine))
		due = head_key(mine, HEAD_VTIME);
	if (queued(BUDGET_DSQ))
		shared = head_key(BUDGET_DSQ, HEAD_VTIME);
	return due < shared ? due : shared;
}

static bool take_due_budget(s32 cpu, u64 now)
{
	return release_due(pcpu_dsq(PCPU_BUDGET, cpu), cpu, now) ||
	       release_due(BUDGET_DSQ, cpu, now);
}

/*
 * The gpu tier's next task for @cpu: its queues' or a budget queue task's
 * that is due, whichever became a gpu task first (own domain's head).
 */
__scx_gpu_global bool take_gpu(s32 cpu, u64 now)
{
	u64 due = budget_due(cpu);

	if (due <= now && due <= head_key(dsq_of(TIER_GPU, dom_of(cpu)), HEAD_VTIME) &&
	    take_due_budget(cpu, now))
		return true;
	return take_tier(TIER_GPU, cpu) || (due <= now && take_due_budget(cpu, now));
}

/* Any task of @cpu's budget queues: the kernel skips those that may not run here. */
static bool take_any_budget(s32 cpu)
{
	return dsq_move_to_local(pcpu_dsq(PCPU_BUDGET, cpu)) || dsq_move_to_local(BUDGET_DSQ);
}

void BPF_STRUCT_OPS(gpu_dispatch, s32 cpu, struct task_struct *prev)
{
	struct task_ctx *ptctx = prev ? task_ctx_of(prev) : NULL;
	bool after_floor = ptctx && ptctx->floor_served;
	u64 now = bpf_ktime_get_ns();
	u32 keep = keepable_tier(prev, ptctx, cpu, now);
	struct cpu_ctx *c = cpu_ctx_of(cpu);

	/* Floor slices alternate with waiting gpu tasks: one at a time ahead of them. */
	if (!(after_floor && tier_waiting(TIER_GPU, cpu)) && serve_floors(cpu, now))
		return;
	/* A queue of the same tier as prev goes first: round robin within a tier. */
	if (take_gpu(cpu, now))
		return;
	if (keep >= TIER_NORMAL && (take_tier(TIER_NORMAL, cpu) || take_any_budget(cpu)))
		return;
	if (keep >= TIER_BATCH && batch_may_run(cpu) && take_tier(TIER_BATCH, cpu))
		return;
	if (keep < NR_TIERS) {
		keep_running(prev, ptctx, c, cpu, keep, now);
		return;
	}
	if (batch_budget_left() || !tier_waiting(TIER_BATCH, cpu))
		return;
	if (c && !c->throttled_since)
		c->throttled_since = now;
}

void BPF_STRUCT_OPS(gpu_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = task_ctx_of(p);

	if (!tctx)
		return;
	/* Kept when a queued task is dequeued and enqueued again (affinity, nice, cgroup). */
	if (!tctx->runnable_at) {
		tctx->runnable_at = bpf_ktime_get_ns();
		tctx->head_start = 0;
	}
	/* Here, not in gpu_enqueue(): gpu_select_cpu() may queue the wake-up itself. */
	if ((p->flags & PF_KTHREAD) && (enq_flags & SCX_ENQ_WAKEUP)) {
		kthread_charge(p, tctx);	/* its last run before it slept */
		tctx->kthread_woke_ns = p->se.sum_exec_runtime;
	}
}

/* The normal slice: slice * C / queued (in all domains), at least MIN_SLICE_NS. */
static u64 normal_slice(void)
{
	u64 n = 0, slice;
	u32 dom;

	bpf_for(dom, 0, nr_doms)
		n += queued(dsq_of(TIER_NORMAL, dom));
	slice = n > nr_cpus ? slice_ns * nr_cpus / n : slice_ns;
	return slice < MIN_SLICE_NS ? MIN_SLICE_NS : slice;
}

/* Slices shorter than the tick end on time: kick CPUs whose slice is over. */
static int slice_tick(void *map, int *key, struct timer_slot *ts)
{
	u64 now = bpf_ktime_get_ns(), end;
	struct scx_gpu_stats *s;
	bool pending = false;
	struct cpu_ctx *c;
	s32 cpu;

	/* Cleared first: a slice starting during the scan arms the timer again. */
	slice_timer_armed = 0;
	bpf_for(cpu, 0, scx_bpf_nr_cpu_ids()) {
		if (cpu >= MAX_CPUS)
			break;
		c = cpu_ctx_of(cpu);
		end = c ? c->slice_end : 0;
		if (!end)
			continue;
		if ((s64)(now - end) >= 0) {
			/* Unless the CPU began another slice since: that one is not over. */
			if (__sync_val_compare_and_swap(&c->slice_end, end, 0) != end)
				continue;
			scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
			s = stat();
			if (s)
				s->slice_kicks++;
		} else {
			pending = true;
		}
	}
	if (pending && !__sync_val_compare_and_swap(&slice_timer_armed, 0, 1))
		bpf_timer_start(&ts->timer, MIN_SLICE_NS, 0);
	return 0;
}

static void set_running_slice(struct task_struct *p, struct task_ctx *tctx, struct cpu_ctx *c,
			      u64 now)
{
	u64 slice;

	if (tctx->floor_served || over_budget_slice(tctx)) {
		p->scx.slice = MIN_SLICE_NS;
	} else if (tctx->tier == TIER_NORMAL) {
		slice = normal_slice();
		if (p->scx.slice > slice)
			p->scx.slice = slice;
	}
	if (p->scx.slice >= slice_ns)
		return;
	c->slice_end = now + p->scx.slice;
	arm_slice_timer();
}

/* --gpu-smt exclusive: a gpu thread starting on @cpu preempts batch on its sibling. */
static void evict_sibling_batch(s32 cpu)
{
	s32 sib = sibling_of(cpu);
	struct cpu_ctx *c = sib >= 0 ? cpu_ctx_of(sib) : NULL;

	if (c && c->tier == TIER_BATCH && !c->floor)
		scx_bpf_kick_cpu(sib, SCX_KICK_PREEMPT);
}

void BPF_STRUCT_OPS(gpu_running, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct scx_gpu_stats *s = stat();
	s32 cpu = scx_bpf_task_cpu(p);
	struct cpu_ctx *c = cpu_ctx_of(cpu);
	u64 now = bpf_ktime_get_ns(), waited;
	struct tier_stats *ts;

	if (!tctx)
		return;
	tctx->run_at = now;
	tctx->waited_from = tctx->runnable_at ?: now;
	if (tctx->tier == TIER_GPU)
		evict_sibling_batch(cpu);
	if (c) {
		set_cpu_tier(c, cpu, tctx->tier);
		c->pid = p->pid;
		c->floor = tctx->floor_served;
		set_running_slice(p, tctx, c, now);
		if (c->throttled_since) {
			if (s)
				s->batch_throttled_ns += now - c->throttled_since;
			c->throttled_since = 0;
		}
	}
	waited = tctx->runnable_at ? now - tctx->runnable_at - tctx->head_start : 0;
	tctx->runnable_at = 0;
	/* The tiers' statistics describe the work: the quota loop reads them. */
	if (!s || tctx->tier >= NR_TIERS || p->tgid == control_tgid)
		return;
	ts = &s->tier[tctx->tier];
	ts->runs++;
	/* The mask proves the index in bounds to the verifier. */
	if (waited)
		ts->wait_hist[log2_bucket(waited) & (WAIT_BUCKETS - 1)]++;
}

/*
 * A task preempted inside an RCU read-side critical section holds up every
 * grace period until it runs again (preemptible RCU without priority
 * boosting, as in Debian's kernels), and the kernel ejects the scheduler
 * once a grace period has taken RCU_CPU_STALL_TIMEOUT (21 s). The context
 * switch queued it on an RCU node's blocked list before ops.stopping; its
 * nesting count would not do, as this program's own trampoline holds
 * rcu_read_lock() on the task it runs on.
 */
static bool rcu_reader(struct task_struct *p)
{
	return bpf_core_field_exists(p->rcu_blocked_node) && p->rcu_blocked_node;
}

/*
 * When the wait of @p, stopping and still runnable, counts from: a floor
 * slice that a waking gpu task cut short is still the same wait; an RCU
 * reader, and a kthread within its share (kthread_due()), have waited
 * floor_ns already (normal_deadline() queues them so).
 */
static u64 wait_start(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	struct scx_gpu_stats *s;

	if (tctx->floor_served && now - tctx->run_at < MIN_SLICE_NS)
		return tctx->waited_from;
	tctx->head_start = 0;
	if (tctx->tier == TIER_GPU)
		return now;
	if (rcu_reader(p)) {
		s = stat();
		if (s)
			s->rcu_readers++;
	} else if (!kthread_due(p, tctx, now)) {
		return now;
	}
	return floor_due(tctx, now, now);
}

void BPF_STRUCT_OPS(gpu_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct scx_gpu_stats *s = stat();
	s32 cpu = scx_bpf_task_cpu(p), sib;
	struct cpu_ctx *c = cpu_ctx_of(cpu);
	u64 now = bpf_ktime_get_ns();

	if (c) {
		/* The record must be of @p's CPU, also when this runs on another one. */
		if (c->pid && c->pid != p->pid && s)
			s->cpu_mismatches++;
		/* The sibling that kept batch off its CPU for this gpu thread may run it now. */
		sib = c->tier == TIER_GPU ? sibling_of(cpu) : -1;
		if (sib >= 0 && tier_waiting(TIER_BATCH, sib))
			scx_bpf_kick_cpu(sib, SCX_KICK_IDLE);
		set_cpu_tier(c, cpu, TIER_IDLE);
		c->pid = 0;
		c->floor = false;
		c->slice_end = 0;
	}
	if (!tctx || !tctx->run_at)
		return;
	if (runnable)
		tctx->runnable_at = wait_start(p, tctx, now);
	account_run(p, tctx, now);
	tctx->run_at = 0;
	tctx->floor_served = false;
}

void BPF_STRUCT_OPS(gpu_enable, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);

	if (tctx)
		count_tier(tctx->tier, 1);
}

void BPF_STRUCT_OPS(gpu_disable, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);

	if (tctx)
		count_tier(tctx->tier, -1);
}

s32 BPF_STRUCT_OPS(gpu_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	struct task_ctx *tctx;

	tctx = bpf_task_storage_get(&task_ctxs, p, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!tctx)
		return -ENOMEM;
	tctx->tier = TIER_NORMAL;
	return 0;
}

/* Its cgroup decides its tier: classify it again at its next enqueue. */
void BPF_STRUCT_OPS(gpu_cgroup_move, struct task_struct *p, struct cgroup *from, struct cgroup *to)
{
	struct task_ctx *tctx = task_ctx_of(p);

	if (tctx)
		tctx->classified = false;
}

/*
 * A launch tag dies with its thread (or process), a budget with its process
 * (its last thread): a reused id starts untagged and without debt.
 */
void BPF_STRUCT_OPS(gpu_exit_task, struct task_struct *p, struct scx_exit_task_args *args)
{
	u32 key = p->pid, tgid = p->tgid;

	if (!BPF_CORE_READ(p, signal, live.counter))
		bpf_map_delete_elem(&proc_budgets, &tgid);
	if (detect_scope == SCOPE_PROCESS) {
		if (p->pid != p->tgid)
			return;
		key = p->tgid;
	}
	bpf_map_delete_elem(&gpu_tags, &key);
}

/* Each quota period: refill the batch and floor budgets, wake idle CPUs for batch. */
static int period_tick(void *map, int *key, struct timer_slot *ts)
{
	struct scx_gpu_tunables *t = tun();
	u32 tier;
	s32 cpu;

	bool batch = false;
	u32 dom;

	batch_used_ns = 0;
	bpf_for(tier, 0, NR_TIERS)
		floor_used_ns[tier] = 0;
	bpf_for(dom, 0, nr_doms)
		batch = batch || queued(dsq_of(TIER_BATCH, dom));
	bpf_for(cpu, 0, scx_bpf_nr_cpu_ids()) {
		if (cpu >= MAX_CPUS)
			break;
		if (batch || queued(pcpu_dsq(TIER_BATCH, cpu)))
			scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	}
	bpf_timer_start(&ts->timer, t ? t->batch_period_ns : 100 * NSEC_PER_MSEC, 0);
	return 0;
}

static const char *tier_name(u32 tier)
{
	return tier == TIER_GPU ? "gpu" : tier == TIER_NORMAL ? "normal" : "batch";
}

struct waiters {
	u32 queued;
	s32 pid;	/* the longest waiter, -1: none */
	u64 oldest;	/* when it became runnable; 0: none */
};

/* Count a queue's tasks into @w and find its longest waiter (ops.dump: O(tasks)). */
static void count_waiters(u64 dsq_id, struct waiters *w)
{
	struct task_struct *p;
	struct task_ctx *tctx;
	u64 since;

	w->queued += queued(dsq_id);
	bpf_for_each(scx_dsq, p, dsq_id, 0) {
		tctx = task_ctx_of(p);
		if (!tctx || !tctx->runnable_at)
			continue;
		since = tctx->runnable_at + tctx->head_start;	/* a due task's real wait */
		if (!w->oldest || since < w->oldest) {
			w->oldest = since;
			w->pid = p->pid;
		}
	}
}

/*
 * One line per queue (@dom), or for the per-CPU queues together (@dom -1).
 * A task that became runnable on another CPU since @now was read counts 0 ms.
 */
static void dump_waiters(u32 tier, s32 dom, struct waiters *w, u64 now)
{
	u64 ms = w->oldest && now > w->oldest ? (now - w->oldest) / NSEC_PER_MSEC : 0;

	if (dom >= 0)
		scx_gpu_dump("scx_gpu: tier %s: domain %d: %u queued, oldest waiter pid %d, runnable for %llu ms\n",
			     tier_name(tier), dom, w->queued, w->pid, ms);
	else
		scx_gpu_dump("scx_gpu: tier %s: per-CPU: %u queued, oldest waiter pid %d, runnable for %llu ms\n",
			     tier_name(tier), w->queued, w->pid, ms);
}

/* ops.dump: each tier's queue per domain, and its per-CPU queues together. */
static void dump_tier(u32 tier, u64 now)
{
	struct waiters w;
	u32 dom;
	s32 cpu;

	bpf_for(dom, 0, nr_doms) {
		w = (struct waiters){ .pid = -1 };
		count_waiters(dsq_of(tier, dom), &w);
		dump_waiters(tier, dom, &w, now);
	}
	w = (struct waiters){ .pid = -1 };
	bpf_for(cpu, 0, scx_bpf_nr_cpu_ids()) {
		if (cpu >= MAX_CPUS)
			break;
		count_waiters(pcpu_dsq(tier, cpu), &w);
	}
	dump_waiters(tier, -1, &w, now);
}

void BPF_STRUCT_OPS(gpu_dump, struct scx_dump_ctx *dctx)
{
	u64 now = bpf_ktime_get_ns();
	u32 tier;
	s32 cpu;

	struct waiters w = { .pid = -1 };

	bpf_for(tier, 0, NR_TIERS) {
		dump_tier(tier, now);
		if (tier != TIER_GPU)
			continue;
		count_waiters(BUDGET_DSQ, &w);
		bpf_for(cpu, 0, scx_bpf_nr_cpu_ids()) {
			if (cpu >= MAX_CPUS)
				break;
			count_waiters(pcpu_dsq(PCPU_BUDGET, cpu), &w);
		}
		scx_gpu_dump("scx_gpu: tier gpu: over budget: %u queued, oldest waiter pid %d, runnable for %llu ms\n",
			     w.queued, w.pid,
			     w.oldest && now > w.oldest ? (now - w.oldest) / NSEC_PER_MSEC : 0);
	}
}

/* A higher class took the CPU: what waits in its local queue goes elsewhere. */
void BPF_STRUCT_OPS(gpu_cpu_release, s32 cpu, struct scx_cpu_release_args *args)
{
	reenqueue_local();
}

static s32 start_timer(u32 which, void *cb, u64 delay)
{
	struct timer_slot *ts = bpf_map_lookup_elem(&timers, &which);

	if (!ts)
		return -ENOENT;
	bpf_timer_init(&ts->timer, &timers, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&ts->timer, cb);
	return delay ? bpf_timer_start(&ts->timer, delay, 0) : 0;
}

static __always_inline s32 new_mask(struct bpf_cpumask __kptr **slot)
{
	struct bpf_cpumask *mask = bpf_cpumask_create();

	if (!mask)
		return -ENOMEM;
	mask = bpf_kptr_xchg(slot, mask);
	if (mask)
		bpf_cpumask_release(mask);
	return 0;
}

/* Each domain's queues and masks, each CPU's queues. */
static s32 create_queues(void)
{
	struct dom_masks *m;
	u32 dom, tier;
	s32 cpu, ret;

	bpf_for(dom, 0, nr_doms) {
		m = bpf_map_lookup_elem(&dom_masks, &dom);
		if (!m)
			return -ENOENT;
		ret = new_mask(&m->normal) ?: new_mask(&m->batch);
		if (ret)
			return ret;
		bpf_for(tier, 0, NR_TIERS) {
			ret = scx_bpf_create_dsq(dsq_of(tier, dom), -1);
			if (ret)
				return ret;
		}
	}
	bpf_for(cpu, 0, scx_bpf_nr_cpu_ids()) {
		if (cpu >= MAX_CPUS)
			break;
		/* Each tier's, and its budget queue. */
		bpf_for(tier, 0, PCPU_BUDGET + 1) {
			ret = scx_bpf_create_dsq(pcpu_dsq(tier, cpu), -1);
			if (ret)
				return ret;
		}
	}
	return scx_bpf_create_dsq(BUDGET_DSQ, -1);
}

s32 BPF_STRUCT_OPS_SLEEPABLE(gpu_init)
{
	struct scx_gpu_tunables *t = tun();
	s32 ret = create_queues();

	if (ret)
		return ret;
	if (!t)
		return -ENOENT;
	return start_timer(SLICE_TIMER, slice_tick, 0) ?:
	       start_timer(PERIOD_TIMER, period_tick, t->batch_period_ns);
}

void BPF_STRUCT_OPS(gpu_exit, struct scx_exit_info *ei)
{
	bpf_probe_read_kernel_str(exit_info.reason, sizeof(exit_info.reason), ei->reason);
	bpf_probe_read_kernel_str(exit_info.msg, sizeof(exit_info.msg), ei->msg);
	if (ei->dump)
		bpf_probe_read_kernel_str(exit_info.dump, sizeof(exit_info.dump), ei->dump);
	exit_info.exit_code = ei->exit_code;
	/* Written last: the control plane polls kind to learn of the exit. */
	asm volatile("" ::: "memory");
	exit_info.kind = ei->kind;
}

/* --gpu-allow: may the current task be tagged? */
static bool may_tag(void)
{
	u32 uid = (u32)bpf_get_current_uid_gid();

	return !gpu_allow_set || bpf_map_lookup_elem(&gpu_allow_uids, &uid) ||
	       cgroup_lookup(bpf_get_current_task_btf(), &gpu_allow_cgroups);
}

/* GPU detection: attached by the control plane to the CUDA launch family. */
static int tag_launcher(u64 site)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 key = detect_scope == SCOPE_PROCESS ? id >> 32 : (u32)id;
	u64 now = bpf_ktime_get_ns(), *seen = bpf_map_lookup_elem(&gpu_tags, &key);
	struct scx_gpu_tunables *t = tun();
	struct scx_gpu_stats *s = stat();
	bool fresh;

	/* Every trap counts, tagged or not: the control plane keeps probes in
	 * while no one calls them, and must see the calls it would not tag. */
	if (s && site < LAUNCH_SITES)
		s->site_hits[site]++;
	if (!may_tag())
		return 0;
	/*
	 * A new tag changes a tier: every cached tier is looked at again, after
	 * the tag is in (a task classified between the two would keep the old).
	 */
	fresh = !seen || !t || now - *seen >= t->gpu_ttl_ns;
	bpf_map_update_elem(&gpu_tags, &key, &now, BPF_ANY);
	if (fresh)
		__sync_fetch_and_add(&new_tags, 1);
	return 0;
}

/* One probe per entry point: kernels before 6.6 (no uprobe_multi links). */
SEC("uprobe")
int BPF_UPROBE(detect_launch)
{
	return tag_launcher(bpf_get_attach_cookie(ctx));
}

/*
 * Every entry point of a library in one link: the window's probes go in and
 * out together, so none fires while the others attach or detach.
 */
SEC("uprobe.multi")
int BPF_UPROBE(detect_launch_multi)
{
	return tag_launcher(bpf_get_attach_cookie(ctx));
}

/*
 * The control plane sets a home's CPUs (or AWAY_HOME's): a new mask swapped
 * in whole, so a reader sees the old set or the new one.
 */
SEC("syscall")
int gpu_set_home(struct home_cpus *arg)
{
	u64 words[CPU_WORDS], doms = 0;
	struct bpf_cpumask *mask;
	u32 home = arg->home;
	struct home *h;
	s32 cpu;

	__builtin_memcpy(words, arg->cpus, sizeof(words));
	h = bpf_map_lookup_elem(&homes, &home);
	if (!h)
		return -ENOENT;
	mask = bpf_cpumask_create();
	if (!mask)
		return -ENOMEM;
	bpf_for(cpu, 0, MAX_CPUS) {
		if (!(words[(cpu / 64) & (CPU_WORDS - 1)] & (1ULL << (cpu % 64))))
			continue;
		bpf_cpumask_set_cpu(cpu, mask);
		doms |= 1ULL << (dom_of(cpu) & (MAX_DOMS - 1));
	}
	mask = bpf_kptr_xchg(&h->cpus, mask);
	if (mask)
		bpf_cpumask_release(mask);
	h->doms = doms;
	return 0;
}

SEC(".struct_ops.link")
struct sched_ext_ops gpu_ops = {
	.select_cpu	= (void *)gpu_select_cpu,
	.enqueue	= (void *)gpu_enqueue,
	.dispatch	= (void *)gpu_dispatch,
	.runnable	= (void *)gpu_runnable,
	.running	= (void *)gpu_running,
	.stopping	= (void *)gpu_stopping,
	.enable		= (void *)gpu_enable,
	.disable	= (void *)gpu_disable,
	.init_task	= (void *)gpu_init_task,
	.exit_task	= (void *)gpu_exit_task,
	.cgroup_move	= (void *)gpu_cgroup_move,
	.cpu_release	= (void *)gpu_cpu_release,
	.dump		= (void *)gpu_dump,
	.init		= (void *)gpu_init,
	.exit		= (void *)gpu_exit,
	.timeout_ms	= TIMEOUT_MS,
	.flags		= SCX_OPS_ENQ_LAST,
	.name		= "scx_gpu",
};
