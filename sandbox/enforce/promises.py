"""The promise table (SPEC section 5): promise -> system calls with argument conditions.

Pure data, read by one compiler (sandbox.enforce.seccomp) and by the one evaluator of
sandbox.enforce.rules (the parent routes user notifications with it, and this module
words violation messages with it). Modelled on OpenBSD's pledge(2) and
Cosmopolitan's Linux port, stricter where a Linux filter cannot see what OpenBSD's kernel
sees. x86-64 only. Decisions that are not obvious are explained next to their rows.

Semantics of a rule set:
- Rules for the same call OR together; the Args of one rule AND together; at most one Arg
  per argument index (libseccomp refuses two).
- Where several rules match, the most permissive action wins: allow > notify > enosys.
  The compiler relies on rules of different actions on one call being disjoint, or on an
  unconditional allow (which supersedes everything else on that call).
- Argument checks see the 64-bit registers. Conditions are written so that stray upper
  bits make a call fail the check (refused), never pass it.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from sandbox.enforce import sockopts
from sandbox.enforce import syscalls as S
from sandbox.enforce.rules import (
    SELF_PID,
    Arg,
    Rule,
    RuleAction,
    arg_matches,
    match,
    rule_matches,
)
from sandbox.plain import plain
from sandbox.protocol import BROKER_FD


@plain(frozen=True)
class Promise:
    name: str
    summary: str
    rules: tuple[Rule, ...]
    # What holding it gives up, said by `sandbox promises` and `sandbox explain` (empty for
    # promises that only grant what they name).
    weakens: str = ""


# --- small constructors: the table reads as data ------------------------------------------


def _eq(index: int, value: int) -> Arg:
    return Arg(index, "eq", value)


def _bits(index: int, mask: int, value: int) -> Arg:
    """(arg & mask) == value."""
    return Arg(index, "masked_eq", value, mask)


def _calls(*names: str, also: Iterable[str] = ()) -> tuple[Rule, ...]:
    return tuple(Rule(n, also=frozenset(also)) for n in names)


def _r(
    name: str,
    *args: Arg,
    also: Iterable[str] = (),
    action: RuleAction = "allow",
    handler: str | None = None,
    unless: Iterable[str] = (),
) -> Rule:
    return Rule(
        name,
        tuple(args),
        action=action,
        handler=handler,
        also=frozenset(also),
        unless=frozenset(unless),
    )


def _each(
    name: str, index: int, values: Iterable[int], also: Iterable[str] = ()
) -> tuple[Rule, ...]:
    return tuple(_r(name, _eq(index, v), also=also) for v in values)


# --- building blocks ------------------------------------------------------------------------

_OPEN_MODE_MASK = S.O_ACCMODE | S.O_CREAT | S.O_TRUNC | S.O_TMPFILE_BIT
_OPEN_CALLS = (("open", 1), ("openat", 2))  # (call, index of the flags argument); mode follows
_CREATE_MASK = S.O_ACCMODE | S.O_CREAT | S.O_TMPFILE_BIT


def _opens(mask: int, value: int, also: Iterable[str] = ()) -> tuple[Rule, ...]:
    return tuple(_r(n, _bits(i, mask, value), also=also) for n, i in _OPEN_CALLS)


# What each handler of the parent that performs calls does (sandbox.parent.perform), for
# `sandbox explain` (and for people reading the table).
HANDLER_SUMMARY: dict[str, str] = {
    "perform": "on paths beneath an unveil with 'w', with the agent's ids",
    "setid": "with setuid/setgid bits stripped",
    "unix": "to unix sockets unveiled 'w' only (no Landlock resolve_unix here)",
}

# No pledged process sets the setuid or setgid bit (OpenBSD masks every mode with
# ACCESSPERMS under pledge). A call that creates or changes a mode is allowed outright
# when its mode register holds neither bit; with one of them the parent performs the call
# itself with the bits stripped (handler "setid"), so `cp -p` and `tar x` of such files
# still work. The mode is a register, so the filter sees it; the sticky bit is left alone.
SETID_BITS = 0o6000  # S_ISUID | S_ISGID
_SETID_VALUES = (0o4000, 0o2000, 0o6000)


def _setid_guarded(
    name: str, mode: int, *args: Arg, also: Iterable[str] = (), kind: int | None = None
) -> tuple[Rule, ...]:
    """`name` allowed when argument `mode` has no setuid/setgid bit, and decided by the
    parent (which strips them) when it has. `kind`: an S_IFMT value the mode must carry
    (mknod), checked in the same mask (libseccomp takes one condition per argument)."""
    mask = SETID_BITS | (S.S_IFMT if kind is not None else 0)
    base = kind or 0
    return (
        _r(name, *args, _bits(mode, mask, base), also=also),
        *(
            _r(
                name,
                *args,
                _bits(mode, mask, base | v),
                also=also,
                action="notify",
                handler="setid",
            )
            for v in _SETID_VALUES
        ),
    )


def _creating_opens(value: int, also: Iterable[str] = ()) -> tuple[Rule, ...]:
    """Opens with O_CREAT or O_TMPFILE whose flags match `value` under _CREATE_MASK."""
    return tuple(
        rule
        for n, i in _OPEN_CALLS
        for rule in _setid_guarded(n, i + 1, _bits(i, _CREATE_MASK, value), also=also)
    )


# Opens by promise. rpath: read-only; wpath: write access to existing files (O_TRUNC is
# part of writing: a file unveiled 'w' must be truncatable on open); O_RDWR needs both;
# cpath: creating (O_CREAT, O_TMPFILE) together with the access it opens for.
_RPATH_OPENS = _opens(_OPEN_MODE_MASK, S.O_RDONLY)
_WPATH_OPENS = (
    *_opens(S.O_ACCMODE | S.O_CREAT | S.O_TMPFILE_BIT, S.O_WRONLY),
    *_opens(S.O_ACCMODE | S.O_CREAT | S.O_TMPFILE_BIT, S.O_RDWR, also=("rpath",)),
    *_opens(_OPEN_MODE_MASK, S.O_RDONLY | S.O_TRUNC, also=("rpath",)),
)
_CPATH_OPENS = (
    *_creating_opens(S.O_CREAT | S.O_RDONLY, also=("rpath",)),
    *_creating_opens(S.O_CREAT | S.O_WRONLY, also=("wpath",)),
    *_creating_opens(S.O_CREAT | S.O_RDWR, also=("rpath", "wpath")),
    *_creating_opens(S.O_TMPFILE_BIT | S.O_WRONLY, also=("wpath",)),
    *_creating_opens(S.O_TMPFILE_BIT | S.O_RDWR, also=("rpath", "wpath")),
    *_setid_guarded("creat", 1, also=("wpath",)),  # creat() is open(O_CREAT|O_WRONLY|O_TRUNC)
)
# openat2 takes its flags in a struct the filter cannot read: fail it with ENOSYS so that
# libc and Python fall back to openat, which the filter can check.
_OPENAT2_ENOSYS = _r("openat2", action="enosys")

_PATH_READ_CALLS = (
    "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "getdents", "getdents64", "chdir", "fchdir", "statfs",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    # No inotify_add_watch: Landlock does not check it, so it would reveal the names of
    # files created and opened in any directory, unveiled or not.
    "inotify_init", "inotify_init1", "inotify_rm_watch",
)  # fmt: skip
# mkdir needs no guard: Linux masks its mode with S_IRWXUGO|S_ISVTX itself (vfs_mkdir);
# a directory is setgid only by inheriting it from its parent.
_CREATE_CALLS = (
    "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat",
)  # fmt: skip

# Path forms of fattr and chown, performed by the parent (handler "perform").
_FATTR_PATH_CALLS = (
    "chmod", "fchmodat", "fchmodat2", "utime", "utimes", "futimesat",
    "setxattr", "lsetxattr", "removexattr", "lremovexattr", "setxattrat", "removexattrat",
)  # fmt: skip
_CHOWN_PATH_CALLS = ("chown", "lchown", "fchownat")


def _by_parent(names: Iterable[str], also: Iterable[str] = ()) -> tuple[Rule, ...]:
    rules = [_r(n, also=also, action="notify", handler="perform") for n in names]
    if "utime" in names:  # utimensat with a path (a NULL path is futimens, allowed above)
        rules.append(
            _r("utimensat", Arg(1, "ne", 0), also=also, action="notify", handler="perform")
        )
    return tuple(rules)


# tmppath's opens: any flags with a clean mode (or no creation at all); a setuid/setgid
# mode on a creating open goes to the parent.
_TMPPATH_OPENS = tuple(
    rule
    for n, i in _OPEN_CALLS
    for rule in (
        _r(n, _bits(i, S.O_CREAT | S.O_TMPFILE_BIT, 0)),
        _r(n, _bits(i + 1, SETID_BITS, 0)),
        *(
            _r(n, _bits(i, bit, bit), _bits(i + 1, SETID_BITS, v), action="notify", handler="setid")
            for bit in (S.O_CREAT, S.O_TMPFILE_BIT)
            for v in _SETID_VALUES
        ),
    )
)

# Memory. W^X without prot_exec: nothing anonymous becomes executable; a file may be mapped
# read+exec (the dynamic loader maps libraries so), never writable and executable at once.
# That files written by the agent cannot be mapped executable is the job of noexec mounts.
_W_X = S.PROT_WRITE | S.PROT_EXEC
_MEMORY_STDIO = (
    _r("mmap", _bits(2, S.PROT_EXEC, 0)),
    _r("mmap", _bits(2, _W_X, S.PROT_EXEC), _bits(3, S.MAP_ANONYMOUS, 0)),
    _r("mprotect", _bits(2, S.PROT_EXEC, 0)),
    _r("pkey_mprotect", _bits(2, S.PROT_EXEC, 0)),
)

# Thread and process creation. Namespaces never (they are how unprivileged code reaches
# kernel attack surface); CLONE_PARENT never (it would make the launcher the parent of an
# agent's child). clone3 keeps its flags in a struct: ENOSYS makes glibc fall back to clone.
_CLONE_NEVER = S.CLONE_NEW_ALL | S.CLONE_PARENT
_THREAD_BITS = S.CLONE_THREAD | S.CLONE_VM | S.CLONE_SIGHAND
_CLONE_THREAD = _r("clone", _bits(0, _THREAD_BITS | _CLONE_NEVER, _THREAD_BITS))
_CLONE_FORK = _r("clone", _bits(0, S.CLONE_THREAD | _CLONE_NEVER, 0))
_CLONE3_ENOSYS = _r("clone3", action="enosys")

# Reflinks (cp's first try, then copy_file_range) and deduplication, between descriptors the
# agent holds: the kernel checks that the destination was opened for writing and the source
# for reading (dedupe: writable, or owned), and those opens were Landlock's to check.
_CLONE_IOCTLS = (S.FICLONE, S.FICLONERANGE, S.FIDEDUPERANGE)

_STDIO_IOCTLS = (S.FIONREAD, S.FIONBIO, S.FIOCLEX, S.FIONCLEX, S.TCGETS, S.TIOCGWINSZ)
_TTY_IOCTLS = (
    S.TCSETS, S.TCSETSW, S.TCSETSF, S.TIOCSWINSZ, S.TIOCGPGRP, S.TIOCSPGRP, S.TCFLSH,
    S.TCXONC, S.TCSBRK, S.TIOCOUTQ, S.TIOCGSID, S.TIOCGPTN, S.TIOCSPTLCK,
)  # fmt: skip
_STDIO_FCNTLS = (
    S.F_DUPFD, S.F_DUPFD_CLOEXEC, S.F_GETFD, S.F_SETFD, S.F_GETFL, S.F_SETFL,
    S.F_GETPIPE_SZ, S.F_SETPIPE_SZ, S.F_ADD_SEALS, S.F_GET_SEALS,
)  # fmt: skip
_LOCK_FCNTLS = (S.F_GETLK, S.F_SETLK, S.F_SETLKW, S.F_OFD_GETLK, S.F_OFD_SETLK, S.F_OFD_SETLKW)
# prctl operations that only read or only narrow the caller's own state. PR_SET_VMA names
# anonymous mappings (glibc does it).
_STDIO_PRCTLS = (
    S.PR_SET_PDEATHSIG, S.PR_GET_PDEATHSIG, S.PR_GET_DUMPABLE, S.PR_SET_NAME, S.PR_GET_NAME,
    S.PR_GET_SECCOMP, S.PR_CAPBSET_READ, S.PR_SET_NO_NEW_PRIVS, S.PR_GET_NO_NEW_PRIVS,
    S.PR_SET_VMA,
)  # fmt: skip
# arch_prctl: TLS set-up (every libc needs it) and queries; shadow stacks may be enabled and
# locked, never disabled.
_STDIO_ARCH_PRCTLS = (
    S.ARCH_SET_FS, S.ARCH_GET_FS, S.ARCH_SET_GS, S.ARCH_GET_GS, S.ARCH_GET_CPUID,
    S.ARCH_GET_XCOMP_SUPP, S.ARCH_GET_XCOMP_PERM, S.ARCH_REQ_XCOMP_PERM,
    S.ARCH_SHSTK_ENABLE, S.ARCH_SHSTK_LOCK, S.ARCH_SHSTK_STATUS,
)  # fmt: skip

_STDIO_CALLS = (
    # file descriptors
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fstat",
    "fstatfs", "ftruncate", "fsync", "fdatasync", "fallocate", "fadvise64", "readahead",
    "sync_file_range", "sendfile", "splice", "tee", "copy_file_range",
    "pipe", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4",
    # memory (mmap/mprotect are in _MEMORY_STDIO)
    "brk", "munmap", "mremap", "msync", "mincore", "madvise", "pkey_alloc", "pkey_free",
    "membarrier",
    # signals of the caller itself
    "rt_sigaction", "rt_sigprocmask", "rt_sigpending", "rt_sigtimedwait", "rt_sigsuspend",
    "sigaltstack", "pause",
    # time
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "getitimer", "setitimer", "alarm", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete",
    # identity and limits of the caller (reading)
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
    "getresgid", "getgroups", "getpgrp", "getpgid", "getsid", "capget", "getrusage", "times",
    "getrlimit", "umask", "uname", "getcpu", "getrandom", "sched_yield", "sched_getaffinity",
    # glibc's qsort asks sysinfo for the memory size (sysconf(_SC_PHYS_PAGES)): every
    # Python start-up does. OpenBSD's stdio likewise reads hw.physmem.
    "sysinfo",
    # threads of the caller (futex also serves single-threaded programs: libc locks)
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "set_tid_address",
    # children it may already have (OpenBSD: wait4 is stdio)
    "wait4", "waitid",
    # sockets it already holds (sendmsg, sendmmsg and sendto: see _SENDS)
    "recvfrom", "recvmsg", "recvmmsg", "shutdown", "getsockname", "getpeername",
    "getsockopt",
)  # fmt: skip

# TCP Fast Open connects inside a send (sendto/sendmsg/sendmmsg with MSG_FASTOPEN), past
# the security hook that Landlock's TCP port rules use: a Fast Open send reached ports that
# network.connect does not list (shown in tests/test_hardening.py). No send may carry the
# flag, whoever holds the socket (an inherited one included). The calls that do are
# refused, recorded, and fail with EOPNOTSUPP, as on a kernel with client Fast Open
# disabled, so a client that tries it goes on with an ordinary connect.
_NO_FASTOPEN = {"sendto": 3, "sendmsg": 2, "sendmmsg": 3}  # call -> index of its flags


def _send(name: str, *args: Arg, also: Iterable[str] = ()) -> Rule:
    return _r(name, _bits(_NO_FASTOPEN[name], S.MSG_FASTOPEN, 0), *args, also=also)


_SENDS = (_send("sendmsg"), _send("sendmmsg"))
# Calls that no promise allows which a common program tries and copes with failing: the
# parent records them and answers with the errno of a kernel without the feature, in every
# violation mode (sandbox.parent.notify, handler "unsupported").
UNSUPPORTED: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "sendto": (errno.EOPNOTSUPP, "TCP Fast Open bypasses Landlock's TCP port rules"),
        "sendmsg": (errno.EOPNOTSUPP, "TCP Fast Open bypasses Landlock's TCP port rules"),
        "sendmmsg": (errno.EOPNOTSUPP, "TCP Fast Open bypasses Landlock's TCP port rules"),
        "socket": (
            errno.EPROTONOSUPPORT,
            "MPTCP bypasses Landlock's TCP port rules (Go and others probe it and fall back)",
        ),
        "setsockopt": (errno.ENOPROTOOPT, "TCP Fast Open bypasses Landlock's TCP port rules"),
    }
)
_FASTOPEN_REFUSED = tuple(
    _r(name, _bits(index, S.MSG_FASTOPEN, S.MSG_FASTOPEN), action="notify", handler="unsupported")
    for name, index in _NO_FASTOPEN.items()
)

# Setting the ids one already has (GNU make's seteuid(geteuid()) around each job) changes
# nothing. Under a launcher these calls go to the parent when 'id' is not pledged
# (sandbox.enforce.plan.seccomp_rules), which answers 0 for exactly that and refuses any
# other value as a violation needing 'id' (sandbox.parent.notify, handler "own_ids").
# Without a parent (library use) they stay violations, as on OpenBSD.
# call -> which ids its arguments set, in order ("u": uids, "g": gids).
OWN_ID_CALLS: Mapping[str, str] = MappingProxyType(
    {
        "setuid": "u",
        "setreuid": "uu",
        "setresuid": "uuu",
        "setgid": "g",
        "setregid": "gg",
        "setresgid": "ggg",
    }
)

_STDIO = (
    *_calls(*_STDIO_CALLS),
    *_SENDS,
    *_FASTOPEN_REFUSED,
    *_MEMORY_STDIO,
    *_each("ioctl", 1, _STDIO_IOCTLS),
    *_each("fcntl", 1, _STDIO_FCNTLS),
    *_each("prctl", 0, _STDIO_PRCTLS),
    *_each("arch_prctl", 0, _STDIO_ARCH_PRCTLS),
    # fstat() in glibc >= 2.33 is newfstatat(fd, "", buf, AT_EMPTY_PATH). A non-empty path
    # with AT_EMPTY_PATH is resolved like any path: the filter cannot see the string, so
    # stdio can stat paths this way. Metadata is not hidden by Landlock either (SPEC).
    _r("newfstatat", _bits(3, S.AT_EMPTY_PATH, S.AT_EMPTY_PATH)),
    _r("statx", _bits(2, S.AT_EMPTY_PATH, S.AT_EMPTY_PATH)),
    # sendto on a connected socket; an address needs inet/unix (or dns, via the parent)
    _send("sendto", _eq(4, 0)),
    # OpenBSD's stdio allows socketpair(AF_UNIX): a channel to nothing but oneself
    _r("socketpair", _eq(0, S.AF_UNIX)),
    # signals to itself only; SELF_PID is the pid at lock (sound without 'proc': see rules.py)
    _r("kill", _eq(0, SELF_PID)),
    _r("tkill", _eq(0, SELF_PID)),
    _r("tgkill", _eq(0, SELF_PID)),
    _r("rt_sigqueueinfo", _eq(0, SELF_PID)),
    _r("rt_tgsigqueueinfo", _eq(0, SELF_PID)),
    # own limits, read only: prlimit64(0, resource, NULL, old)
    _r("prlimit64", _eq(0, 0), _eq(2, 0)),
    # personality: the query and the default only (no ADDR_NO_RANDOMIZE and friends)
    _r("personality", _eq(0, 0xFFFFFFFF)),
    _r("personality", _eq(0, 0)),
)

# Only the protocols Landlock's TCP rules cover, or that need none: TCP (0 or IPPROTO_TCP)
# for streams; UDP and ping sockets (ICMP, ICMPv6) for datagrams. MPTCP, SCTP and SMC are
# stream protocols Landlock does not see: an MPTCP socket connected and bound to ports
# network: does not list (tests/test_hardening.py shows it). Go probes MPTCP and falls
# back when it is refused, so MPTCP fails with EPROTONOSUPPORT (recorded); the others are
# violations like any call outside the pledge.
_STREAM_PROTOCOLS = (0, S.IPPROTO_TCP)
_DGRAM_PROTOCOLS = {
    S.AF_INET: (0, S.IPPROTO_UDP, S.IPPROTO_ICMP),
    S.AF_INET6: (0, S.IPPROTO_UDP, S.IPPROTO_ICMPV6),
}


def _ip_sockets(dgram: Mapping[int, tuple[int, ...]]) -> tuple[Rule, ...]:
    rows = []
    for af in (S.AF_INET, S.AF_INET6):
        kinds = ((S.SOCK_STREAM, _STREAM_PROTOCOLS), (S.SOCK_DGRAM, dgram[af]))
        for kind, protocols in kinds:
            rows += [
                _r("socket", _eq(0, af), _bits(1, S.SOCK_TYPE_MASK, kind), _eq(2, proto))
                for proto in protocols
            ]
        rows.append(
            _r(
                "socket",
                _eq(0, af),
                _bits(1, S.SOCK_TYPE_MASK, S.SOCK_STREAM),
                _eq(2, S.IPPROTO_MPTCP),
                action="notify",
                handler="unsupported",
            )
        )
    return tuple(rows)


_INET_SOCKETS = _ip_sockets(_DGRAM_PROTOCOLS)
_UNIX_SOCKETS = tuple(
    _r("socket", _eq(0, S.AF_UNIX), _bits(1, S.SOCK_TYPE_MASK, t))
    for t in (S.SOCK_STREAM, S.SOCK_DGRAM, S.SOCK_SEQPACKET)
)
# glibc's getaddrinfo(AI_ADDRCONFIG) asks rtnetlink which address families are configured;
# when the socket fails it assumes both, so ENOSYS is harmless and keeps netlink closed.
_NETLINK_ENOSYS = _r("socket", _eq(0, S.AF_NETLINK), action="enosys")
_SOCKET_CALLS = ("bind", "connect", "listen", "accept", "accept4")
_TCP_FASTOPEN_CONNECT = _r(
    "setsockopt",
    _eq(1, S.IPPROTO_TCP),
    _eq(2, sockopts.TCP_FASTOPEN_CONNECT),
    action="notify",
    handler="unsupported",
)


def _sockopts(promise: str) -> tuple[Rule, ...]:
    """setsockopt rows by level and name (sandbox.enforce.sockopts), as OpenBSD's table."""
    also = ("inet",) if promise == "mcast" else ()
    return tuple(
        _r("setsockopt", _eq(1, level), _eq(2, name), also=also)
        for level, options in sockopts.BY_PROMISE[promise]
        for name in options
    )


