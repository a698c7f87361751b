"""The launcher: fork, lock the child, exec the command, supervise it from one event loop.

Parent                                  Child (runs only launcher code until the exec)
------                                  -----
load policy, compile plan, open log
socketpair (SEQPACKET), fork  ───────►  pdeathsig, wait for "go"
cgroup add, start record, "go" ──────►  rlimits, noexec mounts, user, fds, no_new_privs,
                                        capabilities, Landlock, seccomp (with listener)
receive listener fd  ◄─────────────────  send listener fd over the broker socket, close it
answer the exec with CONTINUE  ◄───────  execve(command)  (notified: exec is always routed)
event loop: notifications, broker requests, the reaper's status pipe (exit), wall clock, signals

The exec of the command itself therefore needs no 'exec' promise: it is the one call the
parent lets through before the program exists, and every later exec is decided by policy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn

from sandbox import cgroup, hygiene, landlock, lockgate, mounts, reaper, seccomp, wire
from sandbox.audit import AuditError, AuditLog
from sandbox.broker import Broker
from sandbox.errors import SetupError
from sandbox.kernel import Features, probe
from sandbox.model import Policy
from sandbox.plan import Plan, check_enforceable, compile_plan, seccomp_rules
from sandbox.promises import rules_for
from sandbox.rules import Rule
from sandbox.supervisor import Supervisor

if TYPE_CHECKING:
    from sandbox import dnsrelay

INIT_EXEC_RULES = (Rule("execve"), Rule("execveat"))

VIOLATION_EXIT = 128 + signal.SIGSYS  # 159
HANDSHAKE_TIMEOUT = 30.0


@dataclass
class RunResult:
    status: int  # what `sandbox run` exits with
    pid: int
    reason: str = ""


def _which(prog: str, path: str) -> str | None:
    """shutil.which without shutil (and the archive modules it imports on every launch)."""
    for d in path.split(os.pathsep):
        candidate = os.path.join(d or ".", prog)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def resolve_command(command: Sequence[str], env: Mapping[str, str]) -> str:
    if not command:
        raise SetupError("no command: give one after -- or set `command` in the policy")
    prog = command[0]
    if "/" in prog:
        return os.path.abspath(prog)
    found = _which(prog, env.get("PATH", os.defpath))
    if not found:
        raise SetupError(f"{prog}: command not found in PATH={env.get('PATH', os.defpath)}")
    return found


def run(
    policy: Policy,
    command: Sequence[str] | None,
    audit_path: str,
    *,
    environ: Mapping[str, str] | None = None,
    feats: Features | None = None,
) -> RunResult:
    feats = probe() if feats is None else feats
    plan = compile_plan(policy, feats, environ)
    check_enforceable(plan)
    argv = list(command) if command else list(policy.command)
    path = resolve_command(argv, plan.env)
    try:
        audit = AuditLog(audit_path, policy.name)
    except (AuditError, OSError) as e:
        raise SetupError(f"audit log {audit_path}: {e}") from e
    with audit:
        return _run(plan, path, argv, audit, feats)


def _run(plan: Plan, path: str, argv: list[str], audit: AuditLog, feats: Features) -> RunResult:
    policy = plan.policy
    if plan.dns_relay:
        import tempfile  # noqa: F401  # the child needs both after the fork

        from sandbox import dnsrelay  # noqa: F401

    cg = None
    # A cgroup for the limits; without limits only to find stragglers, which the reaper's pid
    # namespace already ends (moving a process between v1 cgroups costs ~4 ms a hierarchy).
    if plan.cgroup_memory is not None or plan.cgroup_processes is not None or not feats.root:
        try:
            # The reaper lives in the cgroup too: one more process than the agent's tree.
            procs = None if plan.cgroup_processes is None else plan.cgroup_processes + 1
            cg = cgroup.create(
                policy.name, plan.cgroup_memory, procs, feats, tracking=not feats.root
            )
        except SetupError:
            if plan.cgroup_memory is not None or plan.cgroup_processes is not None:
                raise
            cg = None  # only used to find stragglers; the process group serves then
    # The child locks Landlock before it builds its seccomp filter: everything it needs
    # from disk (libseccomp, the modules it imports) must be loaded now, in the parent.
    # The filter is built here, before the fork (it names no pid), so the child only loads it.
    filt = (
        seccomp.build_filter(
            plan.rules, violation="notify", self_pid=os.getpid(), never_action="notify"
        )
        if plan.user_notif and policy.lock == "exec"
        else None
    )
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def agent_main(expected_parent: int) -> NoReturn:
        parent_sock.close()
        _child(plan, path, argv, child_sock, expected_parent, filt)

    rp = reaper.start(agent_main, pidns=feats.root)
    child_sock.close()
    try:
        return _supervise(plan, path, argv, audit, cg, parent_sock, rp)
    finally:
        rp.kill()
        rp.close()
        if cg is not None:
            cg.remove()
        parent_sock.close()


def _kill_tree(cg: cgroup.Cgroup | None, rp: reaper.Reaper) -> None:
    if cg is not None:
        cg.kill_all()
    rp.kill()


def _supervise(
    plan: Plan,
    path: str,
    argv: list[str],
    audit: AuditLog,
    cg: cgroup.Cgroup | None,
    sock: socket.socket,
    rp: reaper.Reaper,
) -> RunResult:
    policy = plan.policy
    try:
        if cg is not None:
            cg.add(rp.pid)  # before the agent exists: everything it starts is counted
        pid = rp.release()
        audit.record(
            "start",
            pid=pid,
            policy=policy.source,
            policy_sha256=policy.sha256,
            command=[path, *argv[1:]],
            enforced=plan.enforced(),
        )
    except (OSError, AuditError, SetupError) as e:
        _kill_tree(cg, rp)
        rp.agent_status()
        raise SetupError(f"cannot start {policy.name}: {e}") from e
    sock.send(b"go")
    sup = Supervisor(plan=plan, audit=audit, agent_pid=pid, kill_tree=lambda: _kill_tree(cg, rp))
    try:
        listener, relay_fd = _handshake(sock, pid, plan)
    except SetupError as e:
        _kill_tree(cg, rp)
        _record_exit(audit, pid, rp.agent_status(), str(e))
        raise
    sup.listener = listener if listener is not None else -1
    relay = None
    try:
        if relay_fd is not None:
            from sandbox import dnsrelay  # only agents with 'dns' and no 'inet' need it

            inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0, fileno=relay_fd)
            up = dnsrelay.upstream(os.environ)
            if up is None:
                inner.close()
            else:
                relay = dnsrelay.DnsRelay(inner, up, audit, pid)
        return _loop(plan, audit, sup, cg, sock, rp, relay)
    finally:
        if relay is not None:
            relay.close()
        if listener is not None:
            os.close(listener)


def _handshake(sock: socket.socket, pid: int, plan: Plan) -> tuple[int | None, int | None]:
    """Wait for the child's listener fd (or its setup error) before anything else; with a
    DNS relay, the relay's socket comes first. Returns (listener, relay socket)."""
    relay: int | None = None
    try:
        msg, fd = _handshake_message(sock)
        if msg.get("op") == "dns-socket" and plan.dns_relay and fd is not None:
            relay, (msg, fd) = fd, _handshake_message(sock)
        return _handshake_listener(plan, msg, fd), relay
    except BaseException:
        if relay is not None:
            os.close(relay)
        raise


