/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Process-creation loops for bench.execpath, in C so that they time the kernel's
 * fork, exec, exit and wait, not an interpreter.
 *
 *   execloop exec N PATH
 *       N times: fork(); the child execve()s PATH, the parent waitpid()s it.
 *       The child's argv is PATH followed by padding words, more than 256 bytes
 *       in all, so that a tracer keeping the first 256 bytes of argv copies all
 *       of them. PATH must exit 0 at once (/bin/true, or this program's `exit`).
 *
 *   execloop fork N
 *       N times: fork(); the child _exit(0)s, the parent waitpid()s it.
 *
 *   execloop exit [ARG...]
 *       Exits 0: the cheapest image to exec.
 *
 * exec and fork print {"calls":N,"elapsed_ns":...,"failed":...}; `failed`
 * counts children that did not exit 0 (an exec that failed, a fork refused).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAD_WORDS 12

extern char **environ;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int loop(long n, const char *path)
{
	/* 12 words of 31 characters: 384 bytes of argv after PATH. */
	static char pad[PAD_WORDS][32];
	char *argv[PAD_WORDS + 3];
	int argc = 0;
	argv[argc++] = (char *)path;
	if (path)
		argv[argc++] = "exit";
	for (int i = 0; i < PAD_WORDS; i++) {
		memset(pad[i], 'a' + i, sizeof(pad[i]) - 1);
		pad[i][sizeof(pad[i]) - 1] = '\0';
		argv[argc++] = pad[i];
	}
	argv[argc] = NULL;

	long failed = 0;
	uint64_t start = now_ns();
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			failed++;
			continue;
		}
		if (pid == 0) {
			if (path)
				execve(path, argv, environ);
			_exit(path ? 127 : 0);
		}
		int status = 0;
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	uint64_t elapsed = now_ns() - start;
	printf("{\"calls\":%ld,\"elapsed_ns\":%llu,\"failed\":%ld}\n", n,
	       (unsigned long long)elapsed, failed);
	return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "exit") == 0)
		return 0;
	if (argc == 4 && strcmp(argv[1], "exec") == 0)
		return loop(atol(argv[2]), argv[3]);
	if (argc == 3 && strcmp(argv[1], "fork") == 0)
		return loop(atol(argv[2]), NULL);
	fprintf(stderr, "usage: execloop exec N PATH | fork N | exit\n");
	return 2;
}
