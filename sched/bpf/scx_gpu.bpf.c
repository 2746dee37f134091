/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_gpu: a sched_ext scheduler that runs GPU-launching threads first.
 *
 * Three tiers, dispatched gpu > normal > batch on every CPU:
 *  - gpu: threads that called a CUDA launch entry point within gpu_ttl (the
 *    detect_launch uprobe tags them), or pinned there by the operator. A
 *    waking gpu task takes an idle CPU, else preempts a CPU running a lower
 *    tier at once.
 *  - normal: everything else, weighted virtual-time fair.
 *  - batch: runs only on CPU time the others leave idle, within a quota of
 *    all CPUs per period.
 * A starvation floor serves any normal or batch task that waited longer
 * than floor_ns first, so the kernel's watchdog never fires on them.
 */
#include "common.bpf.h"
#include "intf.h"
#include "compat.bpf.h"

char _license[] SEC("license") = "GPL";

#define DSQ_GPU		1
#define DSQ_NORMAL	2
#define DSQ_BATCH	3
#define MAX_CPUS	1024
#define CGROUP_DEPTH	8
#define FLOOR_SCAN	16	/* queued tasks the floor looks at per dispatch */
#define SCHED_IDLE	5
#define NSEC_PER_MSEC	1000000ULL
#define CLOCK_MONOTONIC	1

/* Read-only options, set by the control plane before load. */
const volatile u64 slice_ns = 5 * NSEC_PER_MSEC;
const volatile u64 batch_slice_ns = 2 * NSEC_PER_MSEC;
const volatile u32 nr_cpus = 1;
const volatile bool fair_only;		/* policy "fair": no tiers at all */
const volatile bool gpu_preempts_normal = true;
const volatile bool sched_idle_is_batch;
const volatile u32 detect_scope = SCOPE_THREAD;

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

/* Tasks in each tier, as of their last classification. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_TIERS);
	__type(key, u32);
	__type(value, s64);
} tier_tasks SEC(".maps");

struct task_ctx {
	u64 enq_at;
	u64 run_at;
	u32 tier;
	bool floor_served;	/* dispatched by the starvation floor */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

struct cpu_ctx {
	u32 tier;		/* tier of the task running, or TIER_IDLE */
	u64 throttled_since;	/* went idle with batch held back by the quota */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct cpu_ctx);
} cpu_ctxs SEC(".maps");

struct period_timer {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct period_timer);
} period_timers SEC(".maps");

u64 vtime_now;
u64 batch_used_ns;	/* batch CPU time in the current quota period */
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

static u32 log2_bucket(u64 v)
{
	u32 b = 0;

	bpf_for(b, 0, WAIT_BUCKETS - 1) {
		if (v < (2ULL << b))
			break;
	}
	return b;
}