# glibc asks nscd (a unix socket) before reading files for names and users; when the socket
# cannot be created it reads the files. ENOSYS keeps unix sockets closed without a violation.
_NSCD_ENOSYS = _r(
    "socket", _eq(0, S.AF_UNIX), _bits(1, S.SOCK_TYPE_MASK, S.SOCK_STREAM), action="enosys"
)

_DNS = (
    _NSCD_ENOSYS,
    # UDP, and TCP: the resolver's fallback for large answers
    *_ip_sockets({S.AF_INET: (0, S.IPPROTO_UDP), S.AF_INET6: (0, S.IPPROTO_UDP)}),
    _NETLINK_ENOSYS,
    # The parent checks that the address is a nameserver on port 53 and performs the call
    # itself on a duplicate of the socket. Superseded by the allow rows of 'inet'.
    _r("connect", action="notify", handler="dns"),
    _r(
        "sendto",
        _bits(3, S.MSG_FASTOPEN, 0),
        Arg(4, "ne", 0),
        action="notify",
        handler="dns",
        unless=("inet",),
    ),
    # glibc's resolver asks for IP_RECVERR / IPV6_RECVERR on its UDP socket.
    *_sockopts("dns"),
)


def _promise(name: str, summary: str, *rules: Rule, weakens: str = "") -> tuple[str, Promise]:
    return name, Promise(name, summary, tuple(rules), weakens)


