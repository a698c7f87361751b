/* The compiled client of the warm launcher (`sandbox serve`): the `sandbox` command itself.
 *
 * `sandbox run ...` with a warm launcher reachable: send it the request (argv, the
 * environment, the cwd and stdio as descriptors), forward the signals this process gets,
 * and end as the launcher ended (its exit status, or death by the same signal). Anything
 * else, or no server, or a refusal: exec the Python entry point (SANDBOX_FALLBACK), which
 * launches cold. A Python interpreter alone costs more than the whole warm launch, hence C.
 *
 * The protocol is sandbox/serve/protocol.py's; tests/test_serve.py checks that the two
 * agree. Built by ci/setup with SANDBOX_IDENTITY (which installation it belongs to) and
 * SANDBOX_FALLBACK (the Python entry point) defined.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SANDBOX_IDENTITY
#error "build with -DSANDBOX_IDENTITY=... (see ci/setup)"
#endif
#ifndef SANDBOX_FALLBACK
#error "build with -DSANDBOX_FALLBACK=... (see ci/setup)"
#endif

#define MAGIC "OSW1"
#define MAX_REQUEST (4u << 20)
#define MAX_REASON 4096
#define FOREGROUND 8
#define CTTY 16

extern char **environ;

struct msg {
    char tag[4];
    int32_t value;
};

static int sig_pipe[2] = {-1, -1};

static void fallback(char **argv) {
    execv(SANDBOX_FALLBACK, argv);
    fprintf(stderr, "sandbox: cannot execute %s: %s\n", SANDBOX_FALLBACK, strerror(errno));
    _exit(3);
}

/* $SANDBOX_SERVER, else $XDG_RUNTIME_DIR/outheis-sandbox/serve.sock; 0 if none. */
static int socket_path(struct sockaddr_un *addr) {
    const char *explicit = getenv("SANDBOX_SERVER");
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    int n;
    if (explicit) {
        if (!*explicit || !strcmp(explicit, "off")) return 0;
        n = snprintf(addr->sun_path, sizeof addr->sun_path, "%s", explicit);
    } else {
        const char *runtime = getenv("XDG_RUNTIME_DIR");
        if (!runtime || !*runtime) return 0;
        n = snprintf(addr->sun_path, sizeof addr->sun_path, "%s/outheis-sandbox/serve.sock",
                     runtime);
    }
    return n > 0 && (size_t)n < sizeof addr->sun_path;
}

/* As protocol.py's job(): 1 if the first stdio terminal that is our controlling one has our
 * process group in the foreground, 0 if another, -1 if there is none. */
static int job(void) {
    for (int fd = 0; fd < 3; fd++) {
        if (!isatty(fd)) continue;
        pid_t fg = tcgetpgrp(fd);
        if (fg < 0) continue;
        return fg == getpgrp();
    }
    return -1;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

struct buf {
    char *data;
    size_t len, cap;
};

static int put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > MAX_REQUEST + 8) return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static int field(struct buf *b, const char *s, int first) {
    if (!first && put(b, "", 1)) return -1; /* the NUL separator */
    return put(b, s, strlen(s));
}

static int number(struct buf *b, long v) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%ld", v);
    return field(b, tmp, 0);
}

/* Send the request; 0 if accepted, else -1 (reason in `why`). */
static int request(int sock, int argc, char **argv, char *why, size_t whylen) {
    struct buf b = {0};
    int fds[4], nfds = 0, mask = job() == 1 ? FOREGROUND : 0;
    int tty = open("/dev/tty", O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (tty >= 0) { /* a controlling terminal: see CTTY in protocol.py */
        mask |= CTTY;
        close(tty);
    }
    struct stat st;
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0) {
        snprintf(why, whylen, "cannot open the cwd: %s", strerror(errno));
        return -1;
    }
    fds[nfds++] = cwd;
    for (int fd = 0; fd < 3; fd++)
        if (fstat(fd, &st) == 0) {
            mask |= 1 << fd;
            fds[nfds++] = fd;
        }
    long envc = 0;
    for (char **e = environ; *e; e++) envc++;
    if (put(&b, "OSW1\0\0\0\0", 8) || field(&b, SANDBOX_IDENTITY, 1) || number(&b, mask) ||
        number(&b, argc)) goto too_big;
    for (int i = 0; i < argc; i++)
        if (field(&b, argv[i], 0)) goto too_big;
    if (number(&b, envc)) goto too_big;
    for (char **e = environ; *e; e++)
        if (field(&b, *e, 0)) goto too_big;
    uint32_t length = (uint32_t)(b.len - 8);
    memcpy(b.data + 4, &length, 4);

    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {.iov_base = b.data, .iov_len = b.len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    ssize_t sent;
    do sent = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    close(cwd);
    if (sent < 0 || write_all(sock, b.data + sent, b.len - (size_t)sent)) {
        snprintf(why, whylen, "cannot send the request: %s", strerror(errno));
        free(b.data);
        return -1;
    }
    free(b.data);
    struct msg reply;
    if (read_all(sock, &reply, sizeof reply)) {
        snprintf(why, whylen, "the server closed the connection");
        return -1;
    }
    if (!memcmp(reply.tag, "ACPT", 4)) return 0;
    if (!memcmp(reply.tag, "RFSE", 4)) {
        size_t n = reply.value > 0 && reply.value < MAX_REASON ? (size_t)reply.value : 0;
        if (n >= whylen) n = whylen - 1;
        if (read_all(sock, why, n)) n = 0;
        why[n] = 0;
        return -1;
    }
    snprintf(why, whylen, "unexpected reply");
    return -1;
too_big:
    close(cwd);
    free(b.data);
    snprintf(why, whylen, "the request is too large");
    return -1;
}

/* Signals are forwarded from the loop, not the handler: the handler only records them. */
static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    int saved = errno;
    int rec[2] = {sig, info ? info->si_code : SI_USER};
    ssize_t ignored = write(sig_pipe[1], rec, sizeof rec);
    (void)ignored;
    errno = saved;
}