def _handshake_message(sock: socket.socket) -> tuple[dict[str, Any], int | None]:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    try:
        if not sel.select(HANDSHAKE_TIMEOUT):
            raise SetupError("the child did not finish its set-up in time")
    finally:
        sel.close()
    try:
        return wire.recv(sock)
    except (wire.WireError, OSError) as e:
        raise SetupError(f"set-up failed in the child: {e}") from e


def _handshake_listener(plan: Plan, msg: dict[str, Any], fd: int | None) -> int | None:
    op = msg.get("op")
    if op == "setup-error":
        if fd is not None:
            os.close(fd)
        raise SetupError(str(msg.get("message", "unknown error")))
    if op == "listener" and plan.user_notif and fd is not None:
        return fd
    if op == "ready" and (not plan.user_notif or plan.policy.lock == "agent"):
        return None
    if fd is not None:
        os.close(fd)
    raise SetupError(f"unexpected message from the child during set-up: {op!r}")


def _record_exit(audit: AuditLog, pid: int, status: int, reason: str = "") -> None:
    fields: dict[str, object] = {"pid": pid}
    if os.WIFSIGNALED(status):
        fields["signal"] = os.WTERMSIG(status)
    else:
        fields["status"] = os.waitstatus_to_exitcode(status)
    if reason:
        fields["reason"] = reason
    with contextlib.suppress(AuditError):
        audit.record("exit", **fields)