PROMISES: Mapping[str, Promise] = MappingProxyType(
    dict(
        [
            _promise(
                "stdio",
                "basic I/O on open descriptors, memory (W^X), time, own signals, threads' "
                "futexes, pipes, polling, already-connected sockets; under `sandbox run`, "
                "setting the ids it already has (the parent answers; any change needs 'id')",
                *_STDIO,
            ),
            _promise(
                "rpath",
                "open files read-only; stat, list and read links of paths",
                *_RPATH_OPENS,
                _OPENAT2_ENOSYS,
                *_calls(*_PATH_READ_CALLS, "getcwd"),
            ),
            _promise(
                "wpath",
                "open existing files for writing (O_TRUNC included); truncate paths; share "
                "data between open files (FICLONE, FICLONERANGE, FIDEDUPERANGE)",
                *_WPATH_OPENS,
                _OPENAT2_ENOSYS,
                *_calls("truncate", "getcwd"),
                *_each("ioctl", 1, _CLONE_IOCTLS),
            ),
            _promise(
                "cpath",
                "create and remove files and directories, rename, link, symlink",
                *_CPATH_OPENS,
                _OPENAT2_ENOSYS,
                *_calls(*_CREATE_CALLS, "getcwd"),
            ),
            _promise(
                "dpath",
                "create FIFOs (mknod of S_IFIFO; devices never: CAP_MKNOD is dropped)",
                *_setid_guarded("mknod", 1, kind=S.S_IFIFO),
                *_setid_guarded("mknodat", 2, kind=S.S_IFIFO),
            ),
            _promise(
                "tmppath",
                "create, write, read and remove files; Linux cannot check the path in the "
                "filter, so this is cpath+wpath+rpath's calls, and the launcher unveils "
                "/tmp rwc (Landlock decides where)",
                _OPENAT2_ENOSYS,
                *_TMPPATH_OPENS,
                *_setid_guarded("creat", 1),
                *_calls("truncate", "getcwd", *_CREATE_CALLS, *_PATH_READ_CALLS),
            ),
            _promise(
                "flock",
                "file locks: flock, fcntl F_GETLK/F_SETLK/F_SETLKW and the OFD variants",
                _r("flock"),
                *_each("fcntl", 1, _LOCK_FCNTLS),
            ),
            # Landlock has no right for modes, times, owners or xattrs, so a path-based call
            # the kernel made itself would reach any file the agent's uid owns, unveiled or
            # not (a root agent owns /bin/bash). The descriptor forms are allowed outright
            # (the descriptor came from an open() that Landlock checked; these calls refuse
            # O_PATH descriptors). The path forms, and the AT_EMPTY_PATH forms that accept
            # O_PATH descriptors, are performed by the parent (sandbox.parent.perform): it
            # resolves the path as the agent would, requires the unveil letter OpenBSD's
            # kernel requires ('w', vfs_syscalls.c), and makes the call on the inode it
            # resolved, with the agent's ids and no capabilities. As on OpenBSD, a path form
            # also needs 'rpath' (pledge_namei asks for it on every lookup), and 'fattr'
            # carries chown to the agent's own uid and groups (OpenBSD's PLEDGE_CHOWN);
            # 'chown' lifts that (the kernel still needs CAP_CHOWN, which is dropped).
            # utimensat(fd, NULL, ...) is futimens().
            _promise(
                "fattr",
                "change modes, times, extended attributes and group of files: the descriptor "
                "forms (fchmod, futimens, fsetxattr, fchown) directly; the path forms (chmod, "
                "utimensat, setxattr, chown, ...) with 'rpath', performed by the parent on "
                "paths unveiled 'w'; setuid/setgid bits are stripped",
                *_setid_guarded("fchmod", 1),
                *_calls("fsetxattr", "fremovexattr", "fchown"),
                _r("utimensat", _eq(1, 0)),
                *_by_parent(_FATTR_PATH_CALLS, also=("rpath",)),
                *_by_parent(_CHOWN_PATH_CALLS, also=("rpath",)),
            ),
            _promise(
                "chown",
                "change owners of files to any ids (needs CAP_CHOWN, which is dropped, so in "
                "effect the agent's own): fchown directly, chown/lchown/fchownat with 'rpath', "
                "performed by the parent on paths unveiled 'w'",
                *_calls("fchown"),
                *_by_parent(_CHOWN_PATH_CALLS, also=("rpath",)),
            ),
            _promise(
                "inet",
                "IPv4/IPv6 TCP and UDP sockets: socket, connect, bind, listen, accept, sendto "
                "with an address; TCP ports are further limited by Landlock (network:)",
                *_INET_SOCKETS,
                _NETLINK_ENOSYS,
                *_calls(*_SOCKET_CALLS),
                _send("sendto"),
                *_sockopts("inet"),
                _TCP_FASTOPEN_CONNECT,
            ),
            _promise(
                "mcast",
                "multicast socket options (IP_MULTICAST_IF/TTL/LOOP, IP_ADD_MEMBERSHIP, "
                "IPV6_JOIN_GROUP, MCAST_*), with inet, as OpenBSD's mcast",
                *_sockopts("mcast"),
            ),
            _promise(
                "unix",
                "AF_UNIX sockets: socket, connect, bind, listen, accept, sendto with an address; "
                "pathname sockets only where unveiled 'w' (Landlock resolve_unix, or before "
                "Landlock ABI 9 the parent, which then decides every connect and send)",
                *_UNIX_SOCKETS,
                *_calls(*_SOCKET_CALLS),
                _send("sendto"),
                *_sockopts("unix"),
            ),
            _promise(
                "dns",
                "name resolution: UDP/TCP sockets whose connect and sendto-with-address the "
                "parent performs after checking the nameserver (port 53); reads resolv.conf",
                *_DNS,
            ),
            _promise(
                "sendfd",
                "send descriptors (SCM_RIGHTS): seccomp cannot read the control message, so "
                "this is sendmsg/sendmmsg, which stdio already allows",
                *_SENDS,
            ),
            _promise(
                "recvfd",
                "receive descriptors (SCM_RIGHTS): recvmsg/recvmmsg, which stdio already "
                "allows; seccomp cannot tell descriptors from data",
                *_calls("recvmsg", "recvmmsg"),
            ),
            _promise(
                "proc",
                "fork and manage processes: fork, vfork, clone without namespaces, process "
                "groups and sessions, priorities, signals to any process (Landlock scopes "
                "keep signals inside the sandbox)",
                *_calls(
                    "fork",
                    "vfork",
                    "setpgid",
                    "setsid",
                    "getpriority",
                    "setpriority",
                    "sched_setaffinity",
                    "sched_setscheduler",
                    "sched_setparam",
                    "sched_getscheduler",
                    "sched_getparam",
                    "sched_get_priority_max",
                    "sched_get_priority_min",
                    "sched_rr_get_interval",
                    "kill",
                    "tkill",
                    "tgkill",
                    "rt_sigqueueinfo",
                    "rt_tgsigqueueinfo",
                    "pidfd_open",
                    "pidfd_send_signal",
                    "prlimit64",
                ),
                _CLONE_FORK,
                _CLONE3_ENOSYS,
            ),
            _promise(
                "thread",
                "create threads: clone with CLONE_THREAD|CLONE_VM|CLONE_SIGHAND, no namespaces",
                _CLONE_THREAD,
                _CLONE3_ENOSYS,
            ),
            _promise(
                "exec",
                "execute programs (which ones: unveil x); they run under execpromises",
                *_calls("execve", "execveat"),
            ),
            _promise(
                "prot_exec",
                "executable memory: anonymous PROT_EXEC mappings and mprotect to PROT_EXEC, "
                "never writable and executable at once; memfd_create with MFD_NOEXEC_SEAL",
                _r("mmap", _bits(2, _W_X, S.PROT_EXEC)),
                _r("mprotect", _bits(2, _W_X, S.PROT_EXEC)),
                _r("pkey_mprotect", _bits(2, _W_X, S.PROT_EXEC)),
                # A memfd can be written and then mapped PROT_EXEC (the seal only stops
                # execve of it), so memfd_create belongs here, not in stdio.
                _r("memfd_create", _bits(1, S.MFD_NOEXEC_SEAL | S.MFD_EXEC, S.MFD_NOEXEC_SEAL)),
                weakens="W^X in part: code the agent writes into memory can be made "
                "executable afterwards (never while it is still writable)",
            ),
            # Extra (SPEC section 5): JIT compilers write code and run it in the same pages.
            # V8 (node 20) mprotects anonymous pages to PROT_READ|PROT_WRITE|PROT_EXEC; the
            # JVM and LuaJIT mmap them so. A filter cannot see what a range of mprotect
            # maps, so mprotect takes any protection; a file mapping stays bounded by how
            # the file was opened (PROT_WRITE on a shared mapping needs a writable
            # descriptor) and, without jit and prot_exec, by noexec mounts.
            _promise(
                "jit",
                "writable and executable anonymous memory, for JIT compilers (node, the JVM, "
                "LuaJIT): anonymous mmap with any protection, mprotect and pkey_mprotect to "
                "any protection",
                _r("mmap", _bits(3, S.MAP_ANONYMOUS, S.MAP_ANONYMOUS)),
                _r("mprotect"),
                _r("pkey_mprotect"),
                weakens="W^X: memory may be writable and executable at once, so code that "
                "the agent (or an exploit of it) writes runs without asking again; writable "
                "paths are no longer mounted noexec (the agent can run what it writes anyway)",
            ),
            _promise(
                "id",
                "change user and group ids (needs capabilities, which are dropped)",
                *_calls(
                    "setuid",
                    "setgid",
                    "setgroups",
                    "setreuid",
                    "setregid",
                    "setresuid",
                    "setresgid",
                    "setfsuid",
                    "setfsgid",
                    "capset",
                ),
            ),
            _promise(
                "tty",
                "terminal control ioctls (TCSETS*, window size, process groups); never "
                "TIOCSTI or TIOCLINUX",
                *_each("ioctl", 1, _TTY_IOCTLS),
            ),
            _promise(
                "getpw",
                "read the user and group databases (a path matter: the launcher unveils "
                "/etc/passwd, /etc/group, /etc/nsswitch.conf read-only; nscd's socket "
                "fails with ENOSYS so glibc reads the files)",
                _NSCD_ENOSYS,
            ),
            _promise(
                "settime",
                "set the clock (needs CAP_SYS_TIME, which is dropped)",
                *_calls("settimeofday", "clock_settime", "adjtimex", "clock_adjtime"),
            ),
            _promise(
                "vminfo",
                "system memory and CPU information: sysinfo (also in stdio: glibc needs it); "
                "the launcher unveils /proc/meminfo and CPU lists read-only",
                _r("sysinfo"),
            ),
            _promise(
                "ps",
                "other processes' scheduling information; /proc is unveiled read-only (Landlock "
                "still stops ptrace-like access to processes outside the sandbox)",
                *_calls(
                    "getpriority",
                    "sched_getscheduler",
                    "sched_getparam",
                    "sched_rr_get_interval",
                    "sysinfo",
                ),
            ),
            # Extra: OpenBSD's unveil(2) needs the 'unveil' promise after pledge. Landlock
            # calls only narrow the caller's view, but asking for it keeps policies explicit.
            _promise(
                "unveil",
                "narrow the filesystem view further (Landlock: create_ruleset, add_rule, "
                "restrict_self)",
                *_calls("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"),
            ),
        ]
    )
)

