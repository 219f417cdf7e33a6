/*
 * execloop N PATH: fork + execve(PATH) + waitpid, N times, and write the
 * wall time of each iteration (CLOCK_MONOTONIC, ns, native-endian uint64)
 * to stdout. The timed loop has no allocation and no I/O. Exit status 2
 * means a child did not exit 0: it was denied, killed or failed to exec;
 * stderr says which.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	char *child_argv[2];
	char *envp[1] = {NULL};
	uint64_t *ns;
	long n, i;

	if (argc != 3 || (n = atol(argv[1])) <= 0) {
		fprintf(stderr, "usage: execloop N PATH\n");
		return 1;
	}
	child_argv[0] = argv[2];
	child_argv[1] = NULL;
	ns = calloc(n, sizeof(*ns));
	if (!ns) {
		perror("execloop: calloc");
		return 1;
	}
	for (i = 0; i < n; i++) {
		uint64_t start = now_ns();
		int status;
		pid_t pid = fork();

		if (pid < 0) {
			perror("execloop: fork");
			return 1;
		}
		if (pid == 0) {
			execve(child_argv[0], child_argv, envp);
			_exit(127);
		}
		if (waitpid(pid, &status, 0) < 0) {
			perror("execloop: waitpid");
			return 1;
		}
		ns[i] = now_ns() - start;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			if (WIFSIGNALED(status))
				fprintf(stderr, "execloop: exec %ld of %s: killed by signal %d\n", i, argv[2], WTERMSIG(status));
			else
				fprintf(stderr, "execloop: exec %ld of %s: exit status %d\n", i, argv[2], WEXITSTATUS(status));
			return 2;
		}
	}
	if (fwrite(ns, sizeof(*ns), n, stdout) != (size_t)n) {
		perror("execloop: write");
		return 1;
	}
	return 0;
}
