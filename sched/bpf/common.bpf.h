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

#define BPF_STRUCT_OPS(name, args...) \
	SEC("struct_ops/" #name) BPF_PROG(name, ##args)
#define BPF_STRUCT_OPS_SLEEPABLE(name, args...) \
	SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

#endif /* __SCX_GPU_COMMON_BPF_H */