PROMISE_NAMES: frozenset[str] = frozenset(PROMISES)

# Allowed whatever is promised: ending, signal return, the channel to the parent, and
# seccomp() itself, which can only add filters (narrow), like OpenBSD's pledge(2).
ALWAYS: tuple[Rule, ...] = (
    *_calls("exit", "exit_group", "rt_sigreturn", "restart_syscall", "seccomp"),
    *(_r(n, _eq(0, BROKER_FD)) for n in ("read", "write", "recvmsg", "close")),
    # An agent can put any socket at fd 3 (dup2): never a Fast Open send, even there.
    _send("sendmsg", _eq(0, BROKER_FD)),
)

NEVER: Mapping[str, str] = MappingProxyType(
    {
        "io_uring_setup": "io_uring bypasses seccomp (its operations are not system calls)",
        "io_uring_enter": "io_uring bypasses seccomp (its operations are not system calls)",
        "io_uring_register": "io_uring bypasses seccomp (its operations are not system calls)",
        "bpf": "loads programs into the kernel",
        "ptrace": "controls other processes",
        "process_vm_readv": "reads other processes' memory",
        "process_vm_writev": "writes other processes' memory",
        "pidfd_getfd": "steals descriptors from other processes",
        "kcmp": "inspects other processes' kernel objects",
        "process_madvise": "acts on other processes' memory",
        "process_mrelease": "acts on other processes' memory",
        "kexec_load": "replaces the kernel",
        "kexec_file_load": "replaces the kernel",
        "init_module": "loads kernel modules",
        "finit_module": "loads kernel modules",
        "delete_module": "unloads kernel modules",
        "mount": "changes the mount table",
        "umount2": "changes the mount table",
        "pivot_root": "changes the root",
        "chroot": "changes the root",
        "move_mount": "changes the mount table",
        "open_tree": "changes the mount table",
        "fsopen": "changes the mount table",
        "fsconfig": "changes the mount table",
        "fsmount": "changes the mount table",
        "fspick": "changes the mount table",
        "mount_setattr": "changes the mount table",
        "keyctl": "kernel keyrings are shared beyond the sandbox",
        "add_key": "kernel keyrings are shared beyond the sandbox",
        "request_key": "kernel keyrings are shared beyond the sandbox",
        "userfaultfd": "a tool for kernel race exploits",
        "perf_event_open": "kernel attack surface and side channels",
        "fanotify_init": "watches filesystems beyond the sandbox",
        "swapon": "system administration",
        "swapoff": "system administration",
        "reboot": "system administration",
        "acct": "system administration",
        "quotactl": "system administration",
        "quotactl_fd": "system administration",
        "lookup_dcookie": "system administration",
        "syslog": "reads the kernel log",
        "sethostname": "system administration",
        "setdomainname": "system administration",
        "iopl": "direct hardware access",
        "ioperm": "direct hardware access",
        "unshare": "namespaces are kernel attack surface",
        "setns": "namespaces are kernel attack surface",
        "vm86": "not on x86-64",
        "uselib": "obsolete loader call",
        "nfsservctl": "obsolete",
        "open_by_handle_at": "opens files by handle, around path checks (Landlock)",
        "name_to_handle_at": "pairs with open_by_handle_at",
        "memfd_secret": "memory hidden from the kernel's own inspection",
        "modify_ldt": "16-bit segments: kernel attack surface, no use on x86-64",
    }
)

