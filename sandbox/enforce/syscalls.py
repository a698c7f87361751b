"""System-call arguments made readable, for violation messages and audit records.

Only for people: nothing here takes a decision. The constants are the x86-64 Linux values;
sandbox.enforce.promises builds its argument conditions from the same names, so a condition and the
message about it always spell a flag the same way.
"""

from __future__ import annotations

import os
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
            38: "AF_ALG",
            40: "AF_VSOCK",
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
            0x59616D61: "PR_SET_PTRACER",
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
            1: "SIGHUP",
            2: "SIGINT",
            3: "SIGQUIT",
            4: "SIGILL",
            5: "SIGTRAP",
            6: "SIGABRT",
            7: "SIGBUS",
            8: "SIGFPE",
            9: "SIGKILL",
            10: "SIGUSR1",
            11: "SIGSEGV",
            12: "SIGUSR2",
            13: "SIGPIPE",
            14: "SIGALRM",
            15: "SIGTERM",
            17: "SIGCHLD",
            18: "SIGCONT",
            19: "SIGSTOP",
            20: "SIGTSTP",
            31: "SIGSYS",
        },
    }
)

# How each argument prints. Kinds: fd, dirfd, path, ptr, int, uint, hex, mode, sig, pid,
# a flag set name (_FLAGS), an enum name (_ENUMS), or "openflags", "socktype", "fmode".
_ARGS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "read": ("fd", "ptr", "uint"),
        "write": ("fd", "ptr", "uint"),
        "close": ("fd",),
        "open": ("path", "openflags", "mode"),
        "openat": ("dirfd", "path", "openflags", "mode"),
        "openat2": ("dirfd", "path", "ptr", "uint"),
        "creat": ("path", "mode"),
        "stat": ("path", "ptr"),
        "lstat": ("path", "ptr"),
        "fstat": ("fd", "ptr"),
        "newfstatat": ("dirfd", "path", "ptr", "at"),
        "statx": ("dirfd", "path", "at", "hex", "ptr"),
        "access": ("path", "mode"),
        "faccessat": ("dirfd", "path", "mode"),
        "faccessat2": ("dirfd", "path", "mode", "at"),
        "readlink": ("path", "ptr", "uint"),
        "readlinkat": ("dirfd", "path", "ptr", "uint"),
        "getdents64": ("fd", "ptr", "uint"),
        "chdir": ("path",),
        "truncate": ("path", "int"),
        "mkdir": ("path", "mode"),
        "mkdirat": ("dirfd", "path", "mode"),
        "rmdir": ("path",),
        "unlink": ("path",),
        "unlinkat": ("dirfd", "path", "at"),
        "rename": ("path", "path"),
        "renameat": ("dirfd", "path", "dirfd", "path"),
        "renameat2": ("dirfd", "path", "dirfd", "path", "hex"),
        "link": ("path", "path"),
        "linkat": ("dirfd", "path", "dirfd", "path", "at"),
        "symlink": ("path", "path"),
        "symlinkat": ("path", "dirfd", "path"),
        "mknod": ("path", "fmode", "hex"),
        "mknodat": ("dirfd", "path", "fmode", "hex"),
        "chmod": ("path", "mode"),
        "fchmod": ("fd", "mode"),
        "fchmodat": ("dirfd", "path", "mode"),
        "chown": ("path", "int", "int"),
        "fchown": ("fd", "int", "int"),
        "lchown": ("path", "int", "int"),
        "fchownat": ("dirfd", "path", "int", "int", "at"),
        "utimensat": ("dirfd", "path", "ptr", "at"),
        "mmap": ("ptr", "uint", "prot", "map", "fd", "hex"),
        "mprotect": ("ptr", "uint", "prot"),
        "pkey_mprotect": ("ptr", "uint", "prot", "int"),
        "munmap": ("ptr", "uint"),
        "memfd_create": ("path", "mfd"),
        "ioctl": ("fd", "ioctl", "hex"),
        "fcntl": ("fd", "fcntl", "hex"),
        "flock": ("fd", "hex"),
        "socket": ("af", "socktype", "int"),
        "socketpair": ("af", "socktype", "int", "ptr"),
        "connect": ("fd", "ptr", "uint"),
        "bind": ("fd", "ptr", "uint"),
        "listen": ("fd", "int"),
        "accept": ("fd", "ptr", "ptr"),
        "accept4": ("fd", "ptr", "ptr", "sock_flags"),
        "sendto": ("fd", "ptr", "uint", "hex", "ptr", "uint"),
        "recvfrom": ("fd", "ptr", "uint", "hex", "ptr", "ptr"),
        "sendmsg": ("fd", "ptr", "hex"),
        "recvmsg": ("fd", "ptr", "hex"),
        "setsockopt": ("fd", "sol", "int", "ptr", "uint"),
        "getsockopt": ("fd", "sol", "int", "ptr", "ptr"),
        "clone": ("clone", "ptr", "ptr", "ptr", "ptr"),
        "clone3": ("ptr", "uint"),
        "execve": ("path", "ptr", "ptr"),
        "execveat": ("dirfd", "path", "ptr", "ptr", "at"),
        "kill": ("pid", "sig"),
        "tkill": ("pid", "sig"),
        "tgkill": ("pid", "pid", "sig"),
        "wait4": ("pid", "ptr", "hex", "ptr"),
        "prlimit64": ("pid", "int", "ptr", "ptr"),
        "prctl": ("prctl", "hex", "hex", "hex", "hex"),
        "arch_prctl": ("arch_prctl", "hex"),
        "seccomp": ("seccomp_op", "hex", "ptr"),
        "personality": ("hex",),
        "setuid": ("int",),
        "setgid": ("int",),
        "unshare": ("clone",),
        "dup": ("fd",),
        "dup2": ("fd", "fd"),
        "dup3": ("fd", "fd", "openflags"),
        "lseek": ("fd", "int", "int"),
        "pread64": ("fd", "ptr", "uint", "int"),
        "pwrite64": ("fd", "ptr", "uint", "int"),
        "ptrace": ("int", "pid", "ptr", "ptr"),
        "exit": ("int",),
        "exit_group": ("int",),
    }
)