def _loop(
    plan: Plan,
    audit: AuditLog,
    sup: Supervisor,
    cg: cgroup.Cgroup | None,
    sock: socket.socket,
    rp: reaper.Reaper,
    relay: dnsrelay.DnsRelay | None = None,
) -> RunResult:
    policy = plan.policy
    pid = sup.agent_pid
    sock.setblocking(False)
    broker = Broker(sock, policy, audit, pid, os.environ)
    sel = selectors.DefaultSelector()
    sel.register(rp.status_fd, selectors.EVENT_READ, "exit")
    if relay is not None:
        sel.register(relay.inner, selectors.EVENT_READ, "dns-query")
        sel.register(relay.outer, selectors.EVENT_READ, "dns-answer")
    sel.register(sock, selectors.EVENT_READ, "broker")
    if sup.listener >= 0:
        sel.register(sup.listener, selectors.EVENT_READ, "notify")
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    sel.register(wake_r, selectors.EVENT_READ, "signal")
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    # The terminal's ^C and ^\ reach the agent directly (same process group); the launcher
    # outlives them to record the exit. TERM and HUP to the launcher end the agent.
    old_handlers = {
        s: signal.signal(s, lambda *_: None)
        for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
    }
    now = time.monotonic()
    deadline = now + policy.limits.wall if policy.limits.wall else None
    gate = _LockGate(plan, audit, sup, sel, pid) if policy.lock == "agent" else None
    if gate is not None:
        broker.register("lock", gate.handle)
        if policy.init_pledge is not None:
            sup.kernel_kill_hint = (
                "a call outside init.pledge (the kernel enforces that bound alone)"
            )
        sup.exec_done = True  # no launcher code runs after the exec in this mode
    init_deadline = now + policy.init_timeout if gate is not None else None
    reason = ""
    exec_error: list[str] = []

    def on_exec_error(request: dict[str, Any], fd: int | None) -> tuple[dict[str, Any], int | None]:
        # The child's exec failed after the lock (e.g. the program is not unveiled 'x').
        # Anything can send this op, so it is printed once, escaped, and changes nothing.
        if fd is not None:
            os.close(fd)
        if not exec_error and not gate:
            exec_error.append(
                str(request.get("message", ""))[:500].encode("unicode_escape").decode()
            )
            print(f"sandbox: {policy.name}[{pid}]: {exec_error[0]}", file=sys.stderr)
        return {}, None

    broker.register("setup-error", on_exec_error)
    try:
        while True:
            pending = [d for d in (deadline, init_deadline) if d is not None]
            timeout = None if not pending else max(0.0, min(pending) - time.monotonic())
            events = sel.select(timeout)
            now = time.monotonic()
            if init_deadline is not None and (gate is None or gate.locked):
                init_deadline = None
            if init_deadline is not None and now >= init_deadline:
                reason = f"did not lock within init.timeout of {policy.init_timeout:g}s"
                with contextlib.suppress(AuditError):
                    audit.record(
                        "lock", pid=pid, pledge=None, unveil=None, decision="deny", reason=reason
                    )
                print(f"sandbox: {policy.name}[{pid}]: {reason}", file=sys.stderr)
                sup.killed_for_violation = True
                _kill_tree(cg, rp)
                init_deadline = None
            if deadline is not None and now >= deadline:
                reason = f"wall-clock limit of {policy.limits.wall:g}s reached"
                print(f"sandbox: {policy.name}[{pid}]: {reason}", file=sys.stderr)
                _kill_tree(cg, rp)
                deadline = None
            for key, _ in events:
                if key.data == "notify":
                    if not sup.on_listener_readable():
                        sel.unregister(sup.listener)
                elif key.data == "dns-query" and relay is not None:
                    relay.on_query()
                elif key.data == "dns-answer" and relay is not None:
                    relay.on_answer()
                elif key.data == "broker":
                    if not broker.on_readable():
                        sel.unregister(sock)
                elif key.data == "signal":
                    if _drain_signals(wake_r) & {signal.SIGTERM, signal.SIGHUP}:
                        reason = "launcher received a termination signal"
                        _kill_tree(cg, rp)
                elif key.data == "exit":
                    status = rp.agent_status()
                    # The agent is done: nothing it started may outlive it.
                    _kill_tree(cg, rp)
                    return _finish(plan, audit, sup, cg, pid, status, reason)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        sel.close()
        wake_r.close()
        wake_w.close()
        broker.close()


