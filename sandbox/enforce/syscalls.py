"""System-call arguments made readable, for violation messages and audit records.

Only for people: nothing here takes a decision. The constants are the x86-64 Linux values;
sandbox.enforce.promises builds its argument conditions from the same names, so a condition and the
message about it always spell a flag the same way.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType

# --- constants (x86-64 Linux) ------------------------------------------------------------

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

O_ACCMODE = 0o3
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DSYNC = 0o10000
O_ASYNC = 0o20000
O_DIRECT = 0o40000
O_LARGEFILE = 0o100000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_NOATIME = 0o1000000
O_CLOEXEC = 0o2000000
O_SYNC_BIT = 0o4000000  # __O_SYNC
O_PATH = 0o10000000
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE; O_TMPFILE is this | O_DIRECTORY

PROT_READ, PROT_WRITE, PROT_EXEC = 0x1, 0x2, 0x4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x1, 0x2, 0x10, 0x20

MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_HUGETLB = 0x1, 0x2, 0x4
MFD_NOEXEC_SEAL, MFD_EXEC = 0x8, 0x10

CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_PIDFD = 0x1000
CLONE_PTRACE = 0x2000
CLONE_VFORK = 0x4000
CLONE_PARENT = 0x8000
CLONE_THREAD = 0x10000
CLONE_NEWNS = 0x20000
CLONE_SYSVSEM = 0x40000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_DETACHED = 0x400000
CLONE_UNTRACED = 0x800000
CLONE_CHILD_SETTID = 0x1000000
CLONE_NEWCGROUP = 0x2000000
CLONE_NEWUTS = 0x4000000
CLONE_NEWIPC = 0x8000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000
# CLONE_NEWTIME (0x80) overlaps the exit-signal byte of clone(2); only clone3/unshare use it.
CLONE_NEW_ALL = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
SOCK_TYPE_MASK = 0xF
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
SOL_SOCKET, IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_IPV6 = 1, 0, 6, 17, 41
IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_MPTCP = 1, 58, 262
MSG_FASTOPEN = 0x20000000

S_IFMT, S_IFIFO, S_IFCHR, S_IFDIR, S_IFBLK, S_IFREG, S_IFSOCK = (
    0o170000,
    0o010000,
    0o020000,
    0o040000,
    0o060000,
    0o100000,
    0o140000,
)

F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_SETOWN, F_GETOWN, F_SETSIG, F_GETSIG = 8, 9, 10, 11
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_SETLEASE, F_GETLEASE, F_NOTIFY = 1024, 1025, 1026
F_DUPFD_CLOEXEC, F_SETPIPE_SZ, F_GETPIPE_SZ, F_ADD_SEALS, F_GET_SEALS = 1030, 1031, 1032, 1033, 1034

TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TCSBRK, TCXONC, TCFLSH = 0x5409, 0x540A, 0x540B
TIOCSCTTY, TIOCGPGRP, TIOCSPGRP, TIOCOUTQ, TIOCSTI = 0x540E, 0x540F, 0x5410, 0x5411, 0x5412
TIOCGWINSZ, TIOCSWINSZ, FIONREAD, TIOCLINUX = 0x5413, 0x5414, 0x541B, 0x541C
FIONBIO, TIOCGSID, FIONCLEX, FIOCLEX = 0x5421, 0x5429, 0x5450, 0x5451
TIOCGPTN, TIOCSPTLCK = 0x80045430, 0x40045431

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE = 1, 2, 3
PR_SET_NAME, PR_GET_NAME, PR_GET_SECCOMP, PR_SET_SECCOMP, PR_CAPBSET_READ = 15, 16, 21, 22, 23
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
PR_SET_VMA = 0x53564D41

ARCH_SET_GS, ARCH_SET_FS, ARCH_GET_FS, ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
ARCH_GET_CPUID, ARCH_SET_CPUID = 0x1011, 0x1012
ARCH_GET_XCOMP_SUPP, ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM = 0x1021, 0x1022, 0x1023
ARCH_SHSTK_ENABLE, ARCH_SHSTK_DISABLE, ARCH_SHSTK_LOCK = 0x5001, 0x5002, 0x5003
ARCH_SHSTK_STATUS = 0x5005

# Reflinks and deduplication between descriptors (linux/fs.h); the kernel checks the modes
# the descriptors were opened with.
FICLONE, FICLONERANGE, FIDEDUPERANGE = 0x40049409, 0x4020940D, 0xC0189436

CSIGNAL = 0xFF  # clone(2): the low byte of the flags is the signal sent at the child's exit

# --- names of values ----------------------------------------------------------------------

# Flag sets: (value, name) in print order. A name whose value is a multi-bit field is
# listed before its parts.
_FLAGS: Mapping[str, tuple[tuple[int, str], ...]] = MappingProxyType(
    {
        "open": (
            (O_CREAT, "O_CREAT"),
            (O_EXCL, "O_EXCL"),
            (O_NOCTTY, "O_NOCTTY"),
            (O_TRUNC, "O_TRUNC"),
            (O_APPEND, "O_APPEND"),
            (O_NONBLOCK, "O_NONBLOCK"),
            (O_DSYNC, "O_DSYNC"),
            (O_ASYNC, "O_ASYNC"),
            (O_DIRECT, "O_DIRECT"),
            (O_LARGEFILE, "O_LARGEFILE"),
            (O_TMPFILE_BIT | O_DIRECTORY, "O_TMPFILE"),
            (O_DIRECTORY, "O_DIRECTORY"),
            (O_NOFOLLOW, "O_NOFOLLOW"),
            (O_NOATIME, "O_NOATIME"),
            (O_CLOEXEC, "O_CLOEXEC"),
            (O_SYNC_BIT, "__O_SYNC"),
            (O_PATH, "O_PATH"),
            (O_TMPFILE_BIT, "__O_TMPFILE"),
        ),
        "prot": ((PROT_READ, "PROT_READ"), (PROT_WRITE, "PROT_WRITE"), (PROT_EXEC, "PROT_EXEC")),
        "map": (
            (MAP_SHARED, "MAP_SHARED"),
            (MAP_PRIVATE, "MAP_PRIVATE"),
            (MAP_FIXED, "MAP_FIXED"),
            (MAP_ANONYMOUS, "MAP_ANONYMOUS"),
            (0x100, "MAP_GROWSDOWN"),
            (0x800, "MAP_DENYWRITE"),
            (0x1000, "MAP_EXECUTABLE"),
            (0x2000, "MAP_LOCKED"),
            (0x4000, "MAP_NORESERVE"),
            (0x8000, "MAP_POPULATE"),
            (0x10000, "MAP_NONBLOCK"),
            (0x20000, "MAP_STACK"),
            (0x40000, "MAP_HUGETLB"),
            (0x80000, "MAP_SYNC"),
            (0x100000, "MAP_FIXED_NOREPLACE"),
        ),
        "mfd": (
            (MFD_CLOEXEC, "MFD_CLOEXEC"),
            (MFD_ALLOW_SEALING, "MFD_ALLOW_SEALING"),
            (MFD_HUGETLB, "MFD_HUGETLB"),
            (MFD_NOEXEC_SEAL, "MFD_NOEXEC_SEAL"),
            (MFD_EXEC, "MFD_EXEC"),
        ),
        "clone": (
            (CLONE_VM, "CLONE_VM"),
            (CLONE_FS, "CLONE_FS"),
            (CLONE_FILES, "CLONE_FILES"),
            (CLONE_SIGHAND, "CLONE_SIGHAND"),
            (CLONE_PIDFD, "CLONE_PIDFD"),
            (CLONE_PTRACE, "CLONE_PTRACE"),
            (CLONE_VFORK, "CLONE_VFORK"),
            (CLONE_PARENT, "CLONE_PARENT"),
            (CLONE_THREAD, "CLONE_THREAD"),
            (CLONE_NEWNS, "CLONE_NEWNS"),
            (CLONE_SYSVSEM, "CLONE_SYSVSEM"),
            (CLONE_SETTLS, "CLONE_SETTLS"),
            (CLONE_PARENT_SETTID, "CLONE_PARENT_SETTID"),
            (CLONE_CHILD_CLEARTID, "CLONE_CHILD_CLEARTID"),
            (CLONE_DETACHED, "CLONE_DETACHED"),
            (CLONE_UNTRACED, "CLONE_UNTRACED"),
            (CLONE_CHILD_SETTID, "CLONE_CHILD_SETTID"),
            (CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
            (CLONE_NEWUTS, "CLONE_NEWUTS"),
            (CLONE_NEWIPC, "CLONE_NEWIPC"),
            (CLONE_NEWUSER, "CLONE_NEWUSER"),
            (CLONE_NEWPID, "CLONE_NEWPID"),
            (CLONE_NEWNET, "CLONE_NEWNET"),
            (CLONE_IO, "CLONE_IO"),
        ),
        "sock_flags": ((SOCK_NONBLOCK, "SOCK_NONBLOCK"), (SOCK_CLOEXEC, "SOCK_CLOEXEC")),
        "at": (
            (0x100, "AT_SYMLINK_NOFOLLOW"),
            (0x200, "AT_REMOVEDIR"),
            (0x400, "AT_SYMLINK_FOLLOW"),
            (0x800, "AT_NO_AUTOMOUNT"),
            (AT_EMPTY_PATH, "AT_EMPTY_PATH"),
            (0x2000, "AT_STATX_FORCE_SYNC"),
            (0x4000, "AT_STATX_DONT_SYNC"),
            (0x8000, "AT_RECURSIVE"),
        ),
        "access": ((4, "R_OK"), (2, "W_OK"), (1, "X_OK")),
        "flock": ((1, "LOCK_SH"), (2, "LOCK_EX"), (4, "LOCK_NB"), (8, "LOCK_UN")),
        "futex": ((128, "FUTEX_PRIVATE_FLAG"), (256, "FUTEX_CLOCK_REALTIME")),
        "resolve": (
            (0x01, "RESOLVE_NO_XDEV"),
            (0x02, "RESOLVE_NO_MAGICLINKS"),
            (0x04, "RESOLVE_NO_SYMLINKS"),
            (0x08, "RESOLVE_BENEATH"),
            (0x10, "RESOLVE_IN_ROOT"),
            (0x20, "RESOLVE_CACHED"),
        ),
    }
)

# Enumerations: value -> name.
_ENUMS: Mapping[str, Mapping[int, str]] = MappingProxyType(
    {
        "af": {
            0: "AF_UNSPEC",
            AF_UNIX: "AF_UNIX",
            AF_INET: "AF_INET",
            AF_INET6: "AF_INET6",
            AF_NETLINK: "AF_NETLINK",
            17: "AF_PACKET",
            29: "AF_CAN",
            30: "AF_TIPC",
            31: "AF_BLUETOOTH",
            38: "AF_ALG",
            39: "AF_NFC",
            40: "AF_VSOCK",
            41: "AF_KCM",
            42: "AF_QIPCRTR",
            44: "AF_XDP",
        },
        "socktype": {
            SOCK_STREAM: "SOCK_STREAM",
            SOCK_DGRAM: "SOCK_DGRAM",
            SOCK_RAW: "SOCK_RAW",
            4: "SOCK_RDM",
            SOCK_SEQPACKET: "SOCK_SEQPACKET",
            10: "SOCK_PACKET",
        },
        "accmode": {O_RDONLY: "O_RDONLY", O_WRONLY: "O_WRONLY", O_RDWR: "O_RDWR"},
        "sol": {
            SOL_SOCKET: "SOL_SOCKET",
            IPPROTO_IP: "IPPROTO_IP",
            IPPROTO_TCP: "IPPROTO_TCP",
            IPPROTO_UDP: "IPPROTO_UDP",
            IPPROTO_IPV6: "IPPROTO_IPV6",
        },
        "fcntl": {
            F_DUPFD: "F_DUPFD",
            F_GETFD: "F_GETFD",
            F_SETFD: "F_SETFD",
            F_GETFL: "F_GETFL",
            F_SETFL: "F_SETFL",
            F_GETLK: "F_GETLK",
            F_SETLK: "F_SETLK",
            F_SETLKW: "F_SETLKW",
            F_SETOWN: "F_SETOWN",
            F_GETOWN: "F_GETOWN",
            F_SETSIG: "F_SETSIG",
            F_GETSIG: "F_GETSIG",
            F_OFD_GETLK: "F_OFD_GETLK",
            F_OFD_SETLK: "F_OFD_SETLK",
            F_OFD_SETLKW: "F_OFD_SETLKW",
            F_SETLEASE: "F_SETLEASE",
            F_GETLEASE: "F_GETLEASE",
            F_NOTIFY: "F_NOTIFY",
            F_DUPFD_CLOEXEC: "F_DUPFD_CLOEXEC",
            F_SETPIPE_SZ: "F_SETPIPE_SZ",
            F_GETPIPE_SZ: "F_GETPIPE_SZ",
            F_ADD_SEALS: "F_ADD_SEALS",
            F_GET_SEALS: "F_GET_SEALS",
        },
        "ioctl": {
            TCGETS: "TCGETS",
            TCSETS: "TCSETS",
            TCSETSW: "TCSETSW",
            TCSETSF: "TCSETSF",
            TCSBRK: "TCSBRK",
            TCXONC: "TCXONC",
            TCFLSH: "TCFLSH",
            TIOCSCTTY: "TIOCSCTTY",
            TIOCGPGRP: "TIOCGPGRP",
            TIOCSPGRP: "TIOCSPGRP",
            TIOCOUTQ: "TIOCOUTQ",
            TIOCSTI: "TIOCSTI",
            TIOCGWINSZ: "TIOCGWINSZ",
            TIOCSWINSZ: "TIOCSWINSZ",
            FIONREAD: "FIONREAD",
            TIOCLINUX: "TIOCLINUX",
            FIONBIO: "FIONBIO",
            TIOCGSID: "TIOCGSID",
            FIONCLEX: "FIONCLEX",
            FIOCLEX: "FIOCLEX",
            TIOCGPTN: "TIOCGPTN",
            TIOCSPTLCK: "TIOCSPTLCK",
            0x540C: "TIOCEXCL",
            0x540D: "TIOCNXCL",
            0x5415: "TIOCMGET",
            0x5422: "TIOCNOTTY",
            0x5423: "TIOCSETD",
            0x5424: "TIOCGETD",
            0x5437: "TIOCVHANGUP",
            0x5441: "TIOCGPTPEER",
            0x5452: "FIOASYNC",
            0x5460: "FIOQSIZE",
            0x802C542A: "TCGETS2",
            0x402C542B: "TCSETS2",
            0x1: "FIBMAP",
            0x2: "FIGETBSZ",
            FICLONE: "FICLONE",
            FICLONERANGE: "FICLONERANGE",
            FIDEDUPERANGE: "FIDEDUPERANGE",
            0x80086601: "FS_IOC_GETFLAGS",
            0x40086602: "FS_IOC_SETFLAGS",
            0xC020660B: "FS_IOC_FIEMAP",
            0x8912: "SIOCGIFCONF",
            0x8913: "SIOCGIFFLAGS",
            0x8933: "SIOCGIFINDEX",
        },
        "prctl": {
            PR_SET_PDEATHSIG: "PR_SET_PDEATHSIG",
            PR_GET_PDEATHSIG: "PR_GET_PDEATHSIG",
            PR_GET_DUMPABLE: "PR_GET_DUMPABLE",
            4: "PR_SET_DUMPABLE",
            PR_SET_NAME: "PR_SET_NAME",
            PR_GET_NAME: "PR_GET_NAME",
            PR_GET_SECCOMP: "PR_GET_SECCOMP",
            PR_SET_SECCOMP: "PR_SET_SECCOMP",
            PR_CAPBSET_READ: "PR_CAPBSET_READ",
            24: "PR_CAPBSET_DROP",
            PR_SET_NO_NEW_PRIVS: "PR_SET_NO_NEW_PRIVS",
            PR_GET_NO_NEW_PRIVS: "PR_GET_NO_NEW_PRIVS",
            36: "PR_SET_CHILD_SUBREAPER",
            7: "PR_GET_KEEPCAPS",
            8: "PR_SET_KEEPCAPS",
            27: "PR_GET_SECUREBITS",
            28: "PR_SET_SECUREBITS",
            29: "PR_SET_TIMERSLACK",
            30: "PR_GET_TIMERSLACK",
            35: "PR_SET_MM",
            37: "PR_GET_CHILD_SUBREAPER",
            40: "PR_GET_TID_ADDRESS",
            41: "PR_SET_THP_DISABLE",
            47: "PR_CAP_AMBIENT",
            52: "PR_GET_SPECULATION_CTRL",
            53: "PR_SET_SPECULATION_CTRL",
            59: "PR_SET_SYSCALL_USER_DISPATCH",
            62: "PR_SCHED_CORE",
            65: "PR_SET_MDWE",
            66: "PR_GET_MDWE",
            0x59616D61: "PR_SET_PTRACER",
            0x41555856: "PR_GET_AUXV",
            PR_SET_VMA: "PR_SET_VMA",
        },
        "arch_prctl": {
            ARCH_SET_GS: "ARCH_SET_GS",
            ARCH_SET_FS: "ARCH_SET_FS",
            ARCH_GET_FS: "ARCH_GET_FS",
            ARCH_GET_GS: "ARCH_GET_GS",
            ARCH_GET_CPUID: "ARCH_GET_CPUID",
            ARCH_SET_CPUID: "ARCH_SET_CPUID",
            ARCH_GET_XCOMP_SUPP: "ARCH_GET_XCOMP_SUPP",
            ARCH_GET_XCOMP_PERM: "ARCH_GET_XCOMP_PERM",
            ARCH_REQ_XCOMP_PERM: "ARCH_REQ_XCOMP_PERM",
            ARCH_SHSTK_ENABLE: "ARCH_SHSTK_ENABLE",
            ARCH_SHSTK_DISABLE: "ARCH_SHSTK_DISABLE",
            ARCH_SHSTK_LOCK: "ARCH_SHSTK_LOCK",
            ARCH_SHSTK_STATUS: "ARCH_SHSTK_STATUS",
        },
        "seccomp_op": {
            0: "SECCOMP_SET_MODE_STRICT",
            1: "SECCOMP_SET_MODE_FILTER",
            2: "SECCOMP_GET_ACTION_AVAIL",
            3: "SECCOMP_GET_NOTIF_SIZES",
        },
        "signal": {
            n: f"SIG{name}"
            for n, name in enumerate(
                (
                    "HUP",
                    "INT",
                    "QUIT",
                    "ILL",
                    "TRAP",
                    "ABRT",
                    "BUS",
                    "FPE",
                    "KILL",
                    "USR1",
                    "SEGV",
                    "USR2",
                    "PIPE",
                    "ALRM",
                    "TERM",
                    "STKFLT",
                    "CHLD",
                    "CONT",
                    "STOP",
                    "TSTP",
                    "TTIN",
                    "TTOU",
                    "URG",
                    "XCPU",
                    "XFSZ",
                    "VTALRM",
                    "PROF",
                    "WINCH",
                    "IO",
                    "PWR",
                    "SYS",
                ),
                start=1,
            )
        },
        "whence": {0: "SEEK_SET", 1: "SEEK_CUR", 2: "SEEK_END", 3: "SEEK_DATA", 4: "SEEK_HOLE"},
        "rlimit": {
            n: f"RLIMIT_{name}"
            for n, name in enumerate(
                (
                    "CPU",
                    "FSIZE",
                    "DATA",
                    "STACK",
                    "CORE",
                    "RSS",
                    "NPROC",
                    "NOFILE",
                    "MEMLOCK",
                    "AS",
                    "LOCKS",
                    "SIGPENDING",
                    "MSGQUEUE",
                    "NICE",
                    "RTPRIO",
                    "RTTIME",
                ),
            )
        },
        "clock": {
            0: "CLOCK_REALTIME",
            1: "CLOCK_MONOTONIC",
            2: "CLOCK_PROCESS_CPUTIME_ID",
            3: "CLOCK_THREAD_CPUTIME_ID",
            4: "CLOCK_MONOTONIC_RAW",
            5: "CLOCK_REALTIME_COARSE",
            6: "CLOCK_MONOTONIC_COARSE",
            7: "CLOCK_BOOTTIME",
            8: "CLOCK_REALTIME_ALARM",
            9: "CLOCK_BOOTTIME_ALARM",
            11: "CLOCK_TAI",
        },
        "madvise": {
            0: "MADV_NORMAL",
            1: "MADV_RANDOM",
            2: "MADV_SEQUENTIAL",
            3: "MADV_WILLNEED",
            4: "MADV_DONTNEED",
            8: "MADV_FREE",
            9: "MADV_REMOVE",
            10: "MADV_DONTFORK",
            11: "MADV_DOFORK",
            12: "MADV_MERGEABLE",
            13: "MADV_UNMERGEABLE",
            14: "MADV_HUGEPAGE",
            15: "MADV_NOHUGEPAGE",
            16: "MADV_DONTDUMP",
            17: "MADV_DODUMP",
            18: "MADV_WIPEONFORK",
            19: "MADV_KEEPONFORK",
            20: "MADV_COLD",
            21: "MADV_PAGEOUT",
            22: "MADV_POPULATE_READ",
            23: "MADV_POPULATE_WRITE",
            24: "MADV_DONTNEED_LOCKED",
            25: "MADV_COLLAPSE",
            100: "MADV_HWPOISON",
        },
        "futex_cmd": {
            n: f"FUTEX_{name}"
            for n, name in enumerate(
                (
                    "WAIT",
                    "WAKE",
                    "FD",
                    "REQUEUE",
                    "CMP_REQUEUE",
                    "WAKE_OP",
                    "LOCK_PI",
                    "UNLOCK_PI",
                    "TRYLOCK_PI",
                    "WAIT_BITSET",
                    "WAKE_BITSET",
                    "WAIT_REQUEUE_PI",
                    "CMP_REQUEUE_PI",
                    "LOCK_PI2",
                ),
            )
        },
    }
)

# Flag sets whose zero has a name of its own.
_ZERO_NAMES: Mapping[str, str] = MappingProxyType({"access": "F_OK"})

# --- signatures ------------------------------------------------------------------------------

# How each argument of every x86-64 system call prints, in argument order (the real
# signature: vfork takes nothing, setresuid three ids). Kinds:
#   fd, dirfd (AT_FDCWD), pid, id (uid/gid, -1 = unchanged), int, uint, hex, ptr, mode, fmode
#   (S_IF* and permissions), sig, path and str (the string behind the pointer), argv (an
#   array of strings), sockaddr (with its length in the next argument), clone_args,
#   open_how and msghdr (structs behind the pointer), openflags, socktype, cloneflags
#   (clone's flags with the exit signal in the low byte), futex_op, ioctl (requests by name,
#   others as _IOC(...)), a flag set of _FLAGS or an enumeration of _ENUMS.
# Generated once from the kernel's own description of each call (tracefs), with the
# kinds its C types cannot say (an `int flags` of openat is O_* flags); see
# ci/gen_syscalls.py. Calls not listed print every register in hex.
# fmt: off
# --- BEGIN GENERATED by ci/gen_syscalls.py: do not edit by hand ---
SIGNATURES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "_sysctl": ("ptr",),
        "accept": ("fd", "ptr", "ptr"),
        "accept4": ("fd", "ptr", "ptr", "sock_flags"),
        "access": ("path", "access"),
        "acct": ("path",),
        "add_key": ("str", "str", "ptr", "uint", "int"),
        "adjtimex": ("ptr",),
        "afs_syscall": (),
        "alarm": ("uint",),
        "arch_prctl": ("arch_prctl", "hex"),
        "bind": ("fd", "sockaddr", "int"),
        "bpf": ("int", "ptr", "uint"),
        "brk": ("ptr",),
        "cachestat": ("fd", "ptr", "ptr", "hex"),
        "capget": ("ptr", "ptr"),
        "capset": ("ptr", "ptr"),
        "chdir": ("path",),
        "chmod": ("path", "mode"),
        "chown": ("path", "id", "id"),
        "chroot": ("path",),
        "clock_adjtime": ("clock", "ptr"),
        "clock_getres": ("clock", "ptr"),
        "clock_gettime": ("clock", "ptr"),
        "clock_nanosleep": ("clock", "hex", "ptr", "ptr"),
        "clock_settime": ("clock", "ptr"),
        "clone": ("cloneflags", "ptr", "ptr", "ptr", "ptr"),
        "clone3": ("clone_args", "uint"),
        "close": ("fd",),
        "close_range": ("fd", "uint", "hex"),
        "connect": ("fd", "sockaddr", "int"),
        "copy_file_range": ("fd", "ptr", "fd", "ptr", "uint", "hex"),
        "creat": ("path", "mode"),
        "create_module": ("str", "uint"),
        "delete_module": ("str", "hex"),
        "dup": ("fd",),
        "dup2": ("fd", "fd"),
        "dup3": ("fd", "fd", "openflags"),
        "epoll_create": ("int",),
        "epoll_create1": ("hex",),
        "epoll_ctl": ("fd", "int", "fd", "ptr"),
        "epoll_ctl_old": (),
        "epoll_pwait": ("fd", "ptr", "int", "int", "ptr", "uint"),
        "epoll_pwait2": ("fd", "ptr", "int", "ptr", "ptr", "uint"),
        "epoll_wait": ("fd", "ptr", "int", "int"),
        "epoll_wait_old": (),
        "eventfd": ("uint",),
        "eventfd2": ("uint", "hex"),
        "execve": ("path", "argv", "ptr"),
        "execveat": ("dirfd", "path", "argv", "ptr", "at"),
        "exit": ("int",),
        "exit_group": ("int",),
        "faccessat": ("dirfd", "path", "access"),
        "faccessat2": ("dirfd", "path", "access", "at"),
        "fadvise64": ("fd", "int", "uint", "int"),
        "fallocate": ("fd", "hex", "int", "int"),
        "fanotify_init": ("hex", "hex"),
        "fanotify_mark": ("fd", "hex", "hex", "dirfd", "path"),
        "fchdir": ("fd",),
        "fchmod": ("fd", "mode"),
        "fchmodat": ("dirfd", "path", "mode"),
        "fchmodat2": ("dirfd", "path", "mode", "at"),
        "fchown": ("fd", "id", "id"),
        "fchownat": ("dirfd", "path", "id", "id", "at"),
        "fcntl": ("fd", "fcntl", "hex"),
        "fdatasync": ("fd",),
        "fgetxattr": ("fd", "str", "ptr", "uint"),
        "file_getattr": ("dirfd", "path", "ptr", "uint", "hex"),
        "file_setattr": ("dirfd", "path", "ptr", "uint", "hex"),
        "finit_module": ("fd", "str", "hex"),
        "flistxattr": ("fd", "ptr", "uint"),
        "flock": ("fd", "flock"),
        "fork": (),
        "fremovexattr": ("fd", "str"),
        "fsconfig": ("fd", "uint", "str", "ptr", "int"),
        "fsetxattr": ("fd", "str", "ptr", "uint", "hex"),
        "fsmount": ("fd", "hex", "hex"),
        "fsopen": ("str", "hex"),
        "fspick": ("dirfd", "path", "hex"),
        "fstat": ("fd", "ptr"),
        "fstatfs": ("fd", "ptr"),
        "fsync": ("fd",),
        "ftruncate": ("fd", "int"),
        "futex": ("ptr", "futex_op", "uint", "ptr", "ptr", "uint"),
        "futex_requeue": ("ptr", "hex", "int", "int"),
        "futex_wait": ("ptr", "uint", "hex", "hex", "ptr", "clock"),
        "futex_waitv": ("ptr", "uint", "hex", "ptr", "clock"),
        "futex_wake": ("ptr", "hex", "int", "hex"),
        "futimesat": ("dirfd", "path", "timeval_pair"),
        "get_kernel_syms": ("ptr",),
        "get_mempolicy": ("ptr", "ptr", "uint", "ptr", "hex"),
        "get_robust_list": ("int", "ptr", "ptr"),
        "get_thread_area": ("ptr",),
        "getcpu": ("ptr", "ptr", "ptr"),
        "getcwd": ("ptr", "uint"),
        "getdents": ("fd", "ptr", "uint"),
        "getdents64": ("fd", "ptr", "uint"),
        "getegid": (),
        "geteuid": (),
        "getgid": (),
        "getgroups": ("int", "ptr"),
        "getitimer": ("int", "ptr"),
        "getpeername": ("fd", "ptr", "ptr"),
        "getpgid": ("pid",),
        "getpgrp": (),
        "getpid": (),
        "getpmsg": (),
        "getppid": (),
        "getpriority": ("int", "int"),
        "getrandom": ("ptr", "uint", "hex"),
        "getresgid": ("ptr", "ptr", "ptr"),
        "getresuid": ("ptr", "ptr", "ptr"),
        "getrlimit": ("rlimit", "ptr"),
        "getrusage": ("int", "ptr"),
        "getsid": ("pid",),
        "getsockname": ("fd", "ptr", "ptr"),
        "getsockopt": ("fd", "sol", "int", "ptr", "ptr"),
        "gettid": (),
        "gettimeofday": ("ptr", "ptr"),
        "getuid": (),
        "getxattr": ("path", "str", "ptr", "uint"),
        "getxattrat": ("dirfd", "path", "hex", "str", "ptr", "uint"),
        "init_module": ("ptr", "uint", "str"),
        "inotify_add_watch": ("fd", "path", "hex"),
        "inotify_init": (),
        "inotify_init1": ("hex",),
        "inotify_rm_watch": ("fd", "int"),
        "io_cancel": ("hex", "ptr", "ptr"),
        "io_destroy": ("hex",),
        "io_getevents": ("hex", "int", "int", "ptr", "ptr"),
        "io_pgetevents": ("hex", "int", "int", "ptr", "ptr", "ptr"),
        "io_setup": ("uint", "ptr"),
        "io_submit": ("hex", "int", "ptr"),
        "io_uring_enter": ("fd", "uint", "uint", "hex", "ptr", "uint"),
        "io_uring_register": ("fd", "uint", "ptr", "uint"),
        "io_uring_setup": ("uint", "ptr"),
        "ioctl": ("fd", "ioctl", "hex"),
        "ioperm": ("uint", "uint", "int"),
        "iopl": ("uint",),
        "ioprio_get": ("int", "int"),
        "ioprio_set": ("int", "int", "int"),
        "kcmp": ("pid", "pid", "int", "uint", "uint"),
        "kexec_file_load": ("fd", "fd", "uint", "str", "hex"),
        "kexec_load": ("hex", "uint", "ptr", "hex"),
        "keyctl": ("int", "hex", "hex", "hex", "hex"),
        "kill": ("pid", "sig"),
        "landlock_add_rule": ("fd", "uint", "ptr", "hex"),
        "landlock_create_ruleset": ("ptr", "uint", "hex"),
        "landlock_restrict_self": ("fd", "hex"),
        "lchown": ("path", "id", "id"),
        "lgetxattr": ("path", "str", "ptr", "uint"),
        "link": ("path", "path"),
        "linkat": ("dirfd", "path", "dirfd", "path", "at"),
        "listen": ("fd", "int"),
        "listmount": ("ptr", "ptr", "uint", "hex"),
        "listxattr": ("path", "ptr", "uint"),
        "listxattrat": ("dirfd", "path", "hex", "ptr", "uint"),
        "llistxattr": ("path", "ptr", "uint"),
        "lookup_dcookie": ("hex", "ptr", "uint"),
        "lremovexattr": ("path", "str"),
        "lseek": ("fd", "int", "whence"),
        "lsetxattr": ("path", "str", "ptr", "uint", "hex"),
        "lsm_get_self_attr": ("uint", "ptr", "ptr", "hex"),
        "lsm_list_modules": ("ptr", "ptr", "hex"),
        "lsm_set_self_attr": ("uint", "ptr", "uint", "hex"),
        "lstat": ("path", "ptr"),
        "madvise": ("ptr", "uint", "madvise"),
        "map_shadow_stack": ("ptr", "uint", "hex"),
        "mbind": ("ptr", "uint", "uint", "ptr", "uint", "hex"),
        "membarrier": ("int", "hex", "int"),
        "memfd_create": ("str", "mfd"),
        "memfd_secret": ("hex",),
        "migrate_pages": ("pid", "uint", "ptr", "ptr"),
        "mincore": ("ptr", "uint", "ptr"),
        "mkdir": ("path", "mode"),
        "mkdirat": ("dirfd", "path", "mode"),
        "mknod": ("path", "fmode", "uint"),
        "mknodat": ("dirfd", "path", "fmode", "uint"),
        "mlock": ("ptr", "uint"),
        "mlock2": ("ptr", "uint", "hex"),
        "mlockall": ("hex",),
        "mmap": ("ptr", "uint", "prot", "map", "fd", "hex"),
        "modify_ldt": ("int", "ptr", "uint"),
        "mount": ("str", "path", "str", "hex", "ptr"),
        "mount_setattr": ("dirfd", "path", "hex", "ptr", "uint"),
        "move_mount": ("dirfd", "path", "dirfd", "path", "hex"),
        "move_pages": ("pid", "uint", "ptr", "ptr", "ptr", "hex"),
        "mprotect": ("ptr", "uint", "prot"),
        "mq_getsetattr": ("fd", "ptr", "ptr"),
        "mq_notify": ("fd", "ptr"),
        "mq_open": ("str", "hex", "mode", "ptr"),
        "mq_timedreceive": ("fd", "ptr", "uint", "ptr", "ptr"),
        "mq_timedsend": ("fd", "ptr", "uint", "uint", "ptr"),
        "mq_unlink": ("str",),
        "mremap": ("ptr", "uint", "uint", "hex", "ptr"),
        "mseal": ("ptr", "uint", "hex"),
        "msgctl": ("int", "int", "ptr"),
        "msgget": ("int", "int"),
        "msgrcv": ("int", "ptr", "uint", "int", "int"),
        "msgsnd": ("int", "ptr", "uint", "int"),
        "msync": ("ptr", "uint", "hex"),
        "munlock": ("ptr", "uint"),
        "munlockall": (),
        "munmap": ("ptr", "uint"),
        "name_to_handle_at": ("dirfd", "path", "ptr", "ptr", "at"),
        "nanosleep": ("ptr", "ptr"),
        "newfstatat": ("dirfd", "path", "ptr", "at"),
        "nfsservctl": ("int", "ptr", "ptr"),
        "open": ("path", "openflags", "mode"),
        "open_by_handle_at": ("dirfd", "ptr", "openflags"),
        "open_tree": ("dirfd", "path", "hex"),
        "open_tree_attr": ("dirfd", "path", "hex", "ptr", "uint"),
        "openat": ("dirfd", "path", "openflags", "mode"),
        "openat2": ("dirfd", "path", "open_how", "uint"),
        "pause": (),
        "perf_event_open": ("ptr", "pid", "int", "fd", "hex"),
        "personality": ("hex",),
        "pidfd_getfd": ("fd", "fd", "hex"),
        "pidfd_open": ("pid", "hex"),
        "pidfd_send_signal": ("fd", "sig", "ptr", "hex"),
        "pipe": ("ptr",),
        "pipe2": ("ptr", "openflags"),
        "pivot_root": ("path", "path"),
        "pkey_alloc": ("hex", "uint"),
        "pkey_free": ("int",),
        "pkey_mprotect": ("ptr", "uint", "prot", "int"),
        "poll": ("ptr", "uint", "int"),
        "ppoll": ("ptr", "uint", "ptr", "ptr", "uint"),
        "prctl": ("prctl", "hex", "hex", "hex", "hex"),
        "pread64": ("fd", "ptr", "uint", "int"),
        "preadv": ("fd", "ptr", "uint", "uint", "uint"),
        "preadv2": ("fd", "ptr", "uint", "uint", "uint", "hex"),
        "prlimit64": ("pid", "rlimit", "ptr", "ptr"),
        "process_madvise": ("fd", "ptr", "uint", "int", "hex"),
        "process_mrelease": ("fd", "hex"),
        "process_vm_readv": ("pid", "ptr", "uint", "ptr", "uint", "hex"),
        "process_vm_writev": ("pid", "ptr", "uint", "ptr", "uint", "hex"),
        "pselect6": ("int", "ptr", "ptr", "ptr", "ptr", "ptr"),
        "ptrace": ("int", "pid", "ptr", "ptr"),
        "putpmsg": (),
        "pwrite64": ("fd", "ptr", "uint", "int"),
        "pwritev": ("fd", "ptr", "uint", "uint", "uint"),
        "pwritev2": ("fd", "ptr", "uint", "uint", "uint", "hex"),
        "query_module": ("str", "int", "ptr", "uint", "ptr"),
        "quotactl": ("uint", "path", "uint", "ptr"),
        "quotactl_fd": ("fd", "uint", "uint", "ptr"),
        "read": ("fd", "ptr", "uint"),
        "readahead": ("fd", "int", "uint"),
        "readlink": ("path", "ptr", "uint"),
        "readlinkat": ("dirfd", "path", "ptr", "uint"),
        "readv": ("fd", "ptr", "uint"),
        "reboot": ("int", "int", "uint", "ptr"),
        "recvfrom": ("fd", "ptr", "uint", "hex", "ptr", "ptr"),
        "recvmmsg": ("fd", "ptr", "uint", "hex", "ptr"),
        "recvmsg": ("fd", "ptr", "hex"),
        "remap_file_pages": ("ptr", "uint", "uint", "uint", "hex"),
        "removexattr": ("path", "str"),
        "removexattrat": ("dirfd", "path", "hex", "str"),
        "rename": ("path", "path"),
        "renameat": ("dirfd", "path", "dirfd", "path"),
        "renameat2": ("dirfd", "path", "dirfd", "path", "hex"),
        "request_key": ("str", "str", "str", "int"),
        "restart_syscall": (),
        "rmdir": ("path",),
        "rseq": ("ptr", "uint", "hex", "hex"),
        "rt_sigaction": ("sig", "ptr", "ptr", "uint"),
        "rt_sigpending": ("ptr", "uint"),
        "rt_sigprocmask": ("int", "ptr", "ptr", "uint"),
        "rt_sigqueueinfo": ("pid", "sig", "ptr"),
        "rt_sigreturn": (),
        "rt_sigsuspend": ("ptr", "uint"),
        "rt_sigtimedwait": ("ptr", "ptr", "ptr", "uint"),
        "rt_tgsigqueueinfo": ("pid", "pid", "sig", "ptr"),
        "sched_get_priority_max": ("int",),
        "sched_get_priority_min": ("int",),
        "sched_getaffinity": ("pid", "uint", "ptr"),
        "sched_getattr": ("pid", "ptr", "uint", "hex"),
        "sched_getparam": ("pid", "ptr"),
        "sched_getscheduler": ("pid",),
        "sched_rr_get_interval": ("pid", "ptr"),
        "sched_setaffinity": ("pid", "uint", "ptr"),
        "sched_setattr": ("pid", "ptr", "hex"),
        "sched_setparam": ("pid", "ptr"),
        "sched_setscheduler": ("pid", "int", "ptr"),
        "sched_yield": (),
        "seccomp": ("seccomp_op", "hex", "ptr"),
        "security": (),
        "select": ("int", "ptr", "ptr", "ptr", "ptr"),
        "semctl": ("int", "int", "int", "uint"),
        "semget": ("int", "int", "int"),
        "semop": ("int", "ptr", "uint"),
        "semtimedop": ("int", "ptr", "uint", "ptr"),
        "sendfile": ("fd", "fd", "ptr", "uint"),
        "sendmmsg": ("fd", "ptr", "uint", "hex"),
        "sendmsg": ("fd", "msghdr", "hex"),
        "sendto": ("fd", "ptr", "uint", "hex", "sockaddr", "int"),
        "set_mempolicy": ("int", "ptr", "uint"),
        "set_mempolicy_home_node": ("ptr", "uint", "uint", "hex"),
        "set_robust_list": ("ptr", "uint"),
        "set_thread_area": ("ptr",),
        "set_tid_address": ("ptr",),
        "setdomainname": ("str", "int"),
        "setfsgid": ("id",),
        "setfsuid": ("id",),
        "setgid": ("id",),
        "setgroups": ("int", "ptr"),
        "sethostname": ("str", "int"),
        "setitimer": ("int", "ptr", "ptr"),
        "setns": ("fd", "hex"),
        "setpgid": ("pid", "pid"),
        "setpriority": ("int", "int", "int"),
        "setregid": ("id", "id"),
        "setresgid": ("id", "id", "id"),
        "setresuid": ("id", "id", "id"),
        "setreuid": ("id", "id"),
        "setrlimit": ("rlimit", "ptr"),
        "setsid": (),
        "setsockopt": ("fd", "sol", "int", "ptr", "int"),
        "settimeofday": ("ptr", "ptr"),
        "setuid": ("id",),
        "setxattr": ("path", "str", "ptr", "uint", "hex"),
        "setxattrat": ("dirfd", "path", "hex", "str", "ptr", "uint"),
        "shmat": ("int", "ptr", "int"),
        "shmctl": ("int", "int", "ptr"),
        "shmdt": ("ptr",),
        "shmget": ("int", "uint", "int"),
        "shutdown": ("fd", "int"),
        "sigaltstack": ("ptr", "ptr"),
        "signalfd": ("fd", "ptr", "hex"),
        "signalfd4": ("fd", "ptr", "hex", "hex"),
        "socket": ("af", "socktype", "int"),
        "socketpair": ("af", "socktype", "int", "ptr"),
        "splice": ("fd", "ptr", "fd", "ptr", "uint", "hex"),
        "stat": ("path", "ptr"),
        "statfs": ("path", "ptr"),
        "statmount": ("ptr", "ptr", "uint", "hex"),
        "statx": ("dirfd", "path", "at", "hex", "ptr"),
        "swapoff": ("path",),
        "swapon": ("path", "hex"),
        "symlink": ("path", "path"),
        "symlinkat": ("path", "dirfd", "path"),
        "sync": (),
        "sync_file_range": ("fd", "int", "int", "hex"),
        "syncfs": ("fd",),
        "sysfs": ("int", "uint", "uint"),
        "sysinfo": ("ptr",),
        "syslog": ("int", "ptr", "int"),
        "tee": ("fd", "fd", "uint", "hex"),
        "tgkill": ("pid", "pid", "sig"),
        "time": ("ptr",),
        "timer_create": ("clock", "ptr", "ptr"),
        "timer_delete": ("int",),
        "timer_getoverrun": ("int",),
        "timer_gettime": ("int", "ptr"),
        "timer_settime": ("int", "hex", "ptr", "ptr"),
        "timerfd_create": ("clock", "hex"),
        "timerfd_gettime": ("fd", "ptr"),
        "timerfd_settime": ("fd", "hex", "ptr", "ptr"),
        "times": ("ptr",),
        "tkill": ("pid", "sig"),
        "truncate": ("path", "int"),
        "tuxcall": (),
        "umask": ("mode",),
        "umount2": ("path", "hex"),
        "uname": ("ptr",),
        "unlink": ("path",),
        "unlinkat": ("dirfd", "path", "at"),
        "unshare": ("clone",),
        "uprobe": (),
        "uretprobe": (),
        "uselib": ("path",),
        "userfaultfd": ("hex",),
        "ustat": ("uint", "ptr"),
        "utime": ("path", "utimbuf"),
        "utimensat": ("dirfd", "path", "timespec_pair", "at"),
        "utimes": ("path", "timeval_pair"),
        "vfork": (),
        "vhangup": (),
        "vmsplice": ("fd", "ptr", "uint", "hex"),
        "vserver": (),
        "wait4": ("pid", "ptr", "hex", "ptr"),
        "waitid": ("int", "pid", "ptr", "int", "ptr"),
        "write": ("fd", "ptr", "uint"),
        "writev": ("fd", "ptr", "uint"),
    }
)
# --- END GENERATED ---
# fmt: on

# Structs behind a pointer argument, read for messages: their u64 fields in order. The
# argument after the pointer is the struct's size (clone3, openat2).
STRUCTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "clone_args": (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
            "tls", "set_tid", "set_tid_size", "cgroup",
        ),
        "open_how": ("flags", "mode", "resolve"),
    }
)  # fmt: skip

# How a field of a struct prints (fields not listed: hex, omitted when zero).
_FIELD_KINDS: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("clone_args", "flags"): "clone",
        ("clone_args", "exit_signal"): "sig",
        ("clone_args", "stack_size"): "uint",
        ("clone_args", "set_tid_size"): "uint",
        ("open_how", "flags"): "openflags",
        ("open_how", "mode"): "mode",
        ("open_how", "resolve"): "resolve",
        ("sockaddr", "family"): "af",
    }
)


def field_kind(struct_name: str, field: str) -> str:
    """How field `field` of struct `struct_name` prints (a kind of format_value)."""
    return _FIELD_KINDS.get((struct_name, field), "hex")


_ALWAYS_SHOWN = frozenset({("clone_args", "flags"), ("open_how", "flags")})
# Fields left out of messages: pointers the kernel writes back to (noise, not the request).
_NOT_SHOWN = frozenset(
    {("clone_args", "pidfd"), ("clone_args", "child_tid"), ("clone_args", "parent_tid")}
)

_IOC_DIRS = {0: "_IOC_NONE", 1: "_IOC_WRITE", 2: "_IOC_READ", 3: "_IOC_READ|_IOC_WRITE"}
_U64 = 0xFFFFFFFFFFFFFFFF
_ARGV_MAX = 16  # strings of an argv shown before "..."
_STRING_MAX = 4096


def _s64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >> 63 else v


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def format_flags(kind: str, value: int) -> str:
    """`value` as NAME|NAME|0xREST using the flag set `kind` ("open", "prot", "clone", ...)."""
    names: list[str] = []
    rest = value
    for bit, name in _FLAGS[kind]:
        if bit and rest & bit == bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names) if names else _ZERO_NAMES.get(kind, "0")


def format_open_flags(value: int) -> str:
    acc = _ENUMS["accmode"].get(value & O_ACCMODE, hex(value & O_ACCMODE))
    rest = value & ~O_ACCMODE
    return acc if not rest else f"{acc}|{format_flags('open', rest)}"


def format_enum(kind: str, value: int) -> str:
    name = _ENUMS[kind].get(value)
    return name if name is not None else hex(value)


def format_ioctl(value: int) -> str:
    """An ioctl request by name, else its _IOC(direction, type, number, size) fields."""
    name = _ENUMS["ioctl"].get(value)
    if name is not None:
        return name
    if value >> 32 or value < 0:
        return hex(value & _U64)  # upper bits set: the filter saw them, show them
    if value >> 16 == 0:
        return hex(value)  # an old-style request without direction and size
    direction, size = value >> 30, (value >> 16) & 0x3FFF
    return f"_IOC({_IOC_DIRS[direction]}, {(value >> 8) & 0xFF:#x}, {value & 0xFF:#x}, {size:#x})"


def format_clone_flags(value: int) -> str:
    """clone(2)'s flags: CLONE_* names, then the exit signal of the low byte (CLONE_VM|SIGCHLD)."""
    flags = format_flags("clone", value & ~CSIGNAL & _U64)
    exit_signal = value & CSIGNAL
    if not exit_signal:
        return flags
    sig = format_enum("signal", exit_signal)
    return sig if flags == "0" else f"{flags}|{sig}"


