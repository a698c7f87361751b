/* Landlock and nothing else, for ci/bench's "Landlock only" row: what the kernel side of an
 * unveil costs without seccomp, namespaces, a parent or an interpreter (as landrun or the
 * kernel's samples/landlock/sandboxer.c do it).
 *
 *     landlock_only PATH[:rx|:r] ... -- PROGRAM ARG...
 *
 * no_new_privs, a ruleset handling every filesystem right of this kernel's ABI (and TCP
 * and scopes where the ABI has them, as sandbox run handles them), one rule per PATH, then
 * restrict_self and exec. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

struct ruleset_attr {
    uint64_t fs, net, scoped;
};
struct path_beneath {
    uint64_t allowed;
    int32_t parent_fd;
} __attribute__((packed));

#define FS_EXECUTE (1ULL << 0)
#define FS_READ_FILE (1ULL << 2)
#define FS_READ_DIR (1ULL << 3)

int main(int argc, char **argv) {
    int abi = (int)syscall(SYS_landlock_create_ruleset, NULL, 0, 1 /* VERSION */);
    if (abi < 1) {
        perror("landlock_only: Landlock");
        return 3;
    }
    /* ABI 1: 13 rights; 2: +refer; 3: +truncate; 5: +ioctl_dev. */
    uint64_t fs = (1ULL << 13) - 1;
    if (abi >= 2) fs |= 1ULL << 13;
    if (abi >= 3) fs |= 1ULL << 14;
    if (abi >= 5) fs |= 1ULL << 15;
    struct ruleset_attr attr = {.fs = fs, .net = abi >= 4 ? 3 : 0, .scoped = abi >= 6 ? 3 : 0};
    size_t size = abi >= 6 ? sizeof attr : abi >= 4 ? 16 : 8;
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0) {
        perror("landlock_only: create_ruleset");
        return 3;
    }
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        char *path = argv[i], *perms = strrchr(path, ':');
        uint64_t allowed = FS_READ_FILE | FS_READ_DIR;
        if (perms) {
            *perms++ = 0;
            if (strchr(perms, 'x')) allowed |= FS_EXECUTE;
        }
        struct path_beneath rule = {.allowed = allowed & fs, .parent_fd = open(path, O_PATH | O_CLOEXEC)};
        struct stat st;
        if (rule.parent_fd >= 0 && fstat(rule.parent_fd, &st) == 0 && !S_ISDIR(st.st_mode))
            rule.allowed &= ~FS_READ_DIR; /* a file takes file rights only */
        if (rule.parent_fd < 0 || syscall(SYS_landlock_add_rule, ruleset, 1, &rule, 0)) {
            perror(path);
            return 3;
        }
        close(rule.parent_fd);
    }
    if (i + 1 >= argc) {
        fprintf(stderr, "usage: landlock_only PATH[:rx]... -- PROGRAM ARG...\n");
        return 2;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_landlock_restrict_self, ruleset, 0)) {
        perror("landlock_only: restrict_self");
        return 3;
    }
    close(ruleset);
    execv(argv[i + 1], argv + i + 1);
    perror(argv[i + 1]);
    return 3;
}