# Argument combinations that no promise ever allows; the compiler gives them the never
# action, so the kernel ends the process (or the parent records it as 'never allowed').
# The mask ignores the upper 32 bits, which the kernel drops for these int arguments.
NEVER_ARGS: tuple[tuple[Rule, str], ...] = (
    (_r("ioctl", _bits(1, 0xFFFFFFFF, S.TIOCSTI)), "TIOCSTI types into the terminal"),
    (_r("ioctl", _bits(1, 0xFFFFFFFF, S.TIOCLINUX)), "TIOCLINUX can type into the console"),
)

# Paths a promise needs on Linux, added read-only (or as given) by the launcher. Missing
# files are skipped (not every system has /etc/gai.conf). "A promise brings its files"
# (SPEC section 5, as OpenBSD's pledge_namei lets stdio open /dev/null and read the time
# zone files without rpath): for the promises in BRINGS_FILES the parent also opens these
# files on the agent's behalf when it lacks 'rpath' (or 'wpath' for the rw ones) and
# answers the stat/access calls libc makes on them, so the promise works by itself.
IMPLIED_UNVEILS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        "stdio": (
            ("/dev/null", "rw"),
            ("/etc/localtime", "r"),
            ("/usr/share/zoneinfo", "r"),
            # getrandom(2) by another name: what OpenBSD's stdio gives as getentropy(2).
            # git reads /dev/urandom for its temporary files' names (it cannot add an
            # object without it), as do OpenSSL's and others' fallbacks.
            ("/dev/urandom", "r"),
            ("/dev/random", "r"),
        ),
        "getpw": (("/etc/passwd", "r"), ("/etc/group", "r"), ("/etc/nsswitch.conf", "r")),
        "dns": (
            ("/etc/resolv.conf", "r"),
            ("/etc/hosts", "r"),
            ("/etc/nsswitch.conf", "r"),
            ("/etc/gai.conf", "r"),
            ("/etc/host.conf", "r"),
            ("/etc/services", "r"),
            ("/etc/protocols", "r"),
        ),
        "tmppath": (("/tmp", "rwc"),),
        "tty": (("/dev/tty", "rw"),),
        "vminfo": (
            ("/proc/meminfo", "r"),
            ("/proc/stat", "r"),
            ("/proc/cpuinfo", "r"),
            ("/proc/loadavg", "r"),
            ("/proc/uptime", "r"),
            ("/sys/devices/system/cpu", "r"),
        ),
        "ps": (("/proc", "r"),),
    }
)
# The promises whose implied files the parent opens for an agent without rpath/wpath. Not
# tmppath (a directory to work in: it has its own calls) nor ps (/proc/self would name
# the opener, not the agent).
BRINGS_FILES: frozenset[str] = frozenset({"stdio", "getpw", "dns", "tty", "vminfo"})
# Paths whose metadata alone a promise brings (stat, not open; exact paths, never unveiled):
# glibc's NSS stats "/" to notice a chroot before it reads nsswitch.conf.
BRINGS_STAT: Mapping[str, tuple[str, ...]] = MappingProxyType({"getpw": ("/",), "dns": ("/",)})


