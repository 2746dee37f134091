// SPDX-License-Identifier: GPL-2.0
/*
 * A task storm: --procs processes (forked at once) of --threads CPU-bound
 * threads each, spinning for --seconds. Every thread records the longest
 * time it did not run (the largest gap between two consecutive clock reads,
 * its creation counted as its first read), which for a task that never
 * sleeps is the longest it waited while runnable. Each thread also times
 * itself on the CPU: the sum of the gaps shorter than RUN_GAP_S (a longer
 * one is time it did not run). Under sched_ext the VM's kernel charges
 * tasks that run after an idle gap with CPU time they did not use (cgroup
 * cpu.stat, schedstat), so a share of the CPUs is measured by this sum.
 * Prints one JSON object: the number of tasks, how many ran at all, the
 * longest gap of any and the seconds all of them ran. SIGTERM ends the
 * run early, with the same report. With --stats FILE the threads' records
 * live in FILE as they run (struct slot: 3 native doubles in 64 bytes),
 * so a reader can take the CPU time they timed over any window.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STACK_BYTES	(64 * 1024)
#define RUN_GAP_S	0.0005	/* a longer gap between two clock reads: not running */
#define WORK_PER_READ	1000	/* arithmetic between clock reads: a CPU hog, not a clock hog */

/* A cache line each: every thread updates its own as it spins. */
struct slot {
	double created;		/* when its creator asked for it */
	double worst_gap;	/* seconds; negative until it ran */
	double ran;		/* seconds on the CPU, timed by itself */
} __attribute__((aligned(64)));

static double seconds_total = 10.0;
static double end_at;
static volatile sig_atomic_t stopped;
static pid_t *workers;
static int nr_workers;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Work the compiler cannot drop: a linear congruential step. */
static unsigned long work(unsigned long x)
{
	int i;

	for (i = 0; i < WORK_PER_READ; i++)
		x = x * 6364136223846793005UL + 1442695040888963407UL;
	return x;
}

static void *spin(void *arg)
{
	struct slot *slot = arg;
	double last = slot->created, worst = 0.0, now;
	volatile unsigned long sink = 0;

	do {
		sink = work(sink);
		now = now_s();
		if (now - last > worst)
			worst = now - last;
		if (now - last < RUN_GAP_S)
			slot->ran += now - last;
		last = now;
	} while (now < end_at && !stopped);
	slot->worst_gap = worst;
	return NULL;
}

static void stop_worker(int sig)
{
	(void)sig;
	stopped = 1;
}

/* The parent passes SIGTERM on: every worker ends its run and reports. */
static void stop_all(int sig)
{
	int i;

	stopped = 1;
	for (i = 0; i < nr_workers; i++)
		kill(workers[i], sig);
}

static void run_process(struct slot *slots, int threads)
{
	pthread_t *tids = calloc(threads, sizeof(*tids));
	pthread_attr_t attr;
	int i, started = 0;

	signal(SIGTERM, stop_worker);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, STACK_BYTES);
	for (i = 0; i < threads; i++) {
		slots[i].created = now_s();
		if (pthread_create(&tids[i], &attr, spin, &slots[i]) == 0)
			started++;
		else
			break;
	}
	for (i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	_exit(started == threads ? 0 : 1);
}

/* The threads' records: shared with the workers, and with readers of @path. */
static struct slot *map_slots(const char *path, int n)
{
	size_t size = n * sizeof(struct slot);
	struct slot *slots;
	int fd;

	if (!path)
		return mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, size) < 0)
		return MAP_FAILED;
	slots = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return slots;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "procs", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "seconds", required_argument, NULL, 's' },
		{ "stats", required_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	int procs = 1, threads = 1, opt, i, status, failed = 0, ran = 0, n;
	struct slot *slots;
	const char *stats_path = NULL;
	double worst = 0.0, ran_s = 0.0;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'p': procs = atoi(optarg); break;
		case 't': threads = atoi(optarg); break;
		case 's': seconds_total = atof(optarg); break;
		case 'f': stats_path = optarg; break;
		default:
			fprintf(stderr, "usage: spinners --procs N --threads N --seconds S [--stats FILE]\n");
			return 2;
		}
	}
	if (procs < 1 || threads < 1 || seconds_total <= 0) {
		fprintf(stderr, "spinners: --procs, --threads and --seconds must be positive\n");
		return 2;
	}
	n = procs * threads;
	slots = map_slots(stats_path, n);
	if (slots == MAP_FAILED) {
		perror("spinners: mmap");
		return 1;
	}
	for (i = 0; i < n; i++)
		slots[i].worst_gap = -1.0;
	workers = calloc(procs, sizeof(*workers));
	if (!workers) {
		perror("spinners: calloc");
		return 1;
	}
	end_at = now_s() + seconds_total;
	for (i = 0; i < procs; i++) {
		pid_t pid = fork();

		if (pid < 0) {
			perror("spinners: fork");
			return 1;
		}
		if (pid == 0)
			run_process(slots + i * threads, threads);
		workers[nr_workers++] = pid;
	}
	signal(SIGTERM, stop_all);
	while (wait(&status) > 0)
		failed += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	for (i = 0; i < n; i++) {
		if (slots[i].worst_gap < 0)
			continue;
		ran++;
		ran_s += slots[i].ran;
		if (slots[i].worst_gap > worst)
			worst = slots[i].worst_gap;
	}
	printf("{\"tasks\": %d, \"ran\": %d, \"max_gap_s\": %.6f, \"ran_s\": %.6f, "
	       "\"failed_procs\": %d}\n", n, ran, worst, ran_s, failed);
	return failed ? 1 : 0;
}
