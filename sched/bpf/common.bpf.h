/* SPDX-License-Identifier: GPL-2.0 */
/* What every scx-gpu BPF program includes. */
#ifndef __SCX_GPU_COMMON_BPF_H
#define __SCX_GPU_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define ENOENT	2
#define ENOMEM	12

/* The iterator bpf_for_each() (libbpf's bpf_helpers.h) declares. */
#define BPF_FOR_EACH_ITER (&___it)

/* printf-style wrappers of the sched_ext *_bstr kfuncs (error exit, debug dump). */
#define SCX_GPU_BSTR(kfunc, fmt, args...)					\
({										\
	static char ___fmt[] = fmt;						\
	unsigned long long ___param[___bpf_narg(args)];				\
										\
	_Pragma("GCC diagnostic push")						\
	_Pragma("GCC diagnostic ignored \"-Wint-conversion\"")			\
	___bpf_fill(___param, args);						\
	_Pragma("GCC diagnostic pop")						\
	kfunc(___fmt, ___param, sizeof(___param));				\
})
#define scx_gpu_error(fmt, args...)	SCX_GPU_BSTR(scx_bpf_error_bstr, fmt, ##args)
#define scx_gpu_dump(fmt, args...)	SCX_GPU_BSTR(scx_bpf_dump_bstr, fmt, ##args)

/*
 * A global function: the verifier checks it once, on its own, rather than
 * at each call in each caller's state, which for the dispatch path costs
 * hundreds of times more (load time, and the margin to the verifier's
 * limit). Its pointer arguments need tags (__arg_trusted, __arg_nonnull);
 * not __hidden, which makes it static to the verifier again.
 */
#define __scx_gpu_global __noinline

#define BPF_STRUCT_OPS(name, args...) \
	SEC("struct_ops/" #name) BPF_PROG(name, ##args)
#define BPF_STRUCT_OPS_SLEEPABLE(name, args...) \
	SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

#endif /* __SCX_GPU_COMMON_BPF_H */