static u32 cgroup_tier(struct task_struct *p)
{
	struct cgroup *cgrp = p->cgroups->dfl_cgrp;
	u32 *tier;
	u64 id;
	int level;

	/* The deepest configured ancestor decides, so a subtree inherits. */
	bpf_for(level, 0, CGROUP_DEPTH) {
		if (!cgrp)
			break;
		id = cgrp->kn->id;
		tier = bpf_map_lookup_elem(&tier_cgroups, &id);
		if (tier)
			return *tier;
		cgrp = cgrp->level > 0 ? bpf_core_cast(cgrp->self.parent, struct cgroup) : NULL;
	}
	return TIER_UNSET;
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

static bool gpu_tagged(struct task_struct *p, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	u32 key = detect_scope == SCOPE_PROCESS ? p->tgid : p->pid;
	u64 *seen = bpf_map_lookup_elem(&gpu_tags, &key);

	return t && seen && now - *seen < t->gpu_ttl_ns;
}

static u32 classify(struct task_struct *p, u64 now)
{
	u32 tier;

	if (fair_only)
		return TIER_NORMAL;
	tier = pinned_tier(p);
	if (tier < NR_TIERS)
		return tier;
	if (gpu_tagged(p, now))
		return TIER_GPU;
	if (sched_idle_is_batch && p->policy == SCHED_IDLE)
		return TIER_BATCH;
	return TIER_NORMAL;
}

static bool batch_budget_left(void)
{
	struct scx_gpu_tunables *t = tun();

	if (!t)
		return false;
	return batch_used_ns * 100 < (u64)t->batch_quota_pct * t->batch_period_ns * nr_cpus;
}

/* Is @cpu, running a task of tier @c->tier, a CPU @p may take over? */
static bool victim_ok(struct task_struct *p, s32 cpu, struct cpu_ctx *c, u32 lowest,
		      u32 than)
{
	return c->tier != TIER_IDLE && c->tier >= lowest && c->tier > than &&
	       bpf_cpumask_test_cpu(cpu, p->cpus_ptr);
}

/*
 * A CPU running a task of a lower tier than @tier (batch first, then
 * normal when allowed), which @p may run on; its previous CPU first, to
 * keep it where its cache is. Claimed for @tier at once so that concurrent
 * wakers pick different victims.
 */
static s32 find_victim(struct task_struct *p, u32 tier)
{
	u32 lowest = tier == TIER_GPU && gpu_preempts_normal ? TIER_NORMAL : TIER_BATCH;
	s32 cpu, prev = scx_bpf_task_cpu(p), best = -1;
	u32 best_tier = tier;
	struct cpu_ctx *c = cpu_ctx_of(prev);

	if (c && victim_ok(p, prev, c, lowest, best_tier)) {
		best = prev;
		best_tier = c->tier;
	}
	bpf_for(cpu, 0, nr_cpus) {
		if (cpu >= MAX_CPUS || best_tier == TIER_BATCH)
			break;
		c = cpu_ctx_of(cpu);
		if (c && victim_ok(p, cpu, c, lowest, best_tier)) {
			best = cpu;
			best_tier = c->tier;
		}
	}
	if (best >= 0) {
		c = cpu_ctx_of(best);
		if (c)
			c->tier = tier;
	}
	return best;
}

static void count_preemption(u32 tier)
{
	struct scx_gpu_stats *s = stat();

	if (s && tier < NR_TIERS)
		s->tier[tier].preemptions++;
}

static void enqueue_gpu(struct task_struct *p, u64 enq_flags)
{
	s32 cpu;

	/*
	 * Only a waking task preempts. A task whose slice ran out goes back to
	 * the tier queue, and its own CPU, rescheduling now, pulls it again.
	 */
	if (!(enq_flags & SCX_ENQ_WAKEUP)) {
		dsq_insert(p, DSQ_GPU, slice_ns, enq_flags);
		return;
	}
	cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	if (cpu >= 0) {
		dsq_insert(p, SCX_DSQ_LOCAL_ON | cpu, slice_ns, enq_flags);
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		return;
	}
	cpu = find_victim(p, TIER_GPU);
	if (cpu >= 0) {
		dsq_insert(p, SCX_DSQ_LOCAL_ON | cpu, slice_ns, enq_flags | SCX_ENQ_PREEMPT);
		count_preemption(TIER_GPU);
		return;
	}
	dsq_insert(p, DSQ_GPU, slice_ns, enq_flags);
}

static void enqueue_normal(struct task_struct *p, u64 enq_flags)
{
	u64 vtime = p->scx.dsq_vtime;
	s32 cpu;

	/* A sleeper gets at most one slice of credit. */
	if ((s64)(vtime - (vtime_now - slice_ns)) < 0)
		vtime = vtime_now - slice_ns;
	dsq_insert_vtime(p, DSQ_NORMAL, slice_ns, vtime, enq_flags);
	if (fair_only || !(enq_flags & SCX_ENQ_WAKEUP))
		return;
	cpu = find_victim(p, TIER_NORMAL);
	if (cpu >= 0) {
		scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
		count_preemption(TIER_NORMAL);
	}
}

s32 BPF_STRUCT_OPS(gpu_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	struct task_ctx *tctx = task_ctx_of(p);
	bool is_idle = false;
	s32 cpu;
	u64 now;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (!is_idle || !tctx)
		return cpu;
	now = bpf_ktime_get_ns();
	set_task_tier(tctx, classify(p, now));
	/* Batch must go through its queue: the quota decides when it runs. */
	if (tctx->tier != TIER_BATCH) {
		tctx->enq_at = now;
		dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
	}
	return cpu;
}

void BPF_STRUCT_OPS(gpu_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = task_ctx_of(p);
	u64 now = bpf_ktime_get_ns();
	u32 tier = classify(p, now);

	if (tctx) {
		set_task_tier(tctx, tier);
		tctx->enq_at = now;
	}
	/* The last runnable task keeps its CPU unless it is batch over quota. */
	if ((enq_flags & SCX_ENQ_LAST) && (tier != TIER_BATCH || batch_budget_left())) {
		dsq_insert(p, SCX_DSQ_LOCAL, tier == TIER_BATCH ? batch_slice_ns : slice_ns,
			   enq_flags);
		return;
	}
	if (tier == TIER_GPU)
		enqueue_gpu(p, enq_flags);
	else if (tier == TIER_BATCH)
		/*
		 * Ordered by enqueue time, whatever the flags say (a re-enqueue
		 * may ask for the head): the head is always the longest waiter,
		 * which is the one task the starvation floor looks at.
		 */
		dsq_insert_vtime(p, DSQ_BATCH, batch_slice_ns, now, enq_flags & ~SCX_ENQ_HEAD);
	else
		enqueue_normal(p, enq_flags);
}

/*
 * The starvation floor: move to @cpu the first of the oldest few tasks of
 * @dsq that waited longer than floor_ns and may run there. The normal queue is in vtime
 * order, so the longest waiter is not always its head.
 */
static bool serve_starving(u64 dsq_id, s32 cpu, u64 now)
{
	struct scx_gpu_tunables *t = tun();
	struct scx_gpu_stats *s;
	struct task_struct *p;
	struct task_ctx *tctx;
	u32 scanned = 0;

	if (!t || !scx_bpf_dsq_nr_queued(dsq_id))
		return false;
	bpf_for_each(scx_dsq, p, dsq_id, 0) {
		if (++scanned > FLOOR_SCAN)
			break;
		tctx = task_ctx_of(p);
		/* A task pinned elsewhere is served by its own CPU's dispatch. */
		if (!tctx || now - tctx->enq_at <= t->floor_ns ||
		    !bpf_cpumask_test_cpu(cpu, p->cpus_ptr))
			continue;
		tctx->floor_served = true;
		if (dsq_move(BPF_FOR_EACH_ITER, p, SCX_DSQ_LOCAL, 0)) {
			s = stat();
			if (s)
				s->floor_dispatches++;
			return true;
		}
		tctx->floor_served = false;
	}
	return false;
}

void BPF_STRUCT_OPS(gpu_dispatch, s32 cpu, struct task_struct *prev)
{
	u64 now = bpf_ktime_get_ns();
	struct cpu_ctx *c;

	if (serve_starving(DSQ_BATCH, cpu, now) || serve_starving(DSQ_NORMAL, cpu, now))
		return;
	if (dsq_move_to_local(DSQ_GPU) || dsq_move_to_local(DSQ_NORMAL))
		return;
	if (!scx_bpf_dsq_nr_queued(DSQ_BATCH))
		return;
	if (batch_budget_left()) {
		dsq_move_to_local(DSQ_BATCH);
		return;
	}
	c = cpu_ctx_of(cpu);
	if (c && !c->throttled_since)
		c->throttled_since = now;
}

void BPF_STRUCT_OPS(gpu_running, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct scx_gpu_stats *s = stat();
	struct cpu_ctx *c = cpu_ctx_of(bpf_get_smp_processor_id());
	u64 now = bpf_ktime_get_ns();
	struct tier_stats *ts;

	if (!tctx)
		return;
	tctx->run_at = now;
	if (c) {
		/* A floor-served task keeps its CPU for its slice: no tier preempts it. */
		c->tier = tctx->floor_served ? TIER_GPU : tctx->tier;
		tctx->floor_served = false;
		if (c->throttled_since) {
			if (s)
				s->batch_throttled_ns += now - c->throttled_since;
			c->throttled_since = 0;
		}
	}
	if (tctx->tier == TIER_NORMAL && (s64)(p->scx.dsq_vtime - vtime_now) > 0)
		vtime_now = p->scx.dsq_vtime;
	if (!s || tctx->tier >= NR_TIERS)
		return;
	ts = &s->tier[tctx->tier];
	ts->runs++;
	if (tctx->enq_at) {
		/* The mask proves the index in bounds to the verifier. */
		ts->wait_hist[log2_bucket(now - tctx->enq_at) & (WAIT_BUCKETS - 1)]++;
		tctx->enq_at = 0;
	}
}

void BPF_STRUCT_OPS(gpu_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct scx_gpu_stats *s = stat();
	struct cpu_ctx *c = cpu_ctx_of(bpf_get_smp_processor_id());
	u64 used;

	if (c)
		c->tier = TIER_IDLE;
	if (!tctx || !tctx->run_at)
		return;
	used = bpf_ktime_get_ns() - tctx->run_at;
	tctx->run_at = 0;
	if (tctx->tier == TIER_NORMAL)
		p->scx.dsq_vtime += used * 100 / p->scx.weight;
	else if (tctx->tier == TIER_BATCH)
		__sync_fetch_and_add(&batch_used_ns, used);
	if (s && tctx->tier < NR_TIERS)
		s->tier[tctx->tier].runtime_ns += used;
}

void BPF_STRUCT_OPS(gpu_enable, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);

	p->scx.dsq_vtime = vtime_now;
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

/* Each quota period: refill the batch budget and wake idle CPUs for batch. */
static int period_tick(void *map, int *key, struct period_timer *pt)
{
	struct scx_gpu_tunables *t = tun();
	s32 cpu;

	batch_used_ns = 0;
	if (scx_bpf_dsq_nr_queued(DSQ_BATCH)) {
		bpf_for(cpu, 0, nr_cpus)
			scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	}
	bpf_timer_start(&pt->timer, t ? t->batch_period_ns : 100 * NSEC_PER_MSEC, 0);
	return 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(gpu_init)
{
	struct period_timer *pt = bpf_map_lookup_elem(&period_timers, &zero);
	struct scx_gpu_tunables *t = tun();
	s32 ret;

	ret = scx_bpf_create_dsq(DSQ_GPU, -1) ?: scx_bpf_create_dsq(DSQ_NORMAL, -1) ?:
	      scx_bpf_create_dsq(DSQ_BATCH, -1);
	if (ret)
		return ret;
	if (!pt || !t)
		return -ENOENT;
	bpf_timer_init(&pt->timer, &period_timers, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&pt->timer, period_tick);
	return bpf_timer_start(&pt->timer, t->batch_period_ns, 0);
}

void BPF_STRUCT_OPS(gpu_exit, struct scx_exit_info *ei)
{
	bpf_probe_read_kernel_str(exit_info.reason, sizeof(exit_info.reason), ei->reason);
	bpf_probe_read_kernel_str(exit_info.msg, sizeof(exit_info.msg), ei->msg);
	exit_info.exit_code = ei->exit_code;
	/* Written last: the control plane polls kind to learn of the exit. */
	asm volatile("" ::: "memory");
	exit_info.kind = ei->kind;
}

/* GPU detection: attached by the control plane to the CUDA launch family. */
SEC("uprobe")
int BPF_UPROBE(detect_launch)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 key = detect_scope == SCOPE_PROCESS ? id >> 32 : (u32)id;
	u64 now = bpf_ktime_get_ns();
	struct scx_gpu_stats *s = stat();

	bpf_map_update_elem(&gpu_tags, &key, &now, BPF_ANY);
	if (s)
		s->detector_hits++;
	return 0;
}

SEC(".struct_ops.link")
struct sched_ext_ops gpu_ops = {
	.select_cpu	= (void *)gpu_select_cpu,
	.enqueue	= (void *)gpu_enqueue,
	.dispatch	= (void *)gpu_dispatch,
	.running	= (void *)gpu_running,
	.stopping	= (void *)gpu_stopping,
	.enable		= (void *)gpu_enable,
	.disable	= (void *)gpu_disable,
	.init_task	= (void *)gpu_init_task,
	.init		= (void *)gpu_init,
	.exit		= (void *)gpu_exit,
	.flags		= SCX_OPS_ENQ_LAST,
	.name		= "scx_gpu",
};
