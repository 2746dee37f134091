/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The scx-gpu tracer: CUDA launches and syncs (uprobes on the driver), the
 * context switches and wakeups of traced processes, and hard/soft IRQs,
 * into one ring buffer of fixed-schema records (trace_intf.h).
 *
 * Processes are keyed by TGID and every thread of a traced process is
 * followed (the original tool looked thread ids up in a TGID map and so saw
 * only main threads). Hard and soft IRQs keep separate per-CPU entry stamps,
 * so a hard IRQ inside a softirq leaves both durations right.
 *
 * A uprobe counts only once attached, and a program may launch microseconds
 * after it maps libcuda (from its RPATH, a wheel, a container). So every
 * mapping of a libcuda file without probes is reported (the `libs` ring), and
 * a process of the traced command (TRACE_HOLD) is stopped as the mmap returns,
 * until user space has probed the file and continues it: no launch is missed.
 * Other processes are never stopped; their new libcuda is probed on notice.
 */
#include "common.bpf.h"
#include "trace_intf.h"

char _license[] SEC("license") = "GPL";

#define MAX_THREADS	65536
#define MAX_PROCESSES	4096
#define MAX_LIBS	256
#define LIBS_RING_BYTES	(64 << 10)
#define SIGSTOP		19
#define NR_MMAP		9	/* x86-64 */

/* Keep the record types in the object's BTF, where user space checks their mirrors. */
const struct gpu_trace_event *unused_event_type __attribute__((unused));
const struct gpu_lib_event *unused_lib_event_type __attribute__((unused));

/* Trace every process on its first launch (else only those in `traced`). */
const volatile bool trace_launchers = true;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20);	/* resized by the control plane */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, u32);		/* tgid */
	__type(value, u8);
} traced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, LIBS_RING_BYTES);
} libs SEC(".maps");

struct lib_key {
	u64 dev;
	u64 ino;
};

/* libcuda files with probes attached (filled by user space). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LIBS);
	__type(key, struct lib_key);
	__type(value, u8);
} probed_libs SEC(".maps");

struct thread_times {
	u64 last_on;
	u64 last_off;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, u32);		/* tid */
	__type(value, struct thread_times);
} times SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, u32);		/* tid */
	__type(value, u64);
} sync_start SEC(".maps");

struct irq_stamps {
	u64 hard;
	u64 soft;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct irq_stamps);
} irq_stamps SEC(".maps");

static const u32 zero;

static bool is_traced(u32 tgid)
{
	/* Reading the value keeps clang from OR-ing two lookups' pointers. */
	u8 *mark = bpf_map_lookup_elem(&traced, &tgid);

	return mark && *mark;
}

/* A zeroed record of @type for the current task, or NULL (a counted drop). */
static struct gpu_trace_event *reserve(u32 type)
{
	struct gpu_trace_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	u64 id = bpf_get_current_pid_tgid();
	u64 *dropped;

