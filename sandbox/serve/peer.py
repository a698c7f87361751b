"""What the warm launcher learns about a client from the kernel, and when it must refuse.

A cold `sandbox run` inherits its caller's process: credentials, confinement (seccomp,
no_new_privs, Landlock), namespaces, cgroup, limits, priorities, umask, signal mask and
ignored signals. A launch forked from the server inherits the server's instead, so the
server compares what it cannot give a launch (and refuses when it differs: the client
then launches cold, which inherits it) and reads what it can reproduce (the launch takes
it on). Everything here comes from /proc and the kernel, never from the client's word,
and is read from the process that connected (SO_PEERCRED / SO_PEERPIDFD), which is
checked to be still alive afterwards, so a recycled pid cannot stand in for it.

Refused, because a launch could not reproduce it (or it would be an escape):
- another uid, or other real/saved/fs ids, groups or capabilities than the server's;
- no_new_privs or a seccomp filter: a confined process (every unprivileged Landlock
  domain comes with no_new_privs) would otherwise leave its sandbox through the server;
- other namespaces (mount, network, pid, user, ...), another cgroup, another LSM label or
  personality: the launch would see another system;
- limits or priorities the server cannot take on (a hard limit above its own, a lower
  nice value or oom_score_adj, a real-time policy) without privilege.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
from typing import NamedTuple

from sandbox import libc

SO_PEERPIDFD = 77  # Linux 6.5
SYS_IOPRIO_GET = 252
IOPRIO_WHO_PROCESS = 1

# Every rlimit the kernel has (RLIMIT_NLIMITS is 16 on Linux).
RLIMITS = tuple(
    getattr(resource, n)
    for n in (
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    )
    if hasattr(resource, n)
)
# Status lines that must be equal between client and server.
SAME_STATUS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
# Files under /proc/PID whose content must be equal (missing on both sides is equal).
SAME_FILES = ("cgroup", "attr/current", "personality")
REAL_TIME = frozenset({os.SCHED_FIFO, os.SCHED_RR})


class Inherited(NamedTuple):
    """What a cold launcher would have inherited from the client, for the launch to take."""

    umask: int
    sig_ignored: frozenset[int]
    sig_blocked: frozenset[int]
    rlimits: tuple[tuple[int, tuple[int, int]], ...]
    nice: int
    sched: tuple[int, int]  # policy, priority
    affinity: frozenset[int]
    ioprio: int
    oom_score_adj: int


class Refused(Exception):
    """The client's process differs from the server's in a way a launch cannot reproduce."""


def _status(pid: int | str) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        out = {}
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
        return out


def _read(path: str) -> bytes | str:
    """A small /proc file's bytes, or the name of the error (so that 'unsupported here'
    compares equal on both sides, and an unreadable file does not)."""
    try:
        with open(path, "rb") as f:
            return f.read(65536)
    except OSError as e:
        return f"errno {e.errno}"


def _namespaces(pid: int | str) -> dict[str, str]:
    base = f"/proc/{pid}/ns"
    return {name: os.readlink(f"{base}/{name}") for name in os.listdir(base)}


def _signals(mask_hex: str) -> frozenset[int]:
    mask = int(mask_hex, 16)
    return frozenset(n for n in range(1, 65) if mask >> (n - 1) & 1)


def _ioprio(pid: int) -> int:
    return libc.syscall(SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS, pid, what="ioprio_get")


def _oom(pid: int | str) -> int:
    with open(f"/proc/{pid}/oom_score_adj", encoding="ascii") as f:
        return int(f.read())


class Server:
    """The server's own view of itself, taken once, to compare clients with."""

    def __init__(self) -> None:
        me = _status("self")
        self.euid = os.geteuid()
        self.root = self.euid == 0
        self.status = {k: me.get(k, "") for k in SAME_STATUS}
        self.files = {name: _read(f"/proc/self/{name}") for name in SAME_FILES}
        self.ns = _namespaces("self")
        self.hard = {r: resource.getrlimit(r)[1] for r in RLIMITS}
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.oom = _oom("self")
        self.confined = me.get("NoNewPrivs", "0") != "0" or me.get("Seccomp", "0") != "0"

    def inspect(self, pid: int, pidfd: int) -> Inherited:
        """What a launch for client `pid` must take on; Refused if it cannot."""
        try:
            got = self._inspect(pid)
            # The pidfd pins the process, not its number: a client still alive now is the
            # one whose /proc entries were read (a pid is not reused while it lives).
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise Refused("the client exited") from None
        except OSError as e:
            raise Refused(f"cannot inspect the client: {e.strerror or e}") from None
        return got

    def _inspect(self, pid: int) -> Inherited:
        st = _status(pid)
        for key in SAME_STATUS:
            if st.get(key, "") != self.status[key]:
                raise Refused(f"its {key} ({st.get(key)}) differs from the server's")
        if st.get("NoNewPrivs", "1") != "0":
            raise Refused("it runs with no_new_privs (it may be confined by Landlock)")
        if st.get("Seccomp", "1") != "0":
            raise Refused("it runs under a seccomp filter")
        for name in SAME_FILES:
            if _read(f"/proc/{pid}/{name}") != self.files[name]:
                raise Refused(f"its /proc/PID/{name} differs from the server's")
        ns = _namespaces(pid)
        for name, link in self.ns.items():
            if ns.get(name) != link:
                raise Refused(f"it is in another {name} namespace")
        rlimits = []
        for r in RLIMITS:
            soft, hard = resource.prlimit(pid, r)
            if not self.root and _above(hard, self.hard[r]):
                raise Refused(f"its hard limit {r} is above the server's")
            rlimits.append((r, (soft, hard)))
        nice = os.getpriority(os.PRIO_PROCESS, pid)
        oom = _oom(pid)
        policy = os.sched_getscheduler(pid)
        if not self.root and (nice < self.nice or oom < self.oom or policy in REAL_TIME):
            raise Refused("it has a priority the server cannot give without privilege")
        return Inherited(
            umask=int(st["Umask"], 8),
            sig_ignored=_signals(st["SigIgn"]),
            sig_blocked=_signals(st["SigBlk"]),
            rlimits=tuple(rlimits),
            nice=nice,
            sched=(policy, os.sched_getparam(pid).sched_priority),
            affinity=frozenset(os.sched_getaffinity(pid)),
            ioprio=_ioprio(pid),
            oom_score_adj=oom,
        )


def _above(a: int, b: int) -> bool:
    inf = resource.RLIM_INFINITY
    return b != inf and (a == inf or a > b)


def peer_pidfd(sock: socket.socket, pid: int) -> int:
    """A pidfd of the process that connected: SO_PEERPIDFD where the kernel has it (no race
    at all), else pidfd_open of the SO_PEERCRED pid right after accept."""
    with contextlib.suppress(OSError):
        return int(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
    return os.pidfd_open(pid)