def _s64(v: int) -> int:
    v &= 0xFFFFFFFFFFFFFFFF
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
    return "|".join(names) if names else "0"


def format_open_flags(value: int) -> str:
    acc = _ENUMS["accmode"].get(value & O_ACCMODE, hex(value & O_ACCMODE))
    rest = value & ~O_ACCMODE
    return acc if not rest else f"{acc}|{format_flags('open', rest)}"


def format_enum(kind: str, value: int) -> str:
    name = _ENUMS[kind].get(value)
    return name if name is not None else hex(value)


def format_value(kind: str, value: int, path: str | None = None) -> str:
    """One argument value printed as argument kind `kind` (see _ARGS)."""
    if kind in ("fd", "dirfd", "pid", "int"):
        v = _s32(value) if kind != "int" else _s64(value)
        if kind == "dirfd" and v == AT_FDCWD:
            return "AT_FDCWD"
        if value >> 32 and kind != "int" and _s64(value) != v:
            return hex(value)  # upper bits set: show them, they are the point
        return str(v)
    if kind == "uint":
        return str(value & 0xFFFFFFFFFFFFFFFF)
    if kind == "ptr":
        return "NULL" if value == 0 else hex(value)
    if kind == "path":
        if value == 0:
            return "NULL"
        return _quote(path) if path is not None else hex(value)
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
        return format_enum("signal", value)
    if kind == "openflags":
        return format_open_flags(value)
    if kind == "socktype":
        base = format_enum("socktype", value & SOCK_TYPE_MASK)
        extra = value & ~SOCK_TYPE_MASK
        return base if not extra else f"{base}|{format_flags('sock_flags', extra)}"
    if kind in _FLAGS:
        return format_flags(kind, value)
    if kind in _ENUMS:
        return format_enum(kind, value)
    return hex(value)


def _quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def arg_kinds(syscall: str) -> tuple[str, ...] | None:
    """How the arguments of `syscall` print, or None if this module does not know it."""
    return _ARGS.get(syscall)


def decode_args(syscall: str, args: Sequence[int], *, pid: int | None = None) -> str:
    """`syscall(ARG, ...)` with flags and constants named.

    Calls this module does not know print all six arguments in hex. With `pid`, path
    arguments are read from the process's memory (best effort; for messages only: the
    process may change the memory after the kernel has read it).
    """
    kinds = _ARGS.get(syscall)
    if kinds is None:
        return f"{syscall}({', '.join(hex(a & 0xFFFFFFFFFFFFFFFF) for a in args)})"
    parts = []
    for kind, value in zip(kinds, args, strict=False):
        path = read_path(pid, value) if kind == "path" and pid is not None and value else None
        parts.append(format_value(kind, value, path))
    return f"{syscall}({', '.join(parts)})"


def read_path(pid: int, addr: int, limit: int = 4096) -> str | None:
    """The NUL-terminated string at `addr` in process `pid`, or None if it cannot be read.

    Never use it for a decision: the target can change the memory after the read.
    """
    if addr <= 0 or limit <= 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = b""
        # Read page by page: a string near the end of a mapping must not fail the whole read.
        while len(data) < limit:
            chunk_len = min(4096 - ((addr + len(data)) % 4096), limit - len(data))
            try:
                chunk = os.pread(fd, chunk_len, addr + len(data))
            except OSError:
                break
            if not chunk:
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                return (data + chunk[:nul]).decode("utf-8", "backslashreplace")
            data += chunk
        return None
    finally:
        os.close(fd)
