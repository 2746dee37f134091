// SPDX-License-Identifier: GPL-2.0
/*
 * A wake-up and context-switch microbenchmark: message passing over pipes.
 *
 * --groups groups of --pairs receivers and --pairs senders each. Every
 * receiver owns a pipe; every sender of a group writes --loops messages of
 * --size bytes to each receiver of its group, so every message is a possible
 * wake-up of a blocked reader, and a full pipe blocks its writers. Tasks are
 * threads or processes (--mode). All tasks wait at a start gate; the clock
 * runs from opening the gate until the last receiver has read everything.
 * Prints one JSON object: messages, seconds, messages per second, and the
 * tasks' voluntary (blocked) and involuntary (preempted) context switches.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE	PIPE_BUF	/* a message is written atomically */
#define MAX_TASKS	4096
#define EXIT_USAGE	2

static struct {
	long groups, pairs, loops, size;
	int processes;
} opt = { 4, 10, 200, 100, 1 };

static int gate[2];	/* closed by the main task to start everyone */

struct task {
	int *fds;		/* a receiver: its pipe; a sender: its group's pipes */
	int receiver;
	pthread_t thread;
	pid_t pid;
};

static void die(const char *what)
{
	fprintf(stderr, "wakebench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void wait_gate(void)
{
	char c;

	while (read(gate[0], &c, 1) < 0)
		if (errno != EINTR)
			die("read start gate");
}

static void full_write(int fd, const char *buf, long len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write");
		buf += n;
		len -= n;
	}
}

static void send_all(const struct task *t)
{
	char buf[MAX_SIZE];

	memset(buf, 's', sizeof(buf));
	for (long i = 0; i < opt.loops; i++)
		for (long r = 0; r < opt.pairs; r++)
			full_write(t->fds[2 * r + 1], buf, opt.size);
}

static void receive_all(const struct task *t)
{
	long left = opt.pairs * opt.loops * opt.size;
	char buf[MAX_SIZE];

	while (left > 0) {
		ssize_t n = read(t->fds[0], buf, left < opt.size ? left : opt.size);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("read");
		left -= n;
	}
}

static void *task_main(void *arg)
{
	const struct task *t = arg;

	wait_gate();
	if (t->receiver)
		receive_all(t);
	else
		send_all(t);
	return NULL;
}

static void start(struct task *t)
{
	if (!opt.processes) {
		errno = pthread_create(&t->thread, NULL, task_main, t);
		if (errno)
			die("pthread_create");
		return;
	}
	t->pid = fork();
	if (t->pid < 0)
		die("fork");
	if (t->pid == 0) {
		close(gate[1]);	/* the gate opens when the main task's end closes */
		task_main(t);
		_exit(0);
	}
}

static void finish(const struct task *t)
{
	int status;

	if (!opt.processes) {
		pthread_join(t->thread, NULL);
		return;
	}
	while (waitpid(t->pid, &status, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "wakebench: a task failed (status %d)\n", status);
		exit(1);
	}
}

static long number(const char *name, const char *text, long min, long max)
{
	char *end;
	long value = strtol(text, &end, 10);

	if (*text == '\0' || *end != '\0' || value < min || value > max) {
		fprintf(stderr, "wakebench: --%s %s: expected %ld to %ld\n", name, text, min, max);
		exit(EXIT_USAGE);
	}
	return value;
}

static void parse(int argc, char **argv)
{
	static const struct option options[] = {
		{ "groups", required_argument, NULL, 'g' },
		{ "pairs", required_argument, NULL, 'p' },
		{ "loops", required_argument, NULL, 'l' },
		{ "size", required_argument, NULL, 's' },
		{ "mode", required_argument, NULL, 'm' },
		{ 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (c) {
		case 'g': opt.groups = number("groups", optarg, 1, MAX_TASKS); break;
		case 'p': opt.pairs = number("pairs", optarg, 1, MAX_TASKS); break;
		case 'l': opt.loops = number("loops", optarg, 1, LONG_MAX / MAX_TASKS); break;
		case 's': opt.size = number("size", optarg, 1, MAX_SIZE); break;
		case 'm':
			if (strcmp(optarg, "process") && strcmp(optarg, "thread")) {
				fprintf(stderr, "wakebench: --mode %s: process or thread\n", optarg);
				exit(EXIT_USAGE);
			}
			opt.processes = !strcmp(optarg, "process");
			break;
		default:
			exit(EXIT_USAGE);
		}
	}
	if (optind < argc || 2 * opt.groups * opt.pairs > MAX_TASKS) {
		fprintf(stderr, "wakebench: at most %d tasks (2 x groups x pairs), no arguments\n",
			MAX_TASKS);
		exit(EXIT_USAGE);
	}
}

int main(int argc, char **argv)
{
	long ntasks, per_group;
	struct task *tasks;
	double begin, seconds;
	struct rusage usage;
	long messages;

	parse(argc, argv);
	signal(SIGPIPE, SIG_IGN);	/* a dead receiver: the sender fails with EPIPE */
	per_group = 2 * opt.pairs;
	ntasks = opt.groups * per_group;
	tasks = calloc(ntasks, sizeof(*tasks));
	if (!tasks || pipe(gate))
		die("setup");
	for (long g = 0; g < opt.groups; g++) {
		int *fds = calloc(2 * opt.pairs, sizeof(int));

		if (!fds)
			die("calloc");
		for (long r = 0; r < opt.pairs; r++)
			if (pipe(fds + 2 * r))
				die("pipe (raise the open file limit for this many pairs)");
		for (long i = 0; i < per_group; i++) {
			struct task *t = &tasks[g * per_group + i];

			t->receiver = i < opt.pairs;
			t->fds = t->receiver ? fds + 2 * i : fds;
		}
	}
	for (long i = 0; i < ntasks; i++)
		start(&tasks[i]);
	begin = now_s();
	close(gate[1]);
	for (long i = 0; i < ntasks; i++)
		finish(&tasks[i]);
	seconds = now_s() - begin;
	/* Reaped children's, or every thread's (the main one's few included). */
	if (getrusage(opt.processes ? RUSAGE_CHILDREN : RUSAGE_SELF, &usage))
		die("getrusage");
	messages = opt.groups * opt.pairs * opt.pairs * opt.loops;
	printf("{\"mode\": \"%s\", \"groups\": %ld, \"pairs\": %ld, \"loops\": %ld, "
	       "\"size\": %ld, \"tasks\": %ld, \"messages\": %ld, \"seconds\": %.9f, "
	       "\"messages_per_s\": %.1f, \"voluntary_switches\": %ld, "
	       "\"involuntary_switches\": %ld}\n", opt.processes ? "process" : "thread",
	       opt.groups, opt.pairs, opt.loops, opt.size, ntasks, messages, seconds,
	       messages / seconds, usage.ru_nvcsw, usage.ru_nivcsw);
	return 0;
}
