"""The launcher: fork, let the child lock itself and exec, supervise the agent to its exit.

Parent                                  Child (sandbox.parent.child; launcher code only)
------                                  -----
load policy, compile plan, open log
build the filter, socketpair, fork ──►  pdeathsig, wait for "go"
cgroup add, start record, "go" ──────►  apply: fds, rlimits, noexec mounts, user,
                                        no_new_privs, capabilities, Landlock, seccomp
receive listener fd  ◄─────────────────  send the listener over the broker socket, close it
answer the exec with CONTINUE  ◄───────  execve(command)  (notified: exec is always routed)
event loop: notifications, broker requests, the reaper's status pipe (exit), timers, signals

The exec of the command itself therefore needs no 'exec' promise: it is the one call the
parent lets through before the program exists, and every later exec is decided by policy.

A `Launch` is one agent from its fork to its exit record, served by an EventLoop it does
not own: `run()` gives it a loop of its own; the agent system's dispatcher serves many.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from sandbox import wire
from sandbox.enforce import cgroup, seccomp
from sandbox.enforce.kernel import Features, probe
from sandbox.enforce.plan import (
    AGENT_PID_IN_NAMESPACE,
    Plan,
    check_enforceable,
    compile_plan,
    seccomp_rules,
)
from sandbox.errors import SetupError
from sandbox.parent import child, reaper
from sandbox.parent.audit import AuditError, AuditLog, record_error
from sandbox.parent.broker import Broker
from sandbox.parent.broker import Handler as BrokerHandler
from sandbox.parent.lockgate import LockGate
from sandbox.parent.loop import EventLoop, Failure, Timer
from sandbox.parent.notify import Supervisor
from sandbox.parent.ratelimit import RateLimiter
from sandbox.plain import plain
from sandbox.policy.model import Policy
from sandbox.protocol import Op

if TYPE_CHECKING:
    from sandbox.parent import denials, dnsrelay

VIOLATION_EXIT = 128 + signal.SIGSYS  # 159
HANDSHAKE_TIMEOUT = child.HANDSHAKE_TIMEOUT
# Signals to the launcher that ask the agent to stop: forwarded to the agent, which may exit
# cleanly (the launcher's status is then the agent's). If it has not exited STOP_GRACE
# seconds later, or a second one arrives, its whole tree is killed.
FORWARDED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
STOP_GRACE = 5.0  # seconds; SPEC section 9's default `shutdown` for the agent system
# A terminal sends SIGINT (^C), SIGQUIT (^\) and SIGHUP (hang-up) to its whole foreground
# process group, the agent included: those the launcher does not forward again.
FROM_TERMINAL = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
WATCHED_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)


@plain
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
    stop_grace: float = STOP_GRACE,
    trace_unveil: bool = False,
    plan: Plan | None = None,
    supervisor: Callable[..., Supervisor] = Supervisor,
) -> RunResult:
    """`sandbox run`: launch one agent and serve it until it exits. SIGTERM, SIGINT and
    SIGHUP to the launcher are forwarded to the agent (see Launch.stop), which has
    `stop_grace` seconds to exit. `trace_unveil`: the parent reads the path-taking calls
    to name what Landlock refuses (see sandbox.parent.denials).

    `plan` and `supervisor` are for `sandbox learn` (sandbox.tools.learn), which launches
    with a plan of its own and answers the notifications itself."""
    feats = probe() if feats is None else feats
    if plan is None:
        plan = compile_plan(policy, feats, environ, trace_unveil=trace_unveil)
        check_enforceable(plan)
    argv = list(command) if command else list(policy.command)
    path = resolve_command(argv, plan.env)
    try:
        audit = AuditLog(
            audit_path, policy.name, sync=policy.audit.sync, window=policy.audit.window
        )
    except (AuditError, OSError) as e:
        raise SetupError(f"audit log {audit_path}: {e}") from e
    with audit:
        loop = EventLoop()
        launch = Launch(plan, path, argv, audit, feats, supervisor=supervisor)
        results: list[RunResult] = []

        def finished(result: RunResult) -> None:
            results.append(result)
            loop.stop()

        def on_signals(got: set[int]) -> None:
            for sig in sorted(got & FORWARDED):
                if sig in FROM_TERMINAL and _terminal_reaches_agent():
                    continue  # the agent got it from the terminal itself
                launch.stop(sig, stop_grace)

        try:
            launch.start(loop, finished)
            loop.on_signals(WATCHED_SIGNALS, on_signals)
            loop.run()
        finally:
            launch.close()
            loop.close()
        return results[0]


class Launch:
    """One agent, from its fork to its exit record."""

    def __init__(
        self,
        plan: Plan,
        path: str,
        argv: list[str],
        audit: AuditLog,
        feats: Features,
        ops: Mapping[Op, BrokerHandler] | None = None,
        supervisor: Callable[..., Supervisor] = Supervisor,
    ) -> None:
        self.plan, self.path, self.argv, self.audit, self.feats = plan, path, argv, audit, feats
        self.ops = dict(ops or {})  # more broker operations (the dispatcher's message bus)
        self._supervisor = supervisor
        self.policy = plan.policy
        self.pid = 0
        self.reason = ""  # why the parent ended the agent, for the exit record
        self._cg: cgroup.Cgroup | None = None
        self._rp: reaper.Reaper | None = None
        self._sock: socket.socket | None = None
        self._sup: Supervisor | None = None
        self._broker: Broker | None = None
        self._relay: dnsrelay.DnsRelay | None = None
        self._reporter: denials.Reporter | None = None
        self._reader: denials.AuditReader | None = None
        self._gate: LockGate | None = None
        self._listener: int | None = None
        self._limiter: RateLimiter | None = None
        self._loop: EventLoop | None = None
        self._timers: list[Timer] = []
        self._exec_error: list[str] = []
        self._on_exit: Callable[[RunResult], None] = lambda _: None
        self._pidfd = -1  # the agent itself: signals reach it, never a recycled pid
        self._stopping: int | None = None  # the signal of a stop() in progress

    # ------------------------------------------------------------------ start

    def start(self, loop: EventLoop, on_exit: Callable[[RunResult], None]) -> int:
        """Fork the agent, let it lock and exec, and register it with `loop`; the agent's
        pid. `on_exit` gets the result once the agent has exited and it is recorded.
        SetupError if the agent could not be started (recorded where it had started)."""
        self._loop, self._on_exit = loop, on_exit
        plan = self.plan
        if plan.dns_relay or plan.own_netns:
            import tempfile  # noqa: F401  # the child needs both after the fork

            from sandbox.parent import dnsrelay  # noqa: F401
        self._cg = self._make_cgroup()
        # The child locks Landlock before it loads its seccomp filter: everything it needs
        # from disk (libseccomp, the modules it imports) must be loaded now, in the parent.
        # The filter is built here, before the fork (it names no pid), so the child only
        # loads it.
        bpf = b""
        if plan.user_notif and self.policy.lock == "exec":
            bpf = seccomp.program(
                plan.rules, violation="notify", self_pid=os.getpid(), never_action="notify"
            )
        elif plan.user_notif:
            # lock: agent: the agent compiles its filter at its own lock, after it may have
            # hidden the compiled-filter cache from itself (unveil() first): it then finds
            # only entries it read before, so the one for the policy's promises is made here.
            # Its rules name its own pid where it is known: 2 in its own pid namespace.
            rules = seccomp_rules(
                self.policy.pledge,
                self.policy.execpromises,
                resolve_unix=plan.resolve_unix,
                self_pid=AGENT_PID_IN_NAMESPACE if plan.pidns else None,
            )
            seccomp.warm(rules, "notify", "notify")
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = parent_sock

        def agent_main(expected_parent: int) -> NoReturn:
            parent_sock.close()
            child.main(plan, self.path, self.argv, child_sock, expected_parent, bpf)

        self._rp = reaper.start(agent_main, pidns=plan.pidns, userns=plan.userns)
        child_sock.close()
        self._begin()
        return self.pid

    def _make_cgroup(self) -> cgroup.Cgroup | None:
        plan = self.plan
        limited = plan.cgroup_memory is not None or plan.cgroup_processes is not None
        # A cgroup for the limits; without limits only to find stragglers, which the
        # reaper's pid namespace already ends (moving a process between v1 cgroups costs
        # ~4 ms a hierarchy).
        if not limited and self.plan.pidns:
            return None
        try:
            # The reaper lives in the cgroup too: one more process than the agent's tree.
            procs = None if plan.cgroup_processes is None else plan.cgroup_processes + 1
            return cgroup.create(
                self.policy.name,
                plan.cgroup_memory,
                procs,
                self.feats,
                tracking=not self.plan.pidns,
            )
        except SetupError:
            if limited:
                raise
            return None  # only used to find stragglers; the process group serves then

    def _begin(self) -> None:
        assert self._rp is not None and self._sock is not None and self._loop is not None
        rp, sock, plan, policy = self._rp, self._sock, self.plan, self.policy
        try:
            if self._cg is not None:
                self._cg.add(rp.pid)  # before the agent exists: everything it starts counts
            self.pid = rp.release()
            # The agent waits for "go": its pid cannot have been recycled yet.
            self._pidfd = os.pidfd_open(self.pid)
            self.audit.record(
                "start",
                pid=self.pid,
                policy=policy.source,
                policy_sha256=policy.sha256,
                command=[self.path, *self.argv[1:]],
                enforced=plan.enforced(),
                audit=self.audit.durability,  # the durability mode in force
            )
        except (OSError, AuditError, SetupError) as e:
            self.kill()
            rp.agent_status()
            raise SetupError(f"cannot start {policy.name}: {e}") from e
        self._open_denials()  # before the agent locks: no refusal is missed
        sock.send(b"go")
        assert self._loop is not None
        loop = self._loop
        self._limiter = RateLimiter(
            self.audit,
            self.pid,
            schedule=lambda when, fn: loop.call_at(when, fn, self._failed),
        )
        self._sup = self._supervisor(
            plan=plan,
            audit=self.audit,
            agent_pid=self.pid,
            kill_tree=self.kill,
            limiter=self._limiter,
        )
        self._sup.reporter = self._reporter
        self._sup.loop = self._loop
        try:
            self._listener, relay_fd = _handshake(sock, plan)
        except SetupError as e:
            self.kill()
            _record_exit(self.audit, self.pid, rp.agent_status(), str(e))
            raise
        self._sup.listener = self._listener if self._listener is not None else -1
        if relay_fd is not None:
            from sandbox.parent import dnsrelay  # only agents with 'dns' and no 'inet' need it

            inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 0, fileno=relay_fd)
            up = dnsrelay.upstream(os.environ)
            if up is None:
                inner.close()
            else:
                self._relay = dnsrelay.DnsRelay(inner, up, self.audit, self.pid)
        self._serve()

    def _open_denials(self) -> None:
        """The reporter of Landlock's refusals, and the audit records' reader if any."""
        plan = self.plan
        if not (plan.landlock_audit or plan.trace_unveil):
            return
        from sandbox.parent import denials

        self._reporter = denials.Reporter(
            name=self.policy.name,
            audit=self.audit,
            unveils=plan.unveils,
            agent_pid=self.pid,
            pledge=frozenset(self.policy.pledge),
        )
        if plan.landlock_audit:
            self._reader = denials.AuditReader.open(self._reporter)
        if self._reader is None:
            self._reporter.first_note = (
                f"Landlock's own audit records are not available "
                f"({self.feats.kernel_audit_refused or 'the audit socket could not be opened'}): "
                "what follows is the parent's reading of each call"
            )

    def _serve(self) -> None:
        """Register every descriptor of this agent with the loop, and its timers."""
        assert self._loop is not None and self._sock is not None and self._rp is not None
        assert self._sup is not None
        loop, sock, sup, policy = self._loop, self._sock, self._sup, self.policy
        sock.setblocking(False)
        broker = self._broker = Broker(
            sock, policy, self.audit, self.pid, os.environ, limiter=self._limiter
        )
        broker.register(Op.SETUP_ERROR, self._on_exec_error)
        for op, handler in self.ops.items():
            broker.register(op, handler)
        err = self._failed
        loop.add(self._rp.status_fd, self._on_status, err, "the agent's exit status")
        if self._reader is not None and self._reader.sock is not None:
            loop.add(self._reader.sock, self._reader.on_readable, err, "Landlock's audit records")
        if self._relay is not None:
            loop.add(self._relay.inner, self._relay.on_query, err, "the DNS relay (queries)")
            loop.add(self._relay.outer, self._relay.on_answer, err, "the DNS relay (answers)")
        loop.add(sock, self._on_broker, err, "the broker channel")
        if sup.listener >= 0:
            loop.add(sup.listener, self._on_listener, err, "the seccomp listener")
        if policy.limits.wall:
            self._timers.append(loop.call_at(_now() + policy.limits.wall, self._on_wall, err))
        # The lock gate serves both modes: under lock: agent the first lock hands over the
        # listener; under lock: exec the launcher locked already, and a pledge() the
        # program makes only narrows (recorded, and a kernel kill is then explained).
        gate = self._gate = LockGate(
            self.plan, self.audit, sup, self._take_listener, on_narrow=self._narrowed
        )
        broker.register(Op.LOCK, gate.handle)
        if policy.lock == "agent":
            if policy.init_pledge is not None:
                sup.kernel_kill_hint = (
                    "a call outside init.pledge (the kernel enforces that bound alone)"
                )
            sup.exec_done = True  # no launcher code runs after the exec in this mode
            gate.timer = loop.call_at(_now() + policy.init_timeout, self._on_init_timeout, err)
            self._timers.append(gate.timer)
        else:
            gate.locked = True

    @property
    def broker(self) -> Broker | None:
        """The agent's broker channel once it is served (for deferred replies)."""
        return self._broker

    # ------------------------------------------------------------------ handlers

    def _on_listener(self) -> None:
        assert self._sup is not None and self._loop is not None
        if not self._sup.on_listener_readable():
            self._loop.remove(self._sup.listener)

    def _take_listener(self, fd: int) -> None:
        """The agent's first lock handed over its listener (lock: agent)."""
        assert self._sup is not None and self._loop is not None
        self._listener = fd
        self._sup.listener = fd
        self._loop.add(fd, self._on_listener, self._failed, "the seccomp listener")

    def _narrowed(self, policy: Policy) -> None:
        """A lock narrowed the policy: the broker grants only the declared capabilities."""
        if self._broker is not None:
            self._broker.policy = policy

    def _failed(self, failure: Failure) -> None:
        """A handler of this agent raised (the loop caught it): record it; if the loop gave
        up on a descriptor, this agent can no longer be served, so it is ended."""
        limiter = self._limiter
        if failure.removed or limiter is None or limiter.admit(f"error {failure.where}"):
            record_error(self.audit, self.pid, failure.where, failure.error)
        if failure.removed:
            self.terminate(f"the parent can no longer serve {failure.where}", say=True)

    def _on_broker(self) -> None:
        assert self._broker is not None and self._loop is not None and self._sock is not None
        if not self._broker.on_readable():
            self._loop.remove(self._sock)

    def _on_exec_error(
        self, request: dict[str, Any], fd: int | None
    ) -> tuple[dict[str, Any], None]:
        # The child's exec failed after the lock (e.g. the program is not unveiled 'x').
        # Anything can send this op, so it is printed once, escaped, and changes nothing.
        if fd is not None:
            os.close(fd)
        if not self._exec_error and self.policy.lock != "agent":
            message = str(request.get("message", ""))[:500].encode("unicode_escape").decode()
            self._exec_error.append(message)
            print(f"sandbox: {self.policy.name}[{self.pid}]: {message}", file=sys.stderr)
        return {}, None

    def _on_wall(self) -> None:
        assert self.policy.limits.wall is not None
        self.terminate(f"wall-clock limit of {self.policy.limits.wall:g}s reached", say=True)

    def _on_init_timeout(self) -> None:
        assert self._sup is not None
        if self._gate is not None and self._gate.locked:
            return
        reason = f"did not lock within init.timeout of {self.policy.init_timeout:g}s"
        with contextlib.suppress(AuditError):
            self.audit.record(
                "lock", pid=self.pid, pledge=None, unveil=None, decision="deny", reason=reason
            )
        self.reason = reason
        print(f"sandbox: {self.policy.name}[{self.pid}]: {reason}", file=sys.stderr)
        self._sup.killed_for_violation = True
        self.kill()

    def _on_status(self) -> None:
        assert self._rp is not None and self._loop is not None
        status = self._rp.agent_status()
        # The agent is done: nothing it started may outlive it.
        self.kill()
        self._loop.remove(self._rp.status_fd)
        for t in self._timers:
            t.cancel()
        if self._reader is not None:
            # The refusals still queued in the kernel go before the exit record.
            if self._reader.sock is not None:
                self._loop.remove(self._reader.sock)
            self._reader.finish()
        self._on_exit(self._finish(status))

    # ------------------------------------------------------------------ ending

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> None:
        """Ask the agent to stop with `sig` (it may exit cleanly; its status is then the
        launch's); kill its whole tree if it has not exited within `grace` seconds, or at
        once when asked a second time. The wall-clock limit holds meanwhile."""
        if self._loop is None or not self.pid:
            return
        name = signal.Signals(sig).name
        if self._stopping is not None:
            first = signal.Signals(self._stopping).name
            self.terminate(f"{name} after {first}: killed without waiting", say=True)
            return
        self._stopping = sig
        self.reason = f"{name} to the launcher, forwarded to the agent"
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except OSError:
            return  # it has exited already; its status is on its way
        self._timers.append(
            self._loop.call_at(
                _now() + grace,
                lambda: self.terminate(
                    f"did not exit within {grace:g}s of {name}: killed", say=True
                ),
            )
        )

    def terminate(self, reason: str, *, say: bool = False) -> None:
        """End the agent's whole tree for `reason` (recorded in its exit record)."""
        self.reason = reason
        if say:
            print(f"sandbox: {self.policy.name}[{self.pid}]: {reason}", file=sys.stderr)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the agent's whole tree (cgroup, then the reaper's pid namespace)."""
        if self._cg is not None:
            self._cg.kill_all()
        if self._rp is not None:
            self._rp.kill()

    def _finish(self, status: int) -> RunResult:
        assert self._sup is not None
        plan, pid, sup, cg = self.plan, self.pid, self._sup, self._cg
        reason = self.reason
        if not reason and cg is not None and plan.cgroup_memory is not None and cg.memory_events():
            reason = f"memory limit of {plan.cgroup_memory} bytes reached"
            print(f"sandbox: {self.policy.name}[{pid}]: {reason}", file=sys.stderr)
        sup.flush()  # the counts of refusals not recorded whole come before the exit
        kernel_kill = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
        if not (kernel_kill and not reason):
            _record_exit(self.audit, pid, status, reason)
        if sup.killed_for_violation:
            return RunResult(VIOLATION_EXIT, pid, "violation")
        if (
            os.WIFEXITED(status)
            and os.WEXITSTATUS(status) != 0
            and self._reporter is None
            and sys.stderr.isatty()
        ):
            # A failure may be a path Landlock refused, which nobody reports here: say so to
            # the person at the terminal (a script gets the agent's stderr and status only).
            print(
                f"sandbox: {self.policy.name}[{pid}]: exited with status "
                f"{os.WEXITSTATUS(status)}; paths Landlock refused are not reported here "
                f"({self.feats.kernel_audit_refused}); `sandbox run --trace-unveil` names them",
                file=sys.stderr,
            )
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGSYS and not reason:
                reason = f"killed by the kernel (SIGSYS): {sup.kernel_kill_hint}"
                print(f"sandbox: {self.policy.name}[{pid}]: {reason}", file=sys.stderr)
                _record_exit(self.audit, pid, status, reason)
            return RunResult(128 + sig, pid, reason)
        return RunResult(os.waitstatus_to_exitcode(status), pid, reason)

    def close(self) -> None:
        """Release everything this launch holds (the tree is killed first)."""
        if self._loop is not None:  # a shared loop (the dispatcher) outlives this launch
            for fd in (self._sock, self._listener, self._rp.status_fd if self._rp else None):
                if fd is not None:
                    self._loop.remove(fd)
            if self._relay is not None:
                self._loop.remove(self._relay.inner)
                self._loop.remove(self._relay.outer)
            if self._reader is not None and self._reader.sock is not None:
                self._loop.remove(self._reader.sock)
        if self._rp is not None:
            self._rp.kill()
            self._rp.close()
        if self._sup is not None:
            self._sup.close()
        if self._cg is not None:
            self._cg.remove()
        if self._relay is not None:
            self._relay.close()
        if self._reader is not None:
            self._reader.close()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                os.close(self._listener)
            self._listener = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self._broker is not None:
            self._broker.close()
        elif self._sock is not None:
            self._sock.close()


def _now() -> float:
    import time

    return time.monotonic()


# Set by a warm launch (sandbox.serve.launch): its terminal is its client's, in another
# session, so it cannot ask it; the client tells. None: ask the terminal.
terminal_foreground: bool | None = None


def _terminal_reaches_agent() -> bool:
    """Whether the launcher's process group (which the agent shares) is the foreground
    group of its controlling terminal: then a terminal's ^C or hang-up reached the agent
    directly, and forwarding it would deliver it twice. A SIGINT sent with kill(1) to the
    launcher alone while it runs in the foreground is then not forwarded either (the
    launcher cannot tell the two apart without siginfo)."""
    if terminal_foreground is not None:
        return terminal_foreground
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def _handshake(sock: socket.socket, plan: Plan) -> tuple[int | None, int | None]:
    """Wait for the child's listener fd (or its setup error) before anything else; with a
    DNS relay, the relay's socket comes first. Returns (listener, relay socket)."""
    relay: int | None = None
    try:
        msg, fd = _handshake_message(sock)
        if msg.get("op") == Op.DNS_SOCKET and plan.dns_relay and fd is not None:
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
    if op == Op.SETUP_ERROR:
        if fd is not None:
            os.close(fd)
        raise SetupError(str(msg.get("message", "unknown error")))
    if op == Op.LISTENER and plan.user_notif and fd is not None:
        return fd
    if op == Op.READY and (not plan.user_notif or plan.policy.lock == "agent"):
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
