// SPDX-License-Identifier: GPL-2.0
/*
 * A synthetic GPU launcher: the CPU side of a launch-bound decode loop.
 *
 * Worker threads (never the main thread) produce "tokens". A token is
 * --launches kernel launches through libcuda, each followed by --work-us of
 * CPU work (measured in thread CPU time, so preemption shows up as longer
 * tokens), then a stream synchronise that waits --gpu-wait-us (the stub
 * driver sleeps that long). Prints one JSON object with tokens/s and token
 * time percentiles. Tokens started in the first --warmup seconds are not
 * counted (a scheduler may need that long to detect a new launcher).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS	16
#define MAX_TOKENS	(1 << 20)

typedef int (*launch_kernel_fn)(void *, unsigned, unsigned, unsigned, unsigned, unsigned,
				unsigned, unsigned, void *, void **, void **);
typedef int (*launch_ex_fn)(const void *, void *, void **, void **);
typedef int (*graph_launch_fn)(void *, void *);
typedef int (*sync_fn)(void *);
typedef struct { unsigned int x, y, z; } dim3;
typedef int (*cuda_launch_fn)(const void *, dim3, dim3, void **, size_t, void *);

struct launch_config {
	unsigned int grid[3], block[3], shmem;
	void *stream;
	void *attrs;
	unsigned int nattrs;
};

static struct {
	double duration_s, linger_s, warmup_s;
	long launches, work_us, gpu_wait_us;
	int threads;
	const char *api, *lib, *cudart;
} opt = { 5.0, 0.0, 0.0, 10, 500, 2000, 1, "ex", "libcuda.so.1", "libcudart.so.13" };

static launch_kernel_fn launch_kernel;
static launch_ex_fn launch_ex;
static graph_launch_fn graph_launch;
static sync_fn stream_sync;
static cuda_launch_fn cuda_launch;

struct worker {
	pthread_t thread;
	pid_t tid;
	long ntokens;
	long launched;		/* every launch, warm-up included */
	double *token_us;
};