# --- reading the table -----------------------------------------------------------------------


def _canonical(promises: Iterable[str]) -> list[str]:
    order = list(PROMISES)
    return sorted(set(promises), key=order.index)


def rules_for(promises: Iterable[str]) -> list[Rule]:
    """ALWAYS plus every rule of a pledged promise whose `also` promises are pledged too.

    Unknown promise names are an error (a typo must not silently pledge less or more).
    Duplicates are dropped, order is kept.
    """
    pledged = set(promises)
    unknown = pledged - PROMISE_NAMES
    if unknown:
        raise ValueError(f"unknown promise(s): {', '.join(sorted(unknown))}")
    out: dict[Rule, None] = dict.fromkeys(ALWAYS)
    for name in _canonical(pledged):
        for rule in PROMISES[name].rules:
            if rule.also <= pledged and not rule.unless & pledged:
                out.setdefault(rule, None)
    # A fallback (enosys) row is superseded by another promise's allow row of the same shape
    # (e.g. dns's nscd row when 'unix' is pledged too).
    allowed = {(r.syscall, r.args) for r in out if r.action == "allow"}
    return [r for r in out if r.action == "allow" or (r.syscall, r.args) not in allowed]


def never_allowed(syscall: str, args: Sequence[int]) -> bool:
    """Whether the call is on the never list (NEVER, or NEVER_ARGS for these arguments).

    Not the same as "no promise allows it": an fcntl command no promise knows is refused
    like any call outside the pledge (by the policy's `violation:`), not as a danger.
    """
    return syscall in NEVER or any(rule_matches(r, syscall, args) for r, _ in NEVER_ARGS)


# Promises named in a violation message only when nothing narrower allows the call.
_LAST_RESORT = frozenset({"tmppath"})


def _missing(
    syscall: str, args: Sequence[int], held: frozenset[str], self_pid: int | None
) -> str | None:
    """The fewest promises beyond `held` whose rows allow the call (the narrow ones before
    tmppath), in table order; else the same among the rows the parent performs (notify);
    else those of a row that fails it (enosys); None if no row of any promise matches."""
    for actions in (("allow",), ("notify",)):
        best: list[str] | None = None
        best_key: tuple[bool, int, int] | None = None
        for name, promise in PROMISES.items():
            for rule in promise.rules:
                if rule.action in actions and rule_matches(rule, syscall, args, self_pid):
                    need = {name, *rule.also}
                    missing = need - held
                    key = (bool(need & _LAST_RESORT), len(missing), len(need))
                    if best_key is None or key < best_key:
                        best, best_key = _canonical(missing or need), key
        if best is not None:
            return " ".join(best)
    for name, promise in PROMISES.items():  # failed (enosys) somewhere: that promise
        for rule in promise.rules:
            if rule_matches(rule, syscall, args, self_pid):
                return " ".join(_canonical({name, *rule.also}))
    return None


# --- hints: the promise that fits, where the rows alone would name another --------------------


@plain(frozen=True)
class Hint:
    """A refused call whose fix is not what its rows name: glibc's nscd probe is a unix
    socket, but the program wanted a user name (getpw) or a host name (dns).

    For messages and records only: the parent decides every call by the rules, never by a
    hint, so a hint may read the agent's memory (a path, clone3's struct) although the agent
    can change it.
    """

    # the call (any of these rules), with conditions on its registers or on the fields of
    # `view` (condition i on field i)
    rules: tuple[Rule, ...]
    promise: str  # what fits
    note: str = ""  # said after it, in the message and the record
    view: str = "args"  # "args": the registers; a name of syscalls.VIEWS: those fields
    paths: tuple[str, ...] = ()  # the call's path argument is one of these, or beneath one


_NSCD_SOCKET = S.SOCK_STREAM | S.SOCK_CLOEXEC | S.SOCK_NONBLOCK
_RESOLVER_SOCKET = S.SOCK_DGRAM | S.SOCK_CLOEXEC | S.SOCK_NONBLOCK
_STAT_CALLS = (
    "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat",
)  # fmt: skip


def _file_hints() -> tuple[Hint, ...]:
    """Opening or inspecting a file that a promise brings (IMPLIED_UNVEILS) names that promise.

    /tmp (tmppath) and /proc (ps) are left out: too much else lives there.
    """
    owners: dict[tuple[str, str], list[str]] = {}
    for promise, files in IMPLIED_UNVEILS.items():
        if promise in ("tmppath", "ps"):
            continue
        for path, perms in files:
            owners.setdefault((path, perms), []).append(promise)
    hints: list[Hint] = []
    for (path, perms), promises in owners.items():
        note = f"or {' or '.join(repr(p) for p in promises[1:])}" if promises[1:] else ""
        if "w" in perms:  # /dev/tty: opened for reading and writing, never created
            opens = _opens(S.O_CREAT | S.O_TMPFILE_BIT, 0)
        else:
            opens = _opens(_OPEN_MODE_MASK, S.O_RDONLY)
        hints.append(Hint((*opens, *_calls(*_STAT_CALLS)), promises[0], note, paths=(path,)))
    return tuple(hints)