def format_futex_op(value: int) -> str:
    op = format_enum("futex_cmd", value & 0x7F)
    extra = value & ~0x7F
    return op if not extra else f"{op}|{format_flags('futex', extra)}"


def format_value(kind: str, value: int, path: str | None = None) -> str:
    """One argument value printed as argument kind `kind` (see SIGNATURES); `path` is the
    string behind a path/str pointer when it could be read."""
    if kind in ("fd", "dirfd", "pid", "int"):
        v = _s32(value) if kind != "int" else _s64(value)
        if kind == "dirfd" and v == AT_FDCWD:
            return "AT_FDCWD"
        if value >> 32 and kind != "int" and _s64(value) != v:
            return hex(value & _U64)  # upper bits set: show them, they are the point
        return str(v)
    if kind == "id":
        return "-1" if value & 0xFFFFFFFF == 0xFFFFFFFF else str(value & 0xFFFFFFFF)
    if kind == "uint":
        return str(value & _U64)
    if kind in ("path", "str"):
        if value == 0:
            return "NULL"
        return _quote(path) if path is not None else hex(value & _U64)
    if kind in ("ptr", *STRUCTS, *RECORDS, "sockaddr", "argv", "msghdr"):
        return "NULL" if value == 0 else hex(value & _U64)
    if kind == "mode":
        return "0" + format(value & 0o7777, "o") if value & ~0o7777 == 0 else oct(value)
    if kind == "fmode":
        ftype = {
            S_IFIFO: "S_IFIFO",
            S_IFCHR: "S_IFCHR",
            S_IFDIR: "S_IFDIR",
            S_IFBLK: "S_IFBLK",
            S_IFREG: "S_IFREG",
            S_IFSOCK: "S_IFSOCK",
        }.get(value & S_IFMT)
        perm = "0" + format(value & 0o7777, "o")
        return f"{ftype}|{perm}" if ftype else oct(value)
    if kind == "sig":
        return "0" if value == 0 else format_enum("signal", value)
    if kind == "openflags":
        return format_open_flags(value)
    if kind == "cloneflags":
        return format_clone_flags(value)
    if kind == "futex_op":
        return format_futex_op(value)
    if kind == "ioctl":
        return format_ioctl(value)
    if kind == "socktype":
        base = format_enum("socktype", value & SOCK_TYPE_MASK)
        extra = value & ~SOCK_TYPE_MASK
        return base if not extra else f"{base}|{format_flags('sock_flags', extra)}"
    if kind in _FLAGS:
        return format_flags(kind, value)
    if kind in _ENUMS:
        return format_enum(kind, value)
    return hex(value & _U64)


