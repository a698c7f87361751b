"""The launcher's code in the child, between fork and exec: lock, hand over, exec.

Only launcher code runs here; the program never runs unlocked under `lock: exec`. The
child waits for the parent's "go" (sent after the start record is durable), applies the
plan (sandbox.enforce.apply), tells the parent how set-up went over the broker channel
(handing over the seccomp listener), and execs the command. On any failure it reports
the reason and exits 3; it never falls back into the launcher's own code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import NoReturn

from sandbox import wire
from sandbox.enforce import hygiene, landlock, mounts, seccomp
from sandbox.enforce.apply import Steps, apply, place_channel
from sandbox.enforce.plan import Plan
from sandbox.enforce.promises import rules_for
from sandbox.enforce.rules import Rule
from sandbox.errors import SetupError
from sandbox.plain import replace
from sandbox.protocol import HANDSHAKE_ID, Op

HANDSHAKE_TIMEOUT = 30.0
# lock: agent with init.pledge: the command itself must still be exec'd under that bound.
INIT_EXEC_RULES = (Rule("execve"), Rule("execveat"))


def main(
    plan: Plan, path: str, argv: list[str], sock: socket.socket, expected_parent: int, bpf: bytes
) -> NoReturn:
    """Lock this process and exec the command. Never returns.

    `bpf`: the launch filter, compiled by the parent before the fork (it names no pid);
    empty under `lock: agent`, where the agent compiles its own at its lock.
    """
    try:
        hygiene.set_parent_death_signal(expected_parent)
        hygiene.reset_signal_dispositions()
        sock.settimeout(HANDSHAKE_TIMEOUT)
        if sock.recv(16) != b"go":
            os._exit(3)
        sock.settimeout(None)  # blocking again: the agent inherits this descriptor
        _isolate_dns(plan, sock)
        _isolate_unix(plan)
        sock = place_channel(sock.detach())
        _lock(plan, sock, bpf)
        os.execve(path, argv, dict(plan.env))
    except SetupError as e:
        report(sock, str(e))
    except OSError as e:
        hint = " (is it unveiled with 'x'?)" if e.errno == errno.EACCES else ""
        report(sock, f"cannot execute {path}: {e.strerror}{hint}")
    except BaseException as e:  # the child must never fall back into the launcher's code
        import traceback  # the error path only; its import would cost every launch

        report(sock, f"internal error in the child: {e!r}\n{traceback.format_exc()}")
    os._exit(3)


def report(sock: socket.socket, message: str) -> None:
    """Tell the parent why set-up failed, with nothing but a sendmsg on the channel: after
    the lock that is the one call the filter allows whatever the pledge (no dup, no open;
    `sock` was made before the lock)."""
    with contextlib.suppress(BaseException):
        wire.send(sock, {"id": HANDSHAKE_ID, "op": Op.SETUP_ERROR, "message": message})


def _common(plan: Plan) -> Steps:
    """What both lock modes apply: limits, mounts, user, privileges."""
    return Steps(
        rlimits=plan.rlimits,
        qos=plan.policy.qos,
        noexec=plan.noexec,
        user=plan.policy.user,
        drop_capabilities=True,
    )


def _lock(plan: Plan, channel: socket.socket, bpf: bytes) -> None:
    """Apply the plan, then hand the listener over on `channel` (made before the lock).

    After the filter is loaded only the calls every pledge allows are made here: sendmsg
    on the channel, then the exec. The listener is left open, close-on-exec: closing it is
    a call a pledge without stdio refuses, and it would wait for a parent that does not
    hold the listener yet."""
    steps = _common(plan)
    if plan.policy.lock == "agent":
        listener = apply(_agent_init(plan, steps))
    elif bpf:
        listener = apply(replace(steps, landlock=plan.landlock, seccomp=bpf, listener=True))
    else:  # best_effort without user notification: the kernel acts alone
        kernel_filter = seccomp.program(
            plan.rules,
            violation=seccomp.KERNEL_ACTIONS[plan.policy.violation],
            self_pid=os.getpid(),
            never_action=seccomp.NEVER_KERNEL_ACTIONS[plan.policy.violation],
            cache=False,  # see _agent_init
        )
        listener = apply(replace(steps, landlock=plan.landlock, seccomp=kernel_filter))
    if listener is None:
        wire.send(channel, {"id": HANDSHAKE_ID, "op": Op.READY})
    else:
        # The listener must not stay in the agent: whoever holds it answers for the filter.
        # It is close-on-exec (the kernel makes it so), and the exec is next.
        wire.send(channel, {"id": HANDSHAKE_ID, "op": Op.LISTENER}, fd=listener)


def _agent_init(plan: Plan, steps: Steps) -> Steps:
    """lock: agent: the init bounds (TCP ports, scopes, init.pledge); the lock itself comes
    later, from the agent's own pledge(), which hands the listener to the parent."""
    ll = plan.landlock
    if ll is not None and (ll.handled_net or ll.scopes):
        # TCP ports and scopes hold from the exec on, whatever the agent declares later; the
        # filesystem view is the agent's own to declare (within the policy) at its lock.
        steps = replace(steps, landlock=_init_layer(ll))
    init = plan.policy.init_pledge
    if init is not None:
        # A bound the kernel holds whatever the agent's init code does: no listener (the
        # agent's own lock brings it), exec allowed for the command itself. Built here: its
        # signals-to-self rules name this process's pid. Not from the filter cache: that
        # pid is 2 in the agent's pid namespace (a syscall number the program compares, so
        # a cached template could not take it), and in a user namespace of its own the
        # keyring is not the user's.
        bound = [*rules_for(init | {"unveil"}), *INIT_EXEC_RULES]
        bpf = seccomp.program(
            bound, violation="kill", self_pid=os.getpid(), never_action="kill", cache=False
        )
        steps = replace(steps, seccomp=bpf)
    return steps