HINTS: tuple[Hint, ...] = (
    # glibc asks nscd (socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK)) before it
    # reads passwd, group or hosts; 'getpw' and 'dns' fail that socket with ENOSYS.
    Hint(
        (_r("socket", _eq(0, S.AF_UNIX), _eq(1, _NSCD_SOCKET), _eq(2, 0)),),
        "getpw",
        "glibc asking nscd: 'getpw' for users and groups, 'dns' for host names",
    ),
    # glibc's resolver then asks the nameserver over a socket of exactly this kind (git
    # clone without a user.email asks for the host's name so); the rows alone name inet.
    Hint(
        tuple(
            _r("socket", _eq(0, family), _eq(1, _RESOLVER_SOCKET), _eq(2, 0))
            for family in (S.AF_INET, S.AF_INET6)
        ),
        "dns",
        "a name lookup, glibc's resolver asking the nameserver; 'inet' for other datagrams",
    ),
    # Executable memory without writing: prot_exec is enough, unless the program is a JIT,
    # whose next call makes the same pages writable and executable at once.
    Hint(
        (
            _r("mmap", _bits(2, _W_X, S.PROT_EXEC), _bits(3, S.MAP_ANONYMOUS, S.MAP_ANONYMOUS)),
            _r("mprotect", _bits(2, _W_X, S.PROT_EXEC)),
            _r("pkey_mprotect", _bits(2, _W_X, S.PROT_EXEC)),
        ),
        "prot_exec",
        "or 'jit' for a JIT compiler: node, the JVM, LuaJIT",
    ),
    # glibc's pthread_create tries clone3 first; its flags are in a struct.
    Hint((_r("clone3", _bits(0, S.CLONE_THREAD, S.CLONE_THREAD)),), "thread", view="clone_args"),
    Hint((_r("clone3", _bits(0, S.CLONE_THREAD, 0)),), "proc", view="clone_args"),
    # connect, bind and sendto are rows of both inet and unix; the address says which.
    Hint(
        tuple(_r(call, _eq(0, S.AF_UNIX)) for call in ("connect", "bind", "sendto")),
        "unix",
        view="sockaddr",
    ),
    *_file_hints(),
)


def _hint_applies(hint: Hint, syscall: str, args: Sequence[int], mem: S.Memory | None) -> bool:
    rules = [r for r in hint.rules if r.syscall == syscall]
    if not rules:
        return False
    values: Sequence[int] = args
    if hint.view != "args":
        fields = S.view_of(hint.view, syscall, args, mem)
        if fields is None:
            return False
        values = fields
    if not any(all(arg_matches(a, values) for a in r.args) for r in rules):
        return False
    if hint.paths:
        path = S.path_of(syscall, args, mem)
        if path is None or not path.startswith("/"):
            return False
        path = posixpath.normpath(path)
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in hint.paths)
    return True


@plain(frozen=True)
class Refusal:
    """What a refused call needs: `promise` (the promises missing, space-separated) or None
    if nothing ever allows it; `note` says more (which promise fits what, why never)."""

    promise: str | None
    note: str | None = None


def refusal(
    syscall: str,
    args: Sequence[int],
    *,
    self_pid: int | None = None,
    have: Iterable[str] = (),
    mem: S.Memory | None = None,
) -> Refusal:
    """Why this call is refused to a holder of `have`, for the message and the record.

    The rows name the fewest promises missing (promise_for); a hint whose promise is not
    held overrides them where it fits better (getpw for nscd's socket, thread for a
    thread's clone3, tty for /dev/tty, dns for the resolver's files), together with what
    the rows still need once it is held. With `mem`, hints may read the caller's memory.
    """
    if syscall in NEVER:
        return Refusal(None, NEVER[syscall])
    for rule, why in NEVER_ARGS:
        if rule_matches(rule, syscall, args):
            return Refusal(None, why)
    held = frozenset(have)
    for hint in HINTS:
        if hint.promise in held or not _hint_applies(hint, syscall, args, mem):
            continue
        with_hint = held | {hint.promise}
        need = {hint.promise}
        if match(rules_for(with_hint), syscall, args, self_pid=self_pid) is None:
            need.update((_missing(syscall, args, with_hint, self_pid) or "").split())
        return Refusal(" ".join(_canonical(need)), hint.note or None)
    return Refusal(_missing(syscall, args, held, self_pid))


def promise_for(
    syscall: str,
    args: Sequence[int],
    *,
    self_pid: int | None = None,
    have: Iterable[str] = (),
    mem: S.Memory | None = None,
) -> str | None:
    """The promises missing for this call, space-separated in table order ("wpath",
    "cpath wpath"): the fewest beyond `have` (what the caller holds), the narrow ones before
    tmppath, or the promise a hint names (see refusal). None if no promise ever allows the
    call.

    Without `self_pid`, conditions on the caller's own pid do not match (kill(self) then
    reports 'proc', which is sufficient though not necessary).
    """
    return refusal(syscall, args, self_pid=self_pid, have=have, mem=mem).promise


# --- describing the table ----------------------------------------------------------------------


def _arg_name(syscall: str, index: int) -> str:
    names = _ARG_NAMES.get(syscall)
    return names[index] if names and index < len(names) else f"arg{index}"


_ARG_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mmap": ("addr", "length", "prot", "flags", "fd", "offset"),
        "mprotect": ("addr", "length", "prot"),
        "pkey_mprotect": ("addr", "length", "prot", "pkey"),
        "memfd_create": ("name", "flags"),
        "clone": ("flags",),
        "socket": ("domain", "type", "protocol"),
        "socketpair": ("domain", "type", "protocol"),
        "setsockopt": ("fd", "level", "optname"),
        "ioctl": ("fd", "request"),
        "fcntl": ("fd", "cmd"),
        "prctl": ("option",),
        "arch_prctl": ("code",),
        "kill": ("pid", "sig"),
        "tkill": ("tid", "sig"),
        "tgkill": ("tgid", "tid", "sig"),
        "rt_sigqueueinfo": ("tgid",),
        "rt_tgsigqueueinfo": ("tgid",),
        "prlimit64": ("pid", "resource", "new_limit", "old_limit"),
        "personality": ("persona",),
        "newfstatat": ("dirfd", "path", "statbuf", "flags"),
        "statx": ("dirfd", "path", "flags"),
        "sendto": ("fd", "buf", "len", "flags", "dest_addr", "addrlen"),
        "mknod": ("path", "mode"),
        "mknodat": ("dirfd", "path", "mode"),
        "mkdir": ("path", "mode"),
        "mkdirat": ("dirfd", "path", "mode"),
        "creat": ("path", "mode"),
        "fchmod": ("fd", "mode"),
        "open": ("path", "flags", "mode"),
        "openat": ("dirfd", "path", "flags", "mode"),
        "utimensat": ("dirfd", "path", "times", "flags"),
        "read": ("fd",),
        "write": ("fd",),
        "recvmsg": ("fd",),
        "sendmsg": ("fd", "msg", "flags"),
        "sendmmsg": ("fd", "msgvec", "vlen", "flags"),
        "close": ("fd",),
    }
)

# How to name values in conditions: (syscall, index) -> formatter kind of sandbox.syscalls.
_VALUE_KINDS: Mapping[tuple[str, int], str] = MappingProxyType(
    {
        ("open", 1): "openflags",
        ("openat", 2): "openflags",
        ("mmap", 2): "prot",
        ("mmap", 3): "map",
        ("mprotect", 2): "prot",
        ("pkey_mprotect", 2): "prot",
        ("memfd_create", 1): "mfd",
        ("clone", 0): "clone",
        ("socket", 0): "af",
        ("socketpair", 0): "af",
        ("socket", 1): "socktype",
        ("setsockopt", 1): "sol",
        ("ioctl", 1): "ioctl",
        ("fcntl", 1): "fcntl",
        ("prctl", 0): "prctl",
        ("arch_prctl", 0): "arch_prctl",
        ("newfstatat", 3): "at",
        ("statx", 2): "at",
        ("mknod", 1): "fmode",
        ("mknodat", 2): "fmode",
        ("open", 2): "fmode",
        ("openat", 3): "fmode",
        ("creat", 1): "fmode",
        ("mkdir", 1): "fmode",
        ("mkdirat", 2): "fmode",
        ("fchmod", 1): "fmode",
    }
)


# Names of values this table uses that the decoder does not name by kind.
_PROTOCOL_NAMES = {
    S.IPPROTO_TCP: "IPPROTO_TCP",
    S.IPPROTO_UDP: "IPPROTO_UDP",
    S.IPPROTO_ICMP: "IPPROTO_ICMP",
    S.IPPROTO_ICMPV6: "IPPROTO_ICMPV6",
    S.IPPROTO_MPTCP: "IPPROTO_MPTCP",
}
_LOCAL_NAMES: Mapping[tuple[str, int], Mapping[int, str]] = MappingProxyType(
    {
        ("socket", 2): _PROTOCOL_NAMES,
        **{(call, i): {S.MSG_FASTOPEN: "MSG_FASTOPEN"} for call, i in _NO_FASTOPEN.items()},
    }
)


