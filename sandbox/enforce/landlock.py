"""Landlock: the filesystem view (unveil), TCP port rules and scopes.

The `landlock` package from PyPI gives the filesystem access flags and the ABI probe, but
its Ruleset handles every filesystem right, knows no TCP rules (ABI 4) or scopes (ABI 6),
and sets no_new_privs itself. So the ruleset is built here, on the same three system
calls, from a plan computed in advance (sandbox.enforce.plan), in one readable module in the
manner of the kernel's samples/landlock/sandboxer.c.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Mapping
from types import MappingProxyType

from sandbox.errors import SetupError
from sandbox.libc import libc
from sandbox.plain import plain

SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# Filesystem access rights (include/uapi/linux/landlock.h).
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15
RESOLVE_UNIX = 1 << 16  # connect/sendmsg to a pathname unix socket (ABI 9)

NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# Which ABI first knows each right: a right the kernel does not know cannot be enforced.
FS_RIGHT_ABI: Mapping[int, int] = MappingProxyType(
    {
        EXECUTE: 1,
        WRITE_FILE: 1,
        READ_FILE: 1,
        READ_DIR: 1,
        REMOVE_DIR: 1,
        REMOVE_FILE: 1,
        MAKE_CHAR: 1,
        MAKE_DIR: 1,
        MAKE_REG: 1,
        MAKE_SOCK: 1,
        MAKE_FIFO: 1,
        MAKE_BLOCK: 1,
        MAKE_SYM: 1,
        REFER: 2,
        TRUNCATE: 3,
        IOCTL_DEV: 5,
        RESOLVE_UNIX: 9,
    }
)
FS_RIGHT_NAMES: Mapping[int, str] = MappingProxyType(
    {
        EXECUTE: "execute",
        WRITE_FILE: "write_file",
        READ_FILE: "read_file",
        READ_DIR: "read_dir",
        REMOVE_DIR: "remove_dir",
        REMOVE_FILE: "remove_file",
        MAKE_CHAR: "make_char",
        MAKE_DIR: "make_dir",
        MAKE_REG: "make_reg",
        MAKE_SOCK: "make_sock",
        MAKE_FIFO: "make_fifo",
        MAKE_BLOCK: "make_block",
        MAKE_SYM: "make_sym",
        REFER: "refer",
        TRUNCATE: "truncate",
        IOCTL_DEV: "ioctl_dev",
        RESOLVE_UNIX: "resolve_unix",
    }
)
NET_ABI = 4
SCOPE_ABI = 6
LOG_ABI = 7  # landlock_restrict_self flags for audit records

# landlock_restrict_self() flags (ABI 7). By default a domain's refusals are logged only
# until its creator execs: the launcher's child always execs the command, so it asks for
# the program's refusals to be logged too (when the launcher reads them, see
# sandbox.parent.denials).
RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1
RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2

# Rights that make sense on a file (not a directory): the kernel refuses others.
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV | RESOLVE_UNIX

# unveil(2) letters onto Landlock rights. 'c' creates and removes, as on OpenBSD; device
# nodes are never creatable (MAKE_CHAR/MAKE_BLOCK are handled and never granted).
PERM_RIGHTS: Mapping[str, int] = MappingProxyType(
    {
        "r": READ_FILE | READ_DIR,
        # Connecting to a unix socket is writing to it (as unveil(2) asks 'w' on OpenBSD).
        "w": WRITE_FILE | TRUNCATE | IOCTL_DEV | RESOLVE_UNIX,
        "x": EXECUTE,
        "c": MAKE_REG
        | MAKE_DIR
        | MAKE_SYM
        | MAKE_SOCK
        | MAKE_FIFO
        | REMOVE_FILE
        | REMOVE_DIR
        | REFER,
    }
)


def abi_version() -> int:
    """The running kernel's Landlock ABI, 0 if Landlock is absent or disabled."""
    libc = _libc()
    res = libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    return int(res) if res >= 0 else 0


def all_fs_rights(abi: int) -> int:
    return sum(right for right, first in FS_RIGHT_ABI.items() if first <= abi)


def rights_for(perms: frozenset[str] | set[str] | str) -> int:
    mask = 0
    for letter in perms:
        mask |= PERM_RIGHTS[letter]
    return mask


def right_names(mask: int) -> list[str]:
    return [name for bit, name in FS_RIGHT_NAMES.items() if mask & bit]


@plain(frozen=True)
class PathRule:
    path: str
    access: int  # Landlock fs rights (before masking to what the path and the ABI allow)


@plain(frozen=True)
class LandlockPlan:
    handled_fs: int
    paths: tuple[PathRule, ...]
    handled_net: int = 0  # 0: TCP not restricted by Landlock (not possible below ABI 4)
    connect_ports: tuple[int, ...] = ()
    bind_ports: tuple[int, ...] = ()
    scopes: int = 0
    abi: int = 0  # the kernel's ABI the plan was made for
    restrict_flags: int = 0  # landlock_restrict_self() flags (RESTRICT_SELF_LOG_*)


def _libc() -> ctypes.CDLL:
    return libc


def _check(res: int, what: str) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise SetupError(
            f"landlock: {what}: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})"
        )
    return res


def apply(plan: LandlockPlan) -> None:
    """Create the ruleset, add every rule, restrict the calling thread.

    no_new_privs must be set already (sandbox.enforce.hygiene does it first, for seccomp too).
    A path that cannot be opened is an error: a policy is enforced fully or not at all.
    """
    libc = _libc()
    attr = struct.pack("=QQQ", plan.handled_fs, plan.handled_net, plan.scopes)
    # The kernel accepts a shorter struct from older ABIs; pass only what is used so a
    # kernel without net/scope support is not handed fields it would reject.
    size = 24 if plan.scopes else (16 if plan.handled_net else 8)
    buf = ctypes.create_string_buffer(attr[:size], size)
    rfd = _check(libc.syscall(SYS_CREATE_RULESET, buf, ctypes.c_size_t(size), 0), "create_ruleset")
    try:
        for rule in plan.paths:
            _add_path_rule(libc, rfd, rule, plan.handled_fs)
        for port in plan.connect_ports:
            _add_port_rule(libc, rfd, NET_CONNECT_TCP, port)
        for port in plan.bind_ports:
            _add_port_rule(libc, rfd, NET_BIND_TCP, port)
        _check(libc.syscall(SYS_RESTRICT_SELF, rfd, plan.restrict_flags), "restrict_self")
    finally:
        os.close(rfd)


def _add_path_rule(libc: ctypes.CDLL, rfd: int, rule: PathRule, handled: int) -> None:
    try:
        fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"unveil {rule.path}: {e.strerror}") from e
    try:
        access = rule.access & handled
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FILE_RIGHTS
        if access == 0:
            return  # unveiled with no rights: visible to nothing, as unveil(path, "")
        # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd.
        buf = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        _check(libc.syscall(SYS_ADD_RULE, rfd, RULE_PATH_BENEATH, buf, 0), f"add_rule {rule.path}")
    finally:
        os.close(fd)


def _add_port_rule(libc: ctypes.CDLL, rfd: int, access: int, port: int) -> None:
    buf = ctypes.create_string_buffer(struct.pack("=QQ", access, port), 16)
    _check(libc.syscall(SYS_ADD_RULE, rfd, RULE_NET_PORT, buf, 0), f"add_rule port {port}")