	if (!e) {
		dropped = bpf_map_lookup_elem(&drops, &zero);
		if (dropped)
			(*dropped)++;
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->type = type;
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static struct gpu_trace_event *launch_event(void)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u8 follow = TRACE_FOLLOW;

	if (!is_traced(tgid)) {
		if (!trace_launchers)
			return NULL;
		bpf_map_update_elem(&traced, &tgid, &follow, BPF_NOEXIST);
	}
	return reserve(EV_LAUNCH);
}

/*
 * The first n stack arguments (an 8-byte slot each) of the probed function:
 * at its entry the return address is at sp, and they follow. One read for
 * all: a helper call costs more than the bytes it copies. Zeroes on a fault.
 */
static __always_inline void stack_args(struct pt_regs *ctx, u64 *slots, u32 n)
{
	bpf_probe_read_user(slots, n * sizeof(*slots), (void *)(PT_REGS_SP(ctx) + 8));
}

/* cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sharedMem, hStream, params, extra) */
SEC("uprobe")
int BPF_UPROBE(on_launch_kernel, void *f, u32 gx, u32 gy, u32 gz, u32 bx, u32 by)
{
	struct gpu_trace_event *e = launch_event();
	u64 stack[3];	/* bz, sharedMem, hStream */

	if (!e)
		return 0;
	stack_args(ctx, stack, 3);
	e->api = bpf_get_attach_cookie(ctx);
	e->grid[0] = gx;
	e->grid[1] = gy;
	e->grid[2] = gz;
	e->block[0] = bx;
	e->block[1] = by;
	e->block[2] = stack[0];
	e->shared_mem = stack[1];
	e->stream = stack[2];
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* The leading fields of CUlaunchConfig. */
struct cu_launch_config {
	u32 grid[3];
	u32 block[3];
	u32 shared_mem;
	u64 stream;
};

/* cuLaunchKernelEx(const CUlaunchConfig *config, f, params, extra) */
SEC("uprobe")
int BPF_UPROBE(on_launch_kernel_ex, struct cu_launch_config *config)
{
	struct gpu_trace_event *e = launch_event();
	struct cu_launch_config c = {};

	if (!e)
		return 0;
	bpf_probe_read_user(&c, sizeof(c), config);
	e->api = bpf_get_attach_cookie(ctx);
	__builtin_memcpy(e->grid, c.grid, sizeof(c.grid));
	__builtin_memcpy(e->block, c.block, sizeof(c.block));
	e->shared_mem = c.shared_mem;
	e->stream = c.stream;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* cuGraphLaunch(hGraphExec, hStream): a whole graph, no per-kernel launch. */
SEC("uprobe")
int BPF_UPROBE(on_graph_launch, void *graph, u64 stream)
{
	struct gpu_trace_event *e = launch_event();

	if (!e)
		return 0;
	e->api = bpf_get_attach_cookie(ctx);
	e->stream = stream;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* cudaLaunchKernel(func, dim3 grid, dim3 block, args, sharedMem, stream): each
 * dim3 comes packed in two registers (x | y << 32, then z), args in the sixth,
 * sharedMem and stream on the stack. */
SEC("uprobe")
int BPF_UPROBE(on_cuda_launch_kernel, void *func, u64 gxy, u64 gz, u64 bxy, u64 bz, void **args)
{
	struct gpu_trace_event *e = launch_event();
	u64 stack[2];	/* sharedMem, stream */

	if (!e)
		return 0;
	stack_args(ctx, stack, 2);
	e->api = bpf_get_attach_cookie(ctx);
	e->grid[0] = (u32)gxy;
	e->grid[1] = gxy >> 32;
	e->grid[2] = (u32)gz;
	e->block[0] = (u32)bxy;
	e->block[1] = bxy >> 32;
	e->block[2] = (u32)bz;
	e->shared_mem = stack[0];
	e->stream = stack[1];
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("uprobe")
int BPF_UPROBE(on_sync_enter)
{
	u64 id = bpf_get_current_pid_tgid(), now = bpf_ktime_get_ns();
	u32 tid = (u32)id;
	struct gpu_trace_event *e;

	if (!is_traced(id >> 32))
		return 0;
	bpf_map_update_elem(&sync_start, &tid, &now, BPF_ANY);
	e = reserve(EV_SYNC_ENTER);
	if (!e)
		return 0;
	e->api = bpf_get_attach_cookie(ctx);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("uretprobe")
int BPF_URETPROBE(on_sync_exit)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *start = bpf_map_lookup_elem(&sync_start, &tid);
	struct gpu_trace_event *e;

	if (!start)
		return 0;
	e = reserve(EV_SYNC_EXIT);
	if (e) {
		e->api = bpf_get_attach_cookie(ctx);
		e->duration_ns = e->ts_ns - *start;
		bpf_ringbuf_submit(e, 0);
	}
	bpf_map_delete_elem(&sync_start, &tid);
	return 0;
}

static struct thread_times *times_of(u32 tid)
{
	struct thread_times zeroed = {}, *t = bpf_map_lookup_elem(&times, &tid);

	if (t)
		return t;
	bpf_map_update_elem(&times, &tid, &zeroed, BPF_NOEXIST);
	return bpf_map_lookup_elem(&times, &tid);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	bool prev_traced = is_traced(prev->tgid), next_traced = is_traced(next->tgid);
	u64 now = bpf_ktime_get_ns(), next_off = 0, prev_on = 0;
	struct thread_times *t;
	struct gpu_trace_event *e;

	if (!prev_traced && !next_traced)
		return 0;
	if (prev_traced && (t = times_of(prev->pid))) {
		prev_on = t->last_on;
		t->last_off = now;
	}
	if (next_traced && (t = times_of(next->pid))) {
		next_off = t->last_off;
		t->last_on = now;
	}
	e = reserve(EV_SCHED_SWITCH);
	if (!e)
		return 0;
	/* The event belongs to the traced side, prev first. */
	e->pid = prev_traced ? prev->tgid : next->tgid;
	e->tid = prev_traced ? prev->pid : next->pid;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), prev_traced ? prev->comm : next->comm);
	e->prev_tid = prev->pid;
	e->next_tid = next->pid;
	e->prev_state = prev_state;
	e->flags = preempt ? EV_FLAG_PREEMPT : 0;
	e->last_offcpu_ns = next_off;
	e->last_oncpu_ns = prev_on;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(on_wakeup, struct task_struct *p)
{
	struct gpu_trace_event *e;

	if (!is_traced(p->tgid))
		return 0;
	e = reserve(EV_SCHED_WAKEUP);
	if (!e)
		return 0;
	e->pid = p->tgid;
	e->tid = p->pid;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), p->comm);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Children of traced processes are traced too (a launcher may fork workers),
 * and held like their parent. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 ptgid = parent->tgid, tgid = child->tgid;
	u8 *mark = bpf_map_lookup_elem(&traced, &ptgid), how;

	if (!mark || !*mark)
		return 0;
	how = *mark;
	bpf_map_update_elem(&traced, &tgid, &how, BPF_NOEXIST);
	return 0;
}

/* "libcuda.so", then nothing or ".<digits>" groups (libcuda.so.580.159.03). */
static bool is_libcuda(const char *name)
{
	static const char stem[] = "libcuda.so";
	int i;

	for (i = 0; i < sizeof(stem) - 1; i++)
		if (name[i] != stem[i])
			return false;
	if (name[i] && name[i] != '.')
		return false;
	for (; i < LIB_NAME_LEN; i++) {
		if (!name[i])
			return name[i - 1] != '.';
		if (name[i] == '.' ? name[i - 1] == '.' : name[i] < '0' || name[i] > '9')
			return false;
	}
	return false;	/* longer than any driver's name */
}

/* The file behind descriptor fd of the current task, or NULL. */
static struct file *current_file(long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd), *file = NULL;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

/*
 * mmap(addr, len, prot, flags, fd, off) of a libcuda file without probes, as
 * the kernel picks the address (the dynamic linker's first mmap of a library):
 * report it; hold a process of the traced command (SIGSTOP takes effect as
 * the mmap returns, with the mapping made). This tracepoint costs nothing
 * outside mmap, unlike a syscall hook; kernels and sandboxes that refuse
 * fentry programs (EPERM) still allow it.
 */
SEC("tp_btf/vm_unmapped_area")
int BPF_PROG(on_unmapped_area, unsigned long addr, struct vm_unmapped_area_info *info)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	char name[LIB_NAME_LEN] = {};
	struct gpu_lib_event *e;
	struct lib_key key;
	struct file *file;
	u8 *mark;

	if (regs->orig_ax != NR_MMAP || (long)regs->r8 < 0)
		return 0;
	file = current_file(regs->r8);
	if (!file)
		return 0;
	bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
	if (!is_libcuda(name))
		return 0;
	key.dev = BPF_CORE_READ(file, f_inode, i_sb, s_dev);
	key.ino = BPF_CORE_READ(file, f_inode, i_ino);
	if (bpf_map_lookup_elem(&probed_libs, &key))
		return 0;
	e = bpf_ringbuf_reserve(&libs, sizeof(*e), 0);
	if (!e)
		return 0;	/* never hold a process that user space would not hear of */
	mark = bpf_map_lookup_elem(&traced, &tgid);
	e->dev = key.dev;
	e->ino = key.ino;
	e->tgid = tgid;
	e->held = mark && *mark == TRACE_HOLD && !bpf_send_signal(SIGSTOP);
	__builtin_memcpy(e->name, name, sizeof(name));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * One IRQ event: an entry stamps its slot (hard or soft, so a hard IRQ inside
 * a softirq keeps both right), an exit reports the time since the stamp.
 * Softirqs count only when they interrupt a traced process: they are the
 * time taken from the GPU job, and network noise elsewhere would flood the
 * ring. Hard IRQs are few and all kept (devices interrupt any CPU).
 */
static int irq_event(u32 type, u32 irq, bool hard, bool entry, const char *name)
{
	struct irq_stamps *s;
	struct gpu_trace_event *e;
	u64 *slot;

	if (!hard && !is_traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = bpf_map_lookup_elem(&irq_stamps, &zero);
	e = reserve(type);
	if (!e)
		return 0;
	e->irq = irq;
	if (name)
		bpf_probe_read_kernel_str(e->irq_name, sizeof(e->irq_name), name);
	if (s) {
		slot = hard ? &s->hard : &s->soft;
		if (entry) {
			*slot = e->ts_ns;
		} else if (*slot) {
			e->duration_ns = e->ts_ns - *slot;
			*slot = 0;
		}
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/irq_handler_entry")
int BPF_PROG(on_hardirq_entry, int irq, struct irqaction *action)
{
	return irq_event(EV_HARDIRQ_ENTRY, irq, true, true, action->name);
}

SEC("tp_btf/irq_handler_exit")
int BPF_PROG(on_hardirq_exit, int irq, struct irqaction *action, int ret)
{
	return irq_event(EV_HARDIRQ_EXIT, irq, true, false, action->name);
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(on_softirq_entry, unsigned int vec)
{
	return irq_event(EV_SOFTIRQ_ENTRY, vec, false, true, NULL);
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(on_softirq_exit, unsigned int vec)
{
	return irq_event(EV_SOFTIRQ_EXIT, vec, false, false, NULL);
}