class _LockGate:
    """The broker op "lock" (lock: agent): check, record, then take the listener."""

    def __init__(
        self, plan: Plan, audit: AuditLog, sup: Supervisor, sel: selectors.BaseSelector, pid: int
    ) -> None:
        self.plan, self.audit, self.sup, self.sel, self.pid = plan, audit, sup, sel, pid
        self.locked = False

    def handle(self, request: dict[str, Any], fd: int | None) -> tuple[dict[str, Any], int | None]:
        policy = self.plan.policy
        try:
            decl = lockgate.parse(request)
            lockgate.check(policy if not self.locked else self.sup.plan.policy, decl)
            if not self.locked and self.plan.user_notif and fd is None:
                raise lockgate.Refused("the first lock must hand over the seccomp listener")
        except lockgate.Refused as e:
            if fd is not None:
                os.close(fd)
            with contextlib.suppress(AuditError):
                self.audit.record(
                    "lock",
                    pid=self.pid,
                    pledge=request.get("pledge"),
                    unveil=request.get("unveil"),
                    decision="deny",
                    reason=str(e),
                )
            print(f"sandbox: {policy.name}[{self.pid}]: lock refused: {e}", file=sys.stderr)
            self.sup.killed_for_violation = True
            self.sup.kill_tree()
            raise PermissionError(f"lock refused: {e}") from None
        fields = {
            "pid": self.pid,
            "pledge": " ".join(sorted([*decl.pledge, *(f"{r}:{x}" for r, x in decl.capabilities)])),
            "unveil": {u.path: "".join(sorted(u.perms)) for u in decl.unveil},
            "execpromises": None
            if decl.execpromises is None
            else " ".join(sorted(decl.execpromises)),
        }
        try:
            self.audit.record("lock", **fields)
        except AuditError:
            if fd is not None:
                os.close(fd)
            self.sup.killed_for_violation = True
            self.sup.kill_tree()
            raise
        narrowed = lockgate.narrowed_policy(policy, decl)
        self.sup.plan = replace(
            self.sup.plan, policy=narrowed, rules=seccomp_rules(decl.pledge, decl.execpromises)
        )
        if fd is not None:
            if self.locked:
                os.close(fd)  # one listener per filter chain; later locks only narrow
            else:
                self.sup.listener = fd
                self.sel.register(fd, selectors.EVENT_READ, "notify")
        self.sup.kernel_kill_hint = (
            "a call outside the agent's narrowed pledge (enforced by the kernel alone, "
            "not recorded call by call)"
            if self.locked
            else "a system call of a foreign architecture or ABI (x32, int 0x80)"
        )
        self.locked = True
        return {"locked": True}, None


def _drain_signals(sock: socket.socket) -> set[int]:
    got: set[int] = set()
    with contextlib.suppress(BlockingIOError):
        while data := sock.recv(64):
            got.update(data)
    return got


def _finish(
    plan: Plan,
    audit: AuditLog,
    sup: Supervisor,
    cg: cgroup.Cgroup | None,
    pid: int,
    status: int,
    reason: str,
) -> RunResult:
    if not reason and cg is not None and plan.cgroup_memory is not None and cg.memory_events():
        reason = f"memory limit of {plan.cgroup_memory} bytes reached"
        print(f"sandbox: {plan.policy.name}[{pid}]: {reason}", file=sys.stderr)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS and not reason):
        _record_exit(audit, pid, status, reason)
    if sup.killed_for_violation:
        return RunResult(VIOLATION_EXIT, pid, "violation")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS and not reason:
            reason = f"killed by the kernel (SIGSYS): {sup.kernel_kill_hint}"
            print(f"sandbox: {plan.policy.name}[{pid}]: {reason}", file=sys.stderr)
            _record_exit(audit, pid, status, reason)
            return RunResult(128 + sig, pid, reason)
        return RunResult(128 + sig, pid, reason)
    return RunResult(os.waitstatus_to_exitcode(status), pid, reason)


# --------------------------------------------------------------------------- the child


def _child(
    plan: Plan, path: str, argv: list[str], sock: socket.socket, expected_parent: int, filt: Any
) -> NoReturn:
    """Lock this process and exec the command. Never returns."""
    try:
        hygiene.set_parent_death_signal(expected_parent)
        hygiene.reset_signal_dispositions()
        sock.settimeout(HANDSHAKE_TIMEOUT)
        if sock.recv(16) != b"go":
            os._exit(3)
        sock.settimeout(None)  # blocking again: the agent inherits this descriptor
        _lock_child(plan, sock, filt)
        os.execve(path, argv, dict(plan.env))
    except SetupError as e:
        _report(sock, str(e))
    except OSError as e:
        hint = " (is it unveiled with 'x'?)" if e.errno == errno.EACCES else ""
        _report(sock, f"cannot execute {path}: {e.strerror}{hint}")
    except BaseException as e:  # the child must never fall back into the launcher's code
        import traceback  # the error path only; its import would cost every launch

        _report(sock, f"internal error in the child: {e!r}\n{traceback.format_exc()}")
    os._exit(3)