def _quote(text: str) -> str:
    """A C-like string literal: quotes and backslashes escaped, control characters (terminal
    escapes from the agent) and invalid UTF-8 shown as escapes, never passed through."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


def arg_kinds(syscall: str) -> tuple[str, ...] | None:
    """How the arguments of `syscall` print, or None if this module does not know it."""
    return SIGNATURES.get(syscall)


# --- another process's memory, for messages only --------------------------------------------


class Memory:
    """Reads from another process's memory (/proc/PID/mem), for wording messages.

    Never for a decision: the process may change its memory after the kernel read it (and
    its other threads may do so while we read). Every read may fail (the process is gone,
    the address unmapped); it then returns None, and the message shows the pointer.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._failed = False

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        if self._fd is None and not self._failed:
            try:
                self._fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._failed = True
        return self._fd

    def read(self, addr: int, size: int) -> bytes | None:
        """Exactly `size` bytes at `addr`, or None."""
        fd = self._open()
        if fd is None or addr <= 0 or size < 0 or addr + size > _U64:
            return None
        try:
            data = os.pread(fd, size, addr)
        except (OSError, OverflowError):
            return None
        return data if len(data) == size else None

    def string(self, addr: int, limit: int = _STRING_MAX) -> str | None:
        """The NUL-terminated string at `addr` (at most `limit` bytes), or None."""
        fd = self._open()
        if fd is None or addr <= 0 or limit <= 0:
            return None
        data = b""
        # Page by page: a string near the end of a mapping must not fail the whole read.
        while len(data) < limit:
            chunk_len = min(4096 - ((addr + len(data)) % 4096), limit - len(data))
            try:
                chunk = os.pread(fd, chunk_len, addr + len(data))
            except (OSError, OverflowError):
                return None
            if not chunk:
                return None
            nul = chunk.find(b"\0")
            if nul >= 0:
                return (data + chunk[:nul]).decode("utf-8", "backslashreplace")
            data += chunk
        return None

    def words(self, addr: int, count: int) -> tuple[int, ...] | None:
        """`count` u64 words at `addr`, or None."""
        data = self.read(addr, 8 * count)
        return None if data is None else struct.unpack(f"={count}Q", data)


