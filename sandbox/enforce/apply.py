"""Apply: the only code that calls the mechanisms, in one fixed order.

In the manner of main() in Linux's samples/landlock/sandboxer.c: a linear sequence with no
policy decisions. The launcher's child comes here before it execs the command (both lock
modes), and pledge()/unveil() come here inside a running agent. What to apply is decided
beforehand (sandbox.enforce.plan); a step whose field is empty is skipped.

Order, and why:
0. descriptors, before apply() (the launcher's child calls place_channel()): the channel
   to the parent at its fixed number, every other one closed, and the socket object the
   child speaks through made now (first, so that a failure of any later step can still
   be reported on it; and CPython asks the kernel, getsockname, when it wraps a
   descriptor: after the filter is loaded that call may be one the pledge refuses).
2. rlimits (and no core dumps), qos: plain process attributes.
3. noexec mounts: need CAP_SYS_ADMIN in the agent's mount namespace, so before the drop.
   Root has it; an ordinary user's agent has it in its own user namespace, made before
   the reaper was forked (sandbox.parent.reaper: a pid namespace must exist before the
   processes in it, so that cannot be a step here). Every step is the same for both.
4. user: the bounding set first (needs CAP_SETPCAP), then groups, gid, uid.
5. no_new_privs: nothing exec'd gains privileges; Landlock and seccomp require it.
6. capabilities: every set emptied (what is left is bounded by no_new_privs: an ordinary
   user without a user namespace keeps its bounding set, which it cannot empty).
7. Landlock: the filesystem view, TCP ports, scopes.
8. seccomp, last: its filter may forbid the calls the steps before it need.
"""

from __future__ import annotations

import os
import socket

from sandbox.enforce import hygiene, landlock, mounts, seccomp
from sandbox.plain import plain
from sandbox.protocol import BROKER_FD


@plain(frozen=True, slots=True)
class Steps:
    rlimits: tuple[tuple[int, int], ...] | None = None  # None: leave limits (and cores) alone
    qos: str | None = None
    noexec: tuple[str, ...] = ()
    user: str | None = None
    drop_capabilities: bool = False
    landlock: landlock.LandlockPlan | None = None
    seccomp: bytes | None = None  # a BPF program (sandbox.enforce.seccomp.to_bpf)
    listener: bool = False  # load seccomp with a user-notification listener
    tsync: bool = False  # synchronise the filter to every thread


def apply(steps: Steps) -> int | None:
    """Apply `steps` to the calling process; the seccomp listener fd if one was asked for.

    Raises SetupError (fail closed) at the first step that cannot be applied.
    """
    if steps.rlimits is not None:
        hygiene.set_rlimits(steps.rlimits)
    hygiene.set_qos(steps.qos)
    mounts.make_noexec(steps.noexec)
    if steps.user is not None:
        hygiene.drop_bounding_set()  # while CAP_SETPCAP is still there
        hygiene.switch_user(steps.user)
    if not hygiene.no_new_privs():
        hygiene.set_no_new_privs()
    if steps.drop_capabilities:
        hygiene.drop_capabilities()
    if steps.landlock is not None:
        landlock.apply(steps.landlock)
    if steps.seccomp is not None:
        return seccomp.load_bpf(steps.seccomp, listener=steps.listener, tsync=steps.tsync)
    return None


def place_channel(fd: int) -> socket.socket:
    """Put the channel to the parent at BROKER_FD, close every descriptor above it, and
    return the socket object to speak through (see step 0 above)."""
    if fd != BROKER_FD:
        os.dup2(fd, BROKER_FD, inheritable=True)
        os.close(fd)
    else:
        os.set_inheritable(fd, True)
    hygiene.close_fds_from(BROKER_FD + 1)
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=BROKER_FD)
