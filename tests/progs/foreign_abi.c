/* System calls through the foreign ABIs of x86-64: x32 (number | 0x40000000) and i386
 * (int 0x80). A seccomp filter that checks only the number, not the ABI, lets these
 * through with other meanings; ours must kill the process instead.
 * Usage: foreign_abi x32|int80. Prints what the call returned, if it returns. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define X32_SYSCALL_BIT 0x40000000L
#define I386_GETPID 20L

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s x32|int80\n", argv[0]);
        return 2;
    }
    printf("BEFORE %s\n", argv[1]);
    fflush(stdout);
    if (strcmp(argv[1], "x32") == 0) {
        long r = syscall(SYS_getpid | X32_SYSCALL_BIT);
        printf("RETURNED x32 %ld errno %d\n", r, r < 0 ? errno : 0);
    } else if (strcmp(argv[1], "int80") == 0) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(I386_GETPID) : "memory");
        printf("RETURNED int80 %ld\n", r);
    } else {
        return 2;
    }
    return 0;
}
