"""Process hygiene applied in the child before the lock: the steps that need no policy logic.

Each function does one thing and raises SetupError (fail closed) when it cannot. The order
is fixed by sandbox.parent.launcher: rlimits, mounts, user, descriptors, no_new_privs,
capabilities, then Landlock and seccomp (last, because they may forbid what the others need).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import resource
import signal
from collections.abc import Sequence

import prctl  # python-prctl

from sandbox import procfs
from sandbox.errors import SetupError
from sandbox.libc import libc as _libc

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECUREBITS = 28
PR_CAPBSET_DROP = 24
# SECBIT_NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED, NO_CAP_AMBIENT_RAISE and their locks:
# root regains nothing through exec or setuid, and nobody can undo it.
SECUREBITS_LOCKED = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"

SYS_CLOSE_RANGE = 436
SYS_CAPSET = 126


_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "") -> int:
    res = int(_libc.prctl(option, arg2, arg3, 0, 0))
    if res < 0:
        err = ctypes.get_errno()
        raise SetupError(f"prctl({what or option}): {os.strerror(err)}")
    return res


def set_parent_death_signal(expected_parent: int) -> None:
    """Die with the launcher: a parentless agent would run unsupervised."""
    try:
        prctl.set_pdeathsig(signal.SIGKILL)
    except OSError as e:
        raise SetupError(f"PR_SET_PDEATHSIG: {e.strerror}") from e
    if os.getppid() != expected_parent:
        os._exit(137)  # the launcher died before the signal was armed


def set_no_new_privs() -> None:
    try:
        prctl.set_no_new_privs(1)
    except OSError as e:
        raise SetupError(f"PR_SET_NO_NEW_PRIVS: {e.strerror}") from e


def no_new_privs() -> bool:
    return bool(prctl.get_no_new_privs())


def set_rlimits(values: Sequence[tuple[int, int]]) -> None:
    """(resource, value) pairs; soft = hard, so the agent cannot raise them back."""
    for res, value in values:
        try:
            resource.setrlimit(res, (value, value))
        except (OSError, ValueError) as e:
            raise SetupError(f"setrlimit({res}, {value}): {e}") from e
    # No core dumps: a core would write the agent's memory (secrets it was handed) to disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def switch_user(name: str) -> None:
    """Become `name` (needs root): groups, gid, then uid, all three ids of each."""
    try:
        pw = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError as e:
        raise SetupError(f"user {name!r} does not exist") from e
    try:
        os.setgroups([])
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    except OSError as e:
        raise SetupError(f"cannot switch to user {name!r}: {e.strerror}") from e
    if os.getresuid() != (pw.pw_uid,) * 3 or os.getresgid() != (pw.pw_gid,) * 3:
        raise SetupError(f"user switch to {name!r} did not take")


def close_fds_from(lowest: int) -> None:
    """Close every descriptor >= lowest: an inherited fd is a capability nobody declared."""
    res = _libc.syscall(SYS_CLOSE_RANGE, ctypes.c_uint(lowest), ctypes.c_uint(0xFFFFFFFF), 0)
    if res < 0:
        os.closerange(lowest, 1 << 20)


def drop_bounding_set() -> None:
    """Empty the bounding set and lock the securebits: root regains nothing by exec or
    setuid. Needs CAP_SETPCAP, so it runs before a user switch takes that away.

    The loop runs to the kernel's own cap_last_cap rather than python-prctl's list of
    names, which may be older than the kernel: a capability it does not know would stay.
    """
    try:
        with open(CAP_LAST_CAP_FILE, encoding="ascii") as f:
            last = int(f.read())
    except OSError:
        last = 63
    for cap in range(last + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            err = ctypes.get_errno()
            if err != 22:  # EINVAL: not a capability on this kernel
                raise SetupError(
                    f"cannot drop capability {cap} from the bounding set: {os.strerror(err)}"
                )
    _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED, what="PR_SET_SECUREBITS")


CAP_SETPCAP = 8


def drop_capabilities() -> None:
    """Empty every capability set the process can empty, for root too, and lock the
    securebits where that is allowed.

    The bounding set and securebits go first (they need CAP_SETPCAP), the effective,
    permitted, inheritable and ambient sets last. An ordinary user without a user namespace
    cannot touch its bounding set (no CAP_SETPCAP) and does not need to: it holds no
    capability, and under no_new_privs (set before this step) no exec can add one (setuid
    and file capabilities are ignored), so the bounding set bounds nothing. Root must
    empty it (root regains capabilities through exec), and so does anyone with CAP_SETPCAP,
    such as the agent inside its own user namespace.
    """
    if _cap_line("CapBnd") and (os.geteuid() == 0 or _has_cap_effective(CAP_SETPCAP)):
        drop_bounding_set()
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")
    _capset_empty()
    held = [f for f in ("CapEff", "CapPrm", "CapInh", "CapAmb") if _cap_line(f)]
    if held:
        raise SetupError(f"capabilities remain after dropping them ({', '.join(held)})")
    if _cap_line("CapBnd") and (os.geteuid() == 0 or not no_new_privs()):
        raise SetupError("the capability bounding set could not be emptied")


def reset_signal_dispositions() -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: give the agent
    the defaults (as subprocess's restore_signals does)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _cap_line(field: str) -> int:
    # An unreadable status raises: a capability check must not pass by default.
    values = procfs.status_field("/proc/self/status", field)
    return int(values[0], 16) if values else 0


def _has_cap_effective(cap: int) -> bool:
    return bool(_cap_line("CapEff") >> cap & 1)


def _capset_empty() -> None:
    # struct __user_cap_header_struct {u32 version; int pid}; version 3 has two data words.
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if _libc.syscall(SYS_CAPSET, header, data) < 0:
        err = ctypes.get_errno()
        raise SetupError(f"capset: {os.strerror(err)}")


# qos -> (nice value, scheduling policy, I/O priority class): macOS's QoS classes in Linux
# terms. Lowering only: an agent's work never competes with the operator's interactive work.
SYS_IOPRIO_SET = 251
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE = 2, 3
QOS: dict[str, tuple[int, int | None, int | None]] = {
    "interactive": (0, None, None),
    "initiated": (0, None, None),
    "utility": (5, os.SCHED_BATCH, IOPRIO_CLASS_BE),
    "background": (19, os.SCHED_IDLE, IOPRIO_CLASS_IDLE),
}


def set_qos(qos: str | None) -> None:
    if qos is None:
        return
    nice, policy, io_class = QOS[qos]
    try:
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if policy is not None:
            os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as e:
        raise SetupError(f"qos {qos}: {e.strerror}") from e
    if io_class is not None:
        # ioprio value: class << 13 | data (priority 7, the lowest, within best-effort).
        value = io_class << 13 | (7 if io_class == IOPRIO_CLASS_BE else 0)
        if _libc.syscall(SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, value) < 0:
            raise SetupError(f"qos {qos}: ioprio_set: {os.strerror(ctypes.get_errno())}")