def _init_layer(ll: landlock.LandlockPlan) -> landlock.LandlockPlan:
    """The lock: agent init layer: TCP ports and scopes, and no restriction on files.

    A layer that handles no filesystem right still denies `refer` (the kernel denies
    reparenting in every layer unless the layer grants it: "initially denied"), so with
    the plain net+scopes layer a rename or link between two directories of the agent's
    own rwc unveil failed with EXDEV. This layer handles `refer` only and grants it on `/`:
    sound, because a layer restricts only what it handles, and for `refer` the kernel's
    check within a layer is that the file gains no right it handles by moving; here every
    path has the one right the layer handles, so nothing can be gained. The layer then
    restricts no file operation at all, as before; the agent's own layer at its lock
    (which handles every right, refer included) decides renames and links.
    """
    if ll.abi < landlock.FS_RIGHT_ABI[landlock.REFER]:
        return replace(ll, handled_fs=0, paths=())
    everywhere = landlock.PathRule("/", landlock.REFER)
    return replace(ll, handled_fs=landlock.REFER, paths=(everywhere,))


def _isolate_unix(plan: Plan) -> None:
    """'unix' decided by the parent: a network namespace of the agent's own, so the abstract
    sockets the parent connects it to are the sandbox's (the relay's socket is not needed)."""
    if not plan.own_netns or plan.dns_relay:
        return
    from sandbox.parent import dnsrelay

    dnsrelay.isolate_network().close()


def _isolate_dns(plan: Plan, sock: socket.socket) -> None:
    """'dns' without 'inet': the agent's own network namespace and resolv.conf; the relay's
    socket goes to the parent before anything else is said."""
    if not plan.dns_relay:
        return
    import tempfile  # imported before the fork (see launcher), so no file is read

    from sandbox.parent import dnsrelay

    relay = dnsrelay.isolate_network()
    fd, path = tempfile.mkstemp(prefix="sandbox-resolv-", suffix=".conf")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(dnsrelay.RESOLV_CONF_TEXT)
        os.chmod(path, 0o644)
        mounts.bind_file(path, "/etc/resolv.conf")
    finally:
        os.unlink(path)  # the bind mount keeps the file; its name is not needed
    wire.send(sock, {"id": HANDSHAKE_ID, "op": Op.DNS_SOCKET}, fd=relay.fileno())
    relay.close()