static const int forwarded[] = {SIGINT,  SIGQUIT, SIGTSTP, SIGWINCH, SIGCONT, SIGHUP,
                                SIGTERM, SIGUSR1, SIGUSR2, SIGALRM};

static int caught[64];
static int ncaught;

static void catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    int n = (int)(sizeof forwarded / sizeof forwarded[0]);
    for (int i = 0; i < n + (SIGRTMAX - SIGRTMIN + 1); i++) {
        int sig = i < n ? forwarded[i] : SIGRTMIN + (i - n);
        struct sigaction old;
        /* A signal the caller ignores stays ignored, as it would for a cold launcher. */
        if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        if (sigaction(sig, &sa, NULL) == 0 && ncaught < 64) caught[ncaught++] = sig;
    }
}

/* Refused: back to the dispositions we started with, and the signals that came meanwhile
 * delivered to ourselves (they reach the cold launcher as they would have). */
static void release_signals(void) {
    for (int i = 0; i < ncaught; i++) signal(caught[i], SIG_DFL);
    int rec[2];
    while (read(sig_pipe[0], rec, sizeof rec) == (ssize_t)sizeof rec) kill(getpid(), rec[0]);
}

static void die(int sig) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none); /* the launcher's core, not ours */
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), sig);
    _exit(128 + sig); /* a signal whose default is not to end a process */
}

/* Forward signals until the launcher's end comes back; then end the same way. */
static void relay(int sock) {
    for (;;) {
        struct pollfd p[2] = {{.fd = sock, .events = POLLIN}, {.fd = sig_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents & POLLIN) {
            int rec[2];
            while (read(sig_pipe[0], rec, sizeof rec) == (ssize_t)sizeof rec) {
                int sig = rec[0];
                /* The terminal's signals (SI_KERNEL) go to the launch's group, as to a cold
                 * launcher's; kill(2)'s to the launcher. SIGCONT always to the group: the
                 * shell's `fg` continues the whole job. */
                int group = rec[1] == SI_KERNEL || sig == SIGCONT;
                struct msg m = {{'S', 'I', 'G', group ? 'G' : 'P'}, sig};
                if (send(sock, &m, sizeof m, MSG_NOSIGNAL) < 0) continue;
                if (sig == SIGTSTP) kill(getpid(), SIGSTOP); /* the job stops, as a cold one */
            }
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            struct msg m;
            if (read_all(sock, &m, sizeof m)) break;
            if (!memcmp(m.tag, "EXIT", 4)) _exit(m.value & 0xff);
            if (!memcmp(m.tag, "KILD", 4)) die(m.value);
            break;
        }
    }
    fprintf(stderr, "sandbox: the warm launcher went away; the launch was killed\n");
    die(SIGKILL);
}

int main(int argc, char **argv) {
    struct sockaddr_un addr;
    /* A background job on its terminal launches cold: job control would stop a cold
     * launcher's agent when it reads it, which a launch in another session cannot be. */
    if (argc < 2 || strcmp(argv[1], "run") || !socket_path(&addr) || job() == 0)
        fallback(argv);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) fallback(argv);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(sock);
        fallback(argv);
    }
    /* Caught from now on: a signal during the request is forwarded once accepted. */
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        close(sock);
        fallback(argv);
    }
    catch_signals();
    struct ucred cred;
    socklen_t len = sizeof cred;
    /* Someone else's socket: never hand it our stdio. */
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != geteuid()) {
        close(sock);
        release_signals();
        fallback(argv);
    }
    char why[MAX_REASON + 1];
    if (request(sock, argc, argv, why, sizeof why)) {
        close(sock);
        if (getenv("SANDBOX_SERVE_DEBUG"))
            fprintf(stderr, "sandbox: warm launch refused: %s\n", why);
        release_signals();
        fallback(argv);
    }
    relay(sock);
    return 3;
}