def read_path(pid: int, addr: int, limit: int = _STRING_MAX) -> str | None:
    """The NUL-terminated string at `addr` in process `pid`, or None if it cannot be read.

    Never use it for a decision: the target can change the memory after the read.
    """
    with Memory(pid) as mem:
        return mem.string(addr, limit)


def struct_fields(
    kind: str, args: Sequence[int], index: int, mem: Memory | None
) -> dict[str, int] | None:
    """The fields of struct `kind` behind argument `index` (its size in the next argument),
    or None if it cannot be read. Fields beyond the size the caller passed read as 0, as
    the kernel treats them."""
    names = STRUCTS[kind]
    if mem is None or index >= len(args) or not args[index]:
        return None
    size = args[index + 1] if index + 1 < len(args) else 8 * len(names)
    count = min(len(names), max(0, size) // 8)
    if count == 0:
        return None
    words = mem.words(args[index], count)
    if words is None:
        return None
    return {name: (words[i] if i < count else 0) for i, name in enumerate(names)}


# What a view of a pointer argument shows (sandbox.enforce.promises' hints test it): the
# fields of a struct of STRUCTS, or the family of a socket address.
VIEWS: Mapping[str, tuple[str, ...]] = MappingProxyType({**STRUCTS, "sockaddr": ("family",)})


def view_of(view: str, syscall: str, args: Sequence[int], mem: Memory | None) -> list[int] | None:
    """The fields of `view` (a name of VIEWS) behind the first argument of that kind of
    `syscall`, in VIEWS order, or None if the call has none or it cannot be read."""
    for i, kind in enumerate(SIGNATURES.get(syscall, ())):
        if kind != view:
            continue
        if view == "sockaddr":
            length = args[i + 1] if i + 1 < len(args) else 0
            data = mem.read(args[i], 2) if mem is not None and args[i] and length >= 2 else None
            return None if data is None else [int.from_bytes(data, "little")]
        fields = struct_fields(view, args, i, mem)
        return None if fields is None else list(fields.values())
    return None


def path_of(syscall: str, args: Sequence[int], mem: Memory | None) -> str | None:
    """The first path argument of `syscall` as the process passed it, or None."""
    for i, kind in enumerate(SIGNATURES.get(syscall, ())):
        if kind == "path":
            if mem is None or i >= len(args) or not args[i]:
                return None
            return mem.string(args[i])
    return None


# Fixed-size records behind a pointer (their size is the C type's, not an argument): the
# times of utimensat/utimes/futimesat/utime and fcntl's struct flock. kind -> layout.
RECORDS: Mapping[str, struct.Struct] = MappingProxyType(
    {
        "timespec_pair": struct.Struct("=qqqq"),  # struct timespec[2]: sec, nsec
        "timeval_pair": struct.Struct("=qqqq"),  # struct timeval[2]: sec, usec
        "utimbuf": struct.Struct("=qq"),  # actime, modtime
        "flock_struct": struct.Struct("=hh4xqqi4x"),  # type, whence, start, len, pid
    }
)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_LOCK_TYPES = {0: "F_RDLCK", 1: "F_WRLCK", 2: "F_UNLCK"}


def _time_pair(kind: str, v: tuple[int, ...]) -> str:
    frac = "tv_nsec" if kind == "timespec_pair" else "tv_usec"
    out = []
    for sec, part in ((v[0], v[1]), (v[2], v[3])):
        if kind == "timespec_pair" and part in (UTIME_NOW, UTIME_OMIT):
            out.append("UTIME_NOW" if part == UTIME_NOW else "UTIME_OMIT")
        else:
            out.append(f"{{tv_sec={sec}, {frac}={part}}}")
    return "[" + ", ".join(out) + "]"


def _record_at(kind: str, mem: Memory, addr: int) -> str | None:
    """A RECORDS value behind a pointer, as strace prints it, or None if unreadable."""
    layout = RECORDS[kind]
    data = mem.read(addr, layout.size)
    if data is None:
        return None
    v = layout.unpack(data)
    if kind == "flock_struct":
        return (
            f"{{l_type={_LOCK_TYPES.get(v[0], str(v[0]))}, "
            f"l_whence={format_enum('whence', v[1])}, l_start={v[2]}, l_len={v[3]}}}"
        )
    if kind == "utimbuf":
        return f"{{actime={v[0]}, modtime={v[1]}}}"
    return _time_pair(kind, v)


def _format_struct(kind: str, fields: Mapping[str, int]) -> str:
    parts = []
    for name, value in fields.items():
        if (kind, name) in _NOT_SHOWN or (not value and (kind, name) not in _ALWAYS_SHOWN):
            continue
        parts.append(f"{name}={format_value(field_kind(kind, name), value)}")
    return "{" + ", ".join(parts) + "}"


def format_sockaddr(data: bytes) -> str:
    """A struct sockaddr as {AF_INET, 10.0.0.1:443}, {AF_INET6, [::1]:53},
    {AF_UNIX, "/run/x.sock"} or {AF_UNIX, @"abstract"}."""
    if len(data) < 2:
        return "{}"
    family = int.from_bytes(data[:2], "little")
    name = format_enum("af", family)
    if family == AF_INET and len(data) >= 8:
        port = int.from_bytes(data[2:4], "big")
        return f"{{{name}, {socket.inet_ntop(socket.AF_INET, data[4:8])}:{port}}}"
    if family == AF_INET6 and len(data) >= 24:
        port = int.from_bytes(data[2:4], "big")
        addr = socket.inet_ntop(socket.AF_INET6, data[8:24])
        scope = int.from_bytes(data[24:28], "little") if len(data) >= 28 else 0
        return f"{{{name}, [{addr}{'%' + str(scope) if scope else ''}]:{port}}}"
    if family == AF_UNIX:
        path = data[2:]
        if not path:
            return f"{{{name}}}"  # unnamed
        if path[:1] == b"\0":
            return f"{{{name}, @{_quote(path[1:].decode('utf-8', 'backslashreplace'))}}}"
        text = path.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        return f"{{{name}, {_quote(text)}}}"
    if family == AF_NETLINK and len(data) >= 12:
        pid = int.from_bytes(data[4:8], "little")
        groups = int.from_bytes(data[8:12], "little")
        return f"{{{name}, pid={pid}, groups={groups:#x}}}"
    return f"{{{name}}}"


_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags


def _sockaddr_at(mem: Memory, addr: int, length: int) -> str | None:
    if not 0 < length <= _SOCKADDR_MAX:
        return None
    data = mem.read(addr, length)
    return None if data is None else format_sockaddr(data)


def _argv_at(mem: Memory, addr: int) -> str | None:
    items: list[str] = []
    for i in range(_ARGV_MAX + 1):
        ptr = mem.words(addr + 8 * i, 1)
        if ptr is None:
            return None
        if ptr[0] == 0:
            return "[" + ", ".join(items) + "]"
        if i == _ARGV_MAX:
            break
        text = mem.string(ptr[0], 256)
        items.append(_quote(text) if text is not None else hex(ptr[0]))
    return "[" + ", ".join(items) + ", ...]"


def _msghdr_at(mem: Memory, addr: int) -> str | None:
    data = mem.read(addr, _MSGHDR.size)
    if data is None:
        return None
    name, namelen, _iov, iovlen, _control, controllen, _flags = _MSGHDR.unpack(data)
    dest = "NULL" if not name else (_sockaddr_at(mem, name, namelen) or hex(name))
    return f"{{msg_name={dest}, msg_iovlen={iovlen}, msg_controllen={controllen}}}"


def _deref(
    kind: str, args: Sequence[int], index: int, mem: Memory
) -> str | None:  # the text behind a pointer argument, or None to print the pointer
    value = args[index]
    if not value:
        return None
    if kind in ("path", "str"):
        text = mem.string(value)
        return None if text is None else _quote(text)
    if kind == "sockaddr":
        return _sockaddr_at(mem, value, args[index + 1] if index + 1 < len(args) else 0)
    if kind == "argv":
        return _argv_at(mem, value)
    if kind == "msghdr":
        return _msghdr_at(mem, value)
    if kind in STRUCTS:
        fields = struct_fields(kind, args, index, mem)
        return None if fields is None else _format_struct(kind, fields)
    if kind in RECORDS:
        return _record_at(kind, mem, value)
    return None


# Arguments whose meaning depends on another one: (call, index) -> (index of the selector,
# selector value -> kind). FICLONE's argument is the source descriptor.
_DEPENDENT: Mapping[tuple[str, int], tuple[int, Mapping[int, str]]] = MappingProxyType(
    {
        ("ioctl", 2): (1, {FICLONE: "fd"}),
        ("fcntl", 2): (
            1,
            {
                F_DUPFD: "fd",
                F_DUPFD_CLOEXEC: "fd",
                F_SETFL: "openflags",
                F_SETSIG: "sig",
                **dict.fromkeys(
                    (F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW),
                    "flock_struct",
                ),
            },
        ),
    }
)

_DEREF_KINDS = frozenset({"path", "str", "sockaddr", "argv", "msghdr", *STRUCTS, *RECORDS})


def decode_args(
    syscall: str, args: Sequence[int], *, pid: int | None = None, mem: Memory | None = None
) -> str:
    """`syscall(ARG, ...)` by the call's real signature, flags and constants named.

    Calls this module does not know print every argument given in hex. With `pid` (or an
    open `mem`), what pointers point to (paths, strings, socket addresses, argv, structs)
    is read from the process's memory, best effort and for the message only.
    """
    kinds = SIGNATURES.get(syscall)
    if kinds is None:
        return f"{syscall}({', '.join(hex(a & _U64) for a in args)})"
    own = mem is None and pid is not None
    if own:
        assert pid is not None
        mem = Memory(pid)
    try:
        parts = []
        for i, (kind, value) in enumerate(zip(kinds, args, strict=False)):
            dependent = _DEPENDENT.get((syscall, i))
            if dependent is not None and dependent[0] < len(args):
                kind = dependent[1].get(args[dependent[0]] & 0xFFFFFFFF, kind)
            text = _deref(kind, args, i, mem) if mem is not None and kind in _DEREF_KINDS else None
            parts.append(text if text is not None else format_value(kind, value))
        return f"{syscall}({', '.join(parts)})"
    finally:
        if own and mem is not None:
            mem.close()
