/* A syscall-heavy loop for ci/bench: N getppid() and N stat() calls, timed inside. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    const char *path = argc > 2 ? argv[2] : "/usr/bin";
    struct stat st;
    double t0 = now();
    for (long i = 0; i < n; i++) getppid();
    double t1 = now();
    for (long i = 0; i < n; i++) stat(path, &st);
    double t2 = now();
    printf("%.1f %.1f\n", (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9);
    return 0;
}
