/* A program that proves it ran: prints a marker and exits 42. Used as the payload of
 * exec tests (fileless exec, exec of a written file, the 'x' permission). */
#include <stdio.h>

int main(int argc, char **argv) {
    (void)argc;
    printf("HELLO-RAN %s\n", argv[0]);
    return 42;
}
