/* Signals to oneself for ci/bench_signals.py: N kill(getpid(), 0), N raise() of a handled
 * signal (glibc's tgkill to the caller's own thread), and N tkill of the caller's thread
 * made from a second thread (its tid is not the process id: the parent decides it). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long n;
static volatile sig_atomic_t got;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_usr1(int sig) { (void)sig; got++; }

static void *thread_tkill(void *arg) {
    double *out = arg;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    double t0 = now();
    for (long i = 0; i < n; i++) syscall(SYS_tkill, tid, 0);
    *out = (now() - t0) / n * 1e9;
    return NULL;
}

int main(int argc, char **argv) {
    n = argc > 1 ? atol(argv[1]) : 100000;
    signal(SIGUSR1, on_usr1);
    double t0 = now();
    for (long i = 0; i < n; i++) kill(getpid(), 0);
    double t1 = now();
    for (long i = 0; i < n; i++) raise(SIGUSR1);
    double t2 = now();
    double thread_ns = -1;
    pthread_t t;
    if (pthread_create(&t, NULL, thread_tkill, &thread_ns) == 0) pthread_join(t, NULL);
    printf("%.1f %.1f %.1f %ld\n", (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9, thread_ns, (long)got);
    return got == n ? 0 : 1;
}