static double now_s(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Burn us microseconds of this thread's CPU time. */
static void cpu_work(long us)
{
	double until = now_s(CLOCK_THREAD_CPUTIME_ID) + us / 1e6;

	while (now_s(CLOCK_THREAD_CPUTIME_ID) < until)
		;
}

/*
 * Each entry point gets its own argument values, so a tracer's decoding of
 * every argument can be checked: cuLaunchKernel grid 128x2x3, block 256x4x5,
 * 4096 B shared, stream 0x5; cuLaunchKernelEx grid 64x7x1, block 32x8x2,
 * 2048 B, stream 0x6; cuGraphLaunch stream 0x7. "all" cycles through the
 * three (launch i uses kernel, Ex, graph for i % 3 = 0, 1, 2). "runtime" calls
 * cudaLaunchKernel (grid 16x2x1, block 512x1x1, 1024 B, stream 0x8) from
 * --cudart-lib, which launches through the driver's cuLaunchKernel.
 */
static void launch_one(long i)
{
	static const struct launch_config cfg = { { 64, 7, 1 }, { 32, 8, 2 }, 2048,
						  (void *)0x6, NULL, 0 };
	const char *api = opt.api;

	if (!strcmp(api, "all"))
		api = i % 3 == 0 ? "kernel" : i % 3 == 1 ? "ex" : "graph";
	else if (!strcmp(api, "mixed"))
		api = i % 2 ? "kernel" : "ex";
	if (!strcmp(api, "runtime"))
		cuda_launch((void *)0x1, (dim3){ 16, 2, 1 }, (dim3){ 512, 1, 1 }, NULL, 1024,
			    (void *)0x8);
	else if (!strcmp(api, "graph"))
		graph_launch((void *)0x9, (void *)0x7);
	else if (!strcmp(api, "kernel"))
		launch_kernel((void *)0x1, 128, 2, 3, 256, 4, 5, 4096, (void *)0x5, NULL, NULL);
	else
		launch_ex(&cfg, (void *)0x1, NULL, NULL);
}

static void *work(void *arg)
{
	struct worker *w = arg;
	double measure_from = now_s(CLOCK_MONOTONIC) + opt.warmup_s;
	double end = measure_from + opt.duration_s;

	w->tid = syscall(SYS_gettid);
	while (now_s(CLOCK_MONOTONIC) < end && w->ntokens < MAX_TOKENS) {
		double start = now_s(CLOCK_MONOTONIC);

		for (long i = 0; i < opt.launches; i++) {
			launch_one(i);
			w->launched++;
			cpu_work(opt.work_us);
		}
		stream_sync((void *)0x5);
		if (start >= measure_from)
			w->token_us[w->ntokens++] = (now_s(CLOCK_MONOTONIC) - start) * 1e6;
	}
	/* Stay alive without launching, so a detector's tag can be seen to expire. */
	if (opt.linger_s > 0)
		usleep(opt.linger_s * 1e6);
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void load_driver(void)
{
	char wait[32];
	void *lib = dlopen(opt.lib, RTLD_NOW);

	if (!lib) {
		fprintf(stderr, "launcher: cannot load %s: %s\n", opt.lib, dlerror());
		exit(2);
	}
	launch_kernel = (launch_kernel_fn)dlsym(lib, "cuLaunchKernel");
	launch_ex = (launch_ex_fn)dlsym(lib, "cuLaunchKernelEx");
	graph_launch = (graph_launch_fn)dlsym(lib, "cuGraphLaunch");
	stream_sync = (sync_fn)dlsym(lib, "cuStreamSynchronize");
	if (!launch_kernel || !launch_ex || !graph_launch || !stream_sync) {
		fprintf(stderr, "launcher: %s lacks the launch entry points\n", opt.lib);
		exit(2);
	}
	if (!strcmp(opt.api, "runtime")) {
		void *rt = dlopen(opt.cudart, RTLD_NOW);

		cuda_launch = rt ? (cuda_launch_fn)dlsym(rt, "cudaLaunchKernel") : NULL;
		if (!cuda_launch) {
			fprintf(stderr, "launcher: no cudaLaunchKernel in %s\n", opt.cudart);
			exit(2);
		}
	}
	snprintf(wait, sizeof(wait), "%ld", opt.gpu_wait_us);
	setenv("SCX_GPU_STUB_SYNC_US", wait, 1);
}

static void usage(void)
{
	fprintf(stderr, "usage: launcher [--duration S] [--launches N] [--work-us US] "
		"[--gpu-wait-us US] [--threads N] [--api ex|kernel|graph|mixed|all|runtime] "
		"[--warmup S] [--linger S] [--cuda-lib PATH] [--cudart-lib PATH]\n");
	exit(2);
}

static void parse(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "duration", 1, 0, 'd' }, { "launches", 1, 0, 'l' }, { "work-us", 1, 0, 'w' },
		{ "gpu-wait-us", 1, 0, 'g' }, { "threads", 1, 0, 't' }, { "api", 1, 0, 'a' },
		{ "linger", 1, 0, 'L' }, { "cuda-lib", 1, 0, 'c' }, { "warmup", 1, 0, 'W' },
		{ "cudart-lib", 1, 0, 'r' }, { 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'd': opt.duration_s = atof(optarg); break;
		case 'l': opt.launches = atol(optarg); break;
		case 'w': opt.work_us = atol(optarg); break;
		case 'g': opt.gpu_wait_us = atol(optarg); break;
		case 't': opt.threads = atoi(optarg); break;
		case 'a': opt.api = optarg; break;
		case 'L': opt.linger_s = atof(optarg); break;
		case 'W': opt.warmup_s = atof(optarg); break;
		case 'r': opt.cudart = optarg; break;
		case 'c': opt.lib = optarg; break;
		default: usage();
		}
	}
	if (opt.threads < 1 || opt.threads > MAX_THREADS || opt.launches < 1 ||
	    opt.duration_s <= 0 || opt.warmup_s < 0)
		usage();
	if (strcmp(opt.api, "ex") && strcmp(opt.api, "kernel") && strcmp(opt.api, "graph") &&
	    strcmp(opt.api, "mixed") && strcmp(opt.api, "all") && strcmp(opt.api, "runtime"))
		usage();
}

int main(int argc, char **argv)
{
	struct worker workers[MAX_THREADS] = { 0 };
	static double all[MAX_TOKENS];
	long n = 0, launches;
	double start, elapsed;

	parse(argc, argv);
	load_driver();
	start = now_s(CLOCK_MONOTONIC);
	for (int i = 0; i < opt.threads; i++) {
		workers[i].token_us = calloc(MAX_TOKENS, sizeof(double));
		pthread_create(&workers[i].thread, NULL, work, &workers[i]);
	}
	for (int i = 0; i < opt.threads; i++)
		pthread_join(workers[i].thread, NULL);
	elapsed = now_s(CLOCK_MONOTONIC) - start - opt.linger_s - opt.warmup_s;
	for (int i = 0; i < opt.threads; i++)
		for (long t = 0; t < workers[i].ntokens && n < MAX_TOKENS; t++)
			all[n++] = workers[i].token_us[t];
	qsort(all, n, sizeof(double), cmp_double);
	launches = n * opt.launches;
	printf("{\"pid\": %d, \"tids\": [", getpid());
	for (int i = 0; i < opt.threads; i++)
		printf("%s%d", i ? ", " : "", workers[i].tid);
	printf("], \"thread_launches\": [");
	for (int i = 0; i < opt.threads; i++)
		printf("%s%ld", i ? ", " : "", workers[i].launched);
	printf("], \"tokens\": %ld, \"launches\": %ld, \"seconds\": %.3f, "
	       "\"tokens_per_s\": %.3f, \"token_us_p50\": %.1f, \"token_us_p99\": %.1f}\n",
	       n, launches, elapsed, n / elapsed, n ? all[n / 2] : 0.0,
	       n ? all[(long)(n * 0.99)] : 0.0);
	return 0;
}