def _fmt_value(syscall: str, index: int, value: int, *, mask: bool = False) -> str:
    if value == SELF_PID:
        return "the caller's pid"
    local = _LOCAL_NAMES.get((syscall, index), {}).get(value)
    if local is not None:
        return local
    kind = _VALUE_KINDS.get((syscall, index))
    if kind is None:
        return hex(value) if value > 9 else str(value)
    if kind == "openflags" and mask:
        # a mask is a set of bits: O_ACCMODE names the access bits
        parts = ["O_ACCMODE"] if value & S.O_ACCMODE else []
        if value & ~S.O_ACCMODE:
            parts.append(S.format_flags("open", value & ~S.O_ACCMODE))
        return "|".join(parts)
    if kind == "fmode" and value & 0o7777 == 0:
        return "S_IFMT" if mask else S.format_value(kind, value).split("|")[0]
    if mask and kind == "socktype" and value == S.SOCK_TYPE_MASK:
        return "SOCK_TYPE_MASK"
    return S.format_value(kind, value)


_OP_SIGNS: Mapping[str, str] = MappingProxyType(
    {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
)


def describe_rule(rule: Rule) -> str:
    """`syscall: condition AND condition` in words, e.g. for `sandbox promises`."""
    conds = []
    level = next((a.value for a in rule.args if a.index == 1 and a.op == "eq"), None)
    for a in rule.args:
        name = _arg_name(rule.syscall, a.index)
        if rule.syscall == "setsockopt" and a.index == 2 and a.op == "eq" and level is not None:
            conds.append(f"{name} == {sockopts.option_name(level, a.value)}")
            continue
        if a.op == "masked_eq":
            mask = _fmt_value(rule.syscall, a.index, a.mask, mask=True)
            if a.mask & 0xFFFFFFFF == 0xFFFFFFFF and a.mask >> 32 == 0:
                value = _fmt_value(rule.syscall, a.index, a.value)
                conds.append(f"{name} (low 32 bits) == {value}")
            elif a.value == 0:
                conds.append(f"{name} & ({mask}) == 0")
            else:
                value = _fmt_value(rule.syscall, a.index, a.value)
                conds.append(f"{name} & ({mask}) == {value}")
        else:
            op = _OP_SIGNS[a.op]
            conds.append(f"{name} {op} {_fmt_value(rule.syscall, a.index, a.value)}")
    text = rule.syscall + (": " + " and ".join(conds) if conds else "")
    if rule.also:
        text += f" [with {' '.join(_canonical(rule.also))}]"
    if rule.action == "enosys":
        text += " -> ENOSYS (libc falls back)"
    elif rule.action == "notify":
        text += f" -> decided by the parent ({rule.handler})"
    return text


def _describe_rules(rules: Iterable[Rule]) -> list[str]:
    """describe_rule of each rule; the setsockopt rows of one level as one line."""
    out: list[str] = []
    grouped: dict[tuple[int, frozenset[str]], list[str]] = {}
    for rule in rules:
        args = {a.index: a for a in rule.args}
        if rule.syscall == "setsockopt" and set(args) == {1, 2} and rule.action == "allow":
            key = (args[1].value, rule.also)
            if key not in grouped:
                grouped[key] = []
                out.append(f"\0{len(grouped) - 1}")  # placeholder, filled below
            grouped[key].append(sockopts.option_name(args[1].value, args[2].value))
            continue
        out.append(describe_rule(rule))
    lines = []
    for (lvl, also), names in grouped.items():
        level_name = S.format_value("sol", lvl)
        text = f"setsockopt: level == {level_name} and optname in {{{', '.join(names)}}}"
        if also:
            text += f" [with {' '.join(_canonical(also))}]"
        lines.append(text)
    return [lines[int(x[1:])] if x.startswith("\0") else x for x in out]


def describe() -> list[dict[str, object]]:
    """Every promise with its calls and conditions, then the calls never allowed."""
    out: list[dict[str, object]] = []
    for p in PROMISES.values():
        out.append(
            {
                "promise": p.name,
                "summary": p.summary,
                "syscalls": _describe_rules(p.rules),
                "unveils": [f"{path}:{perms}" for path, perms in IMPLIED_UNVEILS.get(p.name, ())],
                "weakens": p.weakens or None,
            }
        )
    out.append(
        {
            "promise": "(always)",
            "summary": "allowed whatever is promised",
            "syscalls": [describe_rule(r) for r in ALWAYS],
            "unveils": [],
        }
    )
    never = [f"{name}: {why}" for name, why in NEVER.items()]
    never += [f"{describe_rule(r)}: {why}" for r, why in NEVER_ARGS]
    never.append("any call of a foreign architecture (i386 int 0x80, x32): the process is killed")
    out.append(
        {
            "promise": "(never)",
            "summary": "never allowed: refused with EPERM (killed under violation: kill)",
            "syscalls": never,
            "unveils": [],
        }
    )
    out.append(
        {
            "promise": "(hints)",
            "summary": "refused calls reported as needing another promise than their rows name "
            "(for messages only)",
            "syscalls": _describe_hints(),
            "unveils": [],
        }
    )
    return out


def _describe_hints() -> list[str]:
    out: list[str] = []
    files: dict[tuple[str, str], list[str]] = {}  # (promise, note) -> paths, in table order
    for h in HINTS:
        if h.paths:
            files.setdefault((h.promise, h.note), []).extend(h.paths)
            continue
        if h.view != "args":
            fields = S.VIEWS[h.view]
            what = " or ".join(
                f"{r.syscall}: "
                + " and ".join(_describe_field(h.view, fields[a.index], a) for a in r.args)
                for r in h.rules
            )
        else:
            what = " or ".join(describe_rule(r) for r in h.rules)
        out.append(f"{what}: '{h.promise}'" + (f" ({h.note})" if h.note else ""))
    for (promise, note), paths in files.items():
        out.append(
            f"open, stat, access or readlink of {' '.join(paths)}: '{promise}'"
            + (f" ({note})" if note else "")
        )
    return out


def _describe_field(struct: str, field: str, a: Arg) -> str:
    kind = S.field_kind(struct, field)
    value = S.format_value(kind, a.value)
    if a.op == "masked_eq":
        return f"{struct}.{field} & {S.format_value(kind, a.mask)} == {value}"
    return f"{struct}.{field} {_OP_SIGNS[a.op]} {value}"


def format_table(width: int = 100) -> str:
    """Plain text: per promise, its summary, the calls allowed outright (wrapped), then one
    line per call with conditions."""
    import textwrap  # lazily: the launcher imports this module on every start

    lines: list[str] = []
    for entry in describe():
        lines.append(f"{entry['promise']}: {entry['summary']}")
        items = [str(s) for s in entry["syscalls"]]  # type: ignore[attr-defined]
        plain = [s for s in items if s.isidentifier()]
        lines += textwrap.wrap(
            " ".join(plain), width, initial_indent="    ", subsequent_indent="    "
        )
        lines += [f"    {s}" for s in items if not s.isidentifier()]
        unveils = [str(u) for u in entry["unveils"]]  # type: ignore[attr-defined]
        if unveils:
            how = "added by the launcher"
            if entry["promise"] in BRINGS_FILES:
                how += "; opened by the parent for an agent without rpath"
            lines.append(f"    unveils ({how}): {' '.join(unveils)}")
        if entry.get("weakens"):
            lines += textwrap.wrap(
                f"weakens: {entry['weakens']}",
                width,
                initial_indent="    ",
                subsequent_indent="      ",
            )
        lines.append("")
    return "\n".join(lines)


def format_json() -> str:
    import json

    return json.dumps(describe(), indent=2)
