/* after SECONDS PROGRAM [ARGS...]: waits SECONDS, then becomes PROGRAM (execvp: same process).
 *
 * How a pooled sandbox starts its runner once gVisor has calibrated its clock (executors/pool.py
 * GVISOR_CLOCK_S). `sh -c 'sleep 1.1; exec "$@"'` does the same with a shell, a fork and two more
 * programs, each a new address space and a few hundred syscalls that gVisor's ptrace platform traps
 * one by one: ~0.03 core-s more per sandbox. Linked statically: no loader, no libc to map. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char *end;
    double seconds = argc > 2 ? strtod(argv[1], &end) : -1;
    if (argc < 3 || end == argv[1] || *end || !(seconds >= 0 && seconds < 3600)) {
        fputs("usage: after SECONDS PROGRAM [ARGS...]\n", stderr);
        return 2;
    }
    struct timespec left = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {}
    execvp(argv[2], argv + 2);
    perror(argv[2]);
    return 127;
}
