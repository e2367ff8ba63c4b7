/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Load generator for oomtrace's benchmarks, in C so that the loops measure the
 * kernel's signal path and fork/exit, not an interpreter.
 *
 *   stormer sigloop N [SIG]
 *       N kill(2) of SIG (default SIGUSR1) to itself, with a handler installed:
 *       every call goes through signal_generate, signal_deliver and the
 *       handler. Prints {"calls":N,"elapsed_ns":...,"handled":...}.
 *
 *   stormer storm N RATE WAVE OUT
 *       N children SIGKILLed, each child blocked in pause(). RATE 0: a burst,
 *       WAVE children forked first, then all killed in a tight loop, then
 *       reaped, until N. RATE > 0: one child forked and killed every 1/RATE s.
 *       OUT receives one binary record per kill: u32 pid, u32 0, u64 the
 *       CLOCK_MONOTONIC ns just before kill(2). Prints a JSON summary.
 *
 *   stormer oomstorm LIST OUT
 *       LIST holds one cgroup.procs path per line. For each, a child joins that
 *       cgroup and allocates and touches memory until the OOM killer takes it.
 *       All children start at once. OUT gets "index pid status" lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_signal(int sig)
{
	(void)sig;
	handled++;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int sigloop(long n, int sig)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, &sa, NULL) != 0) {
		perror("sigaction");
		return 1;
	}
	pid_t self = getpid();
	uint64_t start = now_ns();
	for (long i = 0; i < n; i++)
		kill(self, sig);
	uint64_t elapsed = now_ns() - start;
	printf("{\"calls\":%ld,\"elapsed_ns\":%llu,\"handled\":%ld}\n", n,
	       (unsigned long long)elapsed, (long)handled);
	return 0;
}

struct kill_rec {
	uint32_t pid;
	uint32_t pad;
	uint64_t t_ns;
};

static pid_t spawn_paused(void)
{
	pid_t pid = fork();
	if (pid == 0) {
		for (;;)
			pause();
	}
	return pid;
}

static long reap_some(int block)
{
	long n = 0;
	for (;;) {
		pid_t r = waitpid(-1, NULL, block ? 0 : WNOHANG);
		if (r <= 0)
			return n;
		n++;
	}
}

static void sleep_until(uint64_t t)
{
	uint64_t now = now_ns();
	if (t <= now)
		return;
	struct timespec ts = {(time_t)((t - now) / 1000000000ull), (long)((t - now) % 1000000000ull)};
	nanosleep(&ts, NULL);
}

static int storm(long n, double rate, long wave, const char *out)
{
	FILE *f = fopen(out, "wb");
	if (!f) {
		perror(out);
		return 1;
	}
	long made = 0, fork_failed = 0, reaped = 0;
	uint64_t start = now_ns();
	if (rate <= 0) {
		pid_t *pids = calloc((size_t)wave, sizeof(pid_t));
		struct kill_rec *recs = calloc((size_t)wave, sizeof(*recs));
		if (!pids || !recs)
			return 1;
		while (made < n) {
			long want = n - made < wave ? n - made : wave, have = 0;
			for (long i = 0; i < want; i++) {
				pid_t pid = spawn_paused();
				if (pid < 0) {
					fork_failed++;
					break;
				}
				pids[have++] = pid;
			}
			if (have == 0)
				break;
			for (long i = 0; i < have; i++) {
				recs[i].pid = (uint32_t)pids[i];
				recs[i].pad = 0;
				recs[i].t_ns = now_ns();
				kill(pids[i], SIGKILL);
			}
			fwrite(recs, sizeof(*recs), (size_t)have, f);
			made += have;
			while (reaped < made) {
				if (waitpid(-1, NULL, 0) <= 0)
					break;
				reaped++;
			}
		}
		free(pids);
		free(recs);
	} else {
		uint64_t period = (uint64_t)(1e9 / rate);
		for (long i = 0; i < n; i++) {
			sleep_until(start + (uint64_t)i * period);
			pid_t pid = spawn_paused();
			if (pid < 0) {
				fork_failed++;
				reaped += reap_some(1);
				continue;
			}
			struct kill_rec r = {(uint32_t)pid, 0, now_ns()};
			kill(pid, SIGKILL);
			fwrite(&r, sizeof(r), 1, f);
			made++;
			if ((i & 63) == 0)
				reaped += reap_some(0);
		}
		while (reaped < made) {
			if (waitpid(-1, NULL, 0) <= 0)
				break;
			reaped++;
		}
	}
	uint64_t elapsed = now_ns() - start;
	fclose(f);
	printf("{\"made\":%ld,\"fork_failed\":%ld,\"elapsed_ns\":%llu,\"pid\":%d}\n", made,
	       fork_failed, (unsigned long long)elapsed, (int)getpid());
	return 0;
}

static void hog(void)
{
	for (;;) {
		char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			usleep(1000);
			continue;
		}
		for (size_t off = 0; off < (1 << 20); off += 4096)
			p[off] = 1;
	}
}

static int oomstorm(const char *list, const char *out)
{
	FILE *in = fopen(list, "r");
	FILE *f = fopen(out, "w");
	if (!in || !f) {
		perror("oomstorm files");
		return 1;
	}
	char line[4096];
	long count = 0;
	pid_t pids[4096];
	while (count < 4096 && fgets(line, sizeof(line), in)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0])
			continue;
		pid_t pid = fork();
		if (pid == 0) {
			int fd = open(line, O_WRONLY | O_CLOEXEC);
			char buf[32];
			int len = snprintf(buf, sizeof(buf), "%d", (int)getpid());
			/* Never allocate outside the limited cgroup. */
			if (fd < 0 || write(fd, buf, (size_t)len) != len)
				_exit(3);
			close(fd);
			hog();
		}
		pids[count++] = pid;
	}
	fclose(in);
	for (long i = 0; i < count; i++) {
		int status = 0;
		if (pids[i] > 0)
			waitpid(pids[i], &status, 0);
		fprintf(f, "%ld %d %d\n", i, (int)pids[i], status);
	}
	fclose(f);
	printf("{\"started\":%ld}\n", count);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((argc == 3 || argc == 4) && strcmp(argv[1], "sigloop") == 0)
		return sigloop(atol(argv[2]), argc == 4 ? atoi(argv[3]) : SIGUSR1);
	if (argc == 6 && strcmp(argv[1], "storm") == 0)
		return storm(atol(argv[2]), atof(argv[3]), atol(argv[4]) > 0 ? atol(argv[4]) : 1, argv[5]);
	if (argc == 4 && strcmp(argv[1], "oomstorm") == 0)
		return oomstorm(argv[2], argv[3]);
	fprintf(stderr, "usage: stormer sigloop N [SIG] | storm N RATE WAVE OUT | oomstorm LIST OUT\n");
	return 2;
}