def _report(sock: socket.socket, message: str) -> None:
    """Tell the parent why set-up failed, with nothing but a sendmsg on the broker fd: after
    the lock that is the one call the filter allows whatever the pledge (no dup, no open)."""
    with contextlib.suppress(BaseException):
        fd = sock.fileno() if sock.fileno() >= 0 else wire.BROKER_FD
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
        try:
            wire.send(s, {"id": 0, "op": "setup-error", "message": message})
        finally:
            s.detach()


def _lock_child(plan: Plan, sock: socket.socket, filt: Any) -> None:
    policy = plan.policy
    hygiene.set_rlimits(plan.rlimits)
    hygiene.set_qos(policy.qos)
    _isolate_dns(plan, sock)
    mounts.make_noexec(plan.noexec)
    _drop_privileges(plan, sock)
    if policy.lock == "agent":
        _prepare_agent_init(plan)
        return
    if plan.landlock is not None:
        landlock.apply(plan.landlock)
    if filt is None:  # best_effort without user notification: the kernel acts alone
        filt = seccomp.build_filter(
            plan.rules,
            violation=seccomp.KERNEL_ACTIONS[policy.violation],
            self_pid=os.getpid(),
            never_action="kill",
        )
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=wire.BROKER_FD)
    listener = seccomp.install(filt, listener=plan.user_notif)
    if listener is None:
        wire.send(channel, {"id": 0, "op": "ready"})
    else:
        # The listener must not stay in the agent: whoever holds it answers for the filter.
        wire.send(channel, {"id": 0, "op": "listener"}, fd=listener)
        os.close(listener)
    channel.detach()


def _isolate_dns(plan: Plan, sock: socket.socket) -> None:
    """'dns' without 'inet': the agent's own network namespace and resolv.conf; the relay's
    socket goes to the parent before anything else is said."""
    if not plan.dns_relay:
        return
    import tempfile  # imported before the fork (see _run), so no file is read

    from sandbox import dnsrelay

    relay = dnsrelay.isolate_network()
    fd, path = tempfile.mkstemp(prefix="sandbox-resolv-", suffix=".conf")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(dnsrelay.RESOLV_CONF_TEXT)
        os.chmod(path, 0o644)
        mounts.bind_file(path, "/etc/resolv.conf")
    finally:
        os.unlink(path)  # the bind mount keeps the file; its name is not needed
    wire.send(sock, {"id": 0, "op": "dns-socket"}, fd=relay.fileno())
    relay.close()


def _place_channel(sock: socket.socket) -> None:
    fd = sock.detach()
    if fd != wire.BROKER_FD:
        os.dup2(fd, wire.BROKER_FD, inheritable=True)
        os.close(fd)
    else:
        os.set_inheritable(fd, True)
    hygiene.close_fds_from(wire.BROKER_FD + 1)


def _drop_privileges(plan: Plan, sock: socket.socket) -> None:
    """User, descriptors, no_new_privs, capabilities: the same for both lock modes."""
    if plan.policy.user is not None:
        hygiene.drop_bounding_set()  # while CAP_SETPCAP is still there
        hygiene.switch_user(plan.policy.user)
    _place_channel(sock)
    hygiene.set_no_new_privs()
    hygiene.drop_capabilities()


def _prepare_agent_init(plan: Plan) -> None:
    """lock: agent: the init bounds (init.pledge) if any, and the lock later, by the agent
    itself through sandbox.pledge, which hands the listener to the parent."""
    policy = plan.policy
    ll = plan.landlock
    if ll is not None and (ll.handled_net or ll.scopes):
        # TCP ports and scopes hold from the exec on, whatever the agent declares later; the
        # filesystem view is the agent's own to declare (within the policy) at its lock.
        landlock.apply(replace(ll, handled_fs=0, paths=()))
    if policy.init_pledge is not None:
        # A bound the kernel holds whatever the agent's init code does: no listener (the
        # agent's own lock brings it), exec allowed for the command itself.
        bound = [*rules_for(policy.init_pledge | {"unveil"}), *INIT_EXEC_RULES]
        filt = seccomp.build_filter(
            bound, violation="kill", self_pid=os.getpid(), never_action="kill"
        )
        seccomp.install(filt, listener=False)
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=wire.BROKER_FD)
    wire.send(channel, {"id": 0, "op": "ready"})
    channel.detach()
