"""The dispatcher of `sandbox up`: the parent of every agent of a system (SPEC section 9).

One process, one EventLoop (sandbox.parent.loop). Every agent is a Launch
(sandbox.parent.launcher) registered with that loop: the same enforcement, broker and
audit records as `sandbox run`, plus four broker operations, the message bus:

    agent ── send ──► dispatcher: parse, capability NAME:send, stamp `from`, id, time
                      append to state/messages.jsonl ─┐ (group commit: one fdatasync a turn)
    agent ◄── ok ───  after the commit ◄──────────────┘
    agent ── recv ──► the agent's own inbox (a projection of the log); waits if empty
    agent ── ack ───► an `ack` record; the message leaves the inbox
    agent ── reply ─► to the sender of the message it answers, once, no capability

It never runs agent code and trusts no byte from an agent: every request is parsed by
sandbox.system.message, refusals become error replies and audit records. Supervision
decisions come from sandbox.system.supervisor; the dispatcher carries them out as a
queue of steps (stop in reverse order, SIGTERM then SIGKILL after `shutdown`; start in
order). The launcher's handshake with a starting child stays synchronous: it waits only
for the launcher's own code in the child (set-up before exec, milliseconds), never for
agent code, so it cannot be used by an agent to stall the others.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import signal
import socket
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.enforce.kernel import Features, probe
from sandbox.enforce.plan import check_enforceable, compile_plan
from sandbox.errors import PolicyError, SandboxError, SetupError
from sandbox.parent import audit as auditlib
from sandbox.parent.audit import AuditError, AuditLog, record_error
from sandbox.parent.broker import Reply, error_reply
from sandbox.parent.launcher import Launch, RunResult, resolve_command
from sandbox.parent.loop import EventLoop, Failure, Timer, print_failure
from sandbox.plain import replace
from sandbox.policy.loader import load_policy
from sandbox.protocol import Op
from sandbox.system import control, message, msglog, supervisor
from sandbox.system.model import QOS_RANK, AgentSpec, System

MAX_RECV_BATCH = 256  # messages in one recv reply
RECV_FRAME_BUDGET = 56 * 1024  # bytes of messages in one recv reply (a frame is 64 KiB)
MAX_ACK_IDS = 4096
MAX_SEND_BATCH = 256  # messages in one send request (send_many)
MAX_OPEN_REQUESTS = 100_000  # requests remembered for their reply; the oldest go first
MAX_RECV_TIMEOUT = 3600.0
MAX_CONTROL_CLIENTS = 64
RECV_FIELDS = frozenset({"id", "op", "max", "timeout"})
AUDIT_KINDS = {**auditlib.REQUIRED, "system": (("event",),)}


class SystemFailed(SandboxError):
    """The root supervisor gave up (or the system could not start)."""

    exit_status = 1


@dataclass(eq=False)
class Entry:
    """A message in an inbox: sent, in the log, not yet acknowledged by its owner."""

    msg: dict[str, Any]
    size: int
    deliveries: int = 0  # to instances of the agent; > 0 makes the next one `redelivered`


@dataclass(eq=False)
class Instance:
    """One process of an agent (several while it is reloaded)."""

    agent: AgentRun
    launch: Launch
    pid: int = 0
    inflight: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    waiting: tuple[int, int, Timer | None] | None = None  # recv: (request id, max, timer)
    draining: bool = False  # reloaded: gets nothing new, stops once its inflight is done
    stopping: bool = False


@dataclass(eq=False)
class Blocked:
    """A send waiting for room in a full inbox (backpressure, never loss)."""

    post: Callable[[], None]
    fail: Callable[[str], None]
    timer: Timer | None = None
    done: bool = False


@dataclass(eq=False)
class AgentRun:
    spec: AgentSpec
    state: str = "stopped"
    restarts: int = 0
    pending: deque[Entry] = field(default_factory=deque)
    staged: int = 0  # appended to the log, not yet committed
    current: Instance | None = None
    old: list[Instance] = field(default_factory=list)
    blocked: deque[Blocked] = field(default_factory=deque)
    started_at: float = 0.0
    exited_at: float = 0.0  # of its last unrequested exit, for the crash-to-ready time
    ready_ms: float | None = None  # last exit -> next instance ready (handshake done)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def depth(self) -> int:
        inflight = sum(len(i.inflight) for i in [*self.old, self.current] if i is not None)
        return len(self.pending) + inflight + self.staged

    @property
    def rank(self) -> int:
        return QOS_RANK.get(self.spec.qos, 2)


@dataclass(eq=False)
class _Staged:
    entry: Entry
    target: AgentRun | None  # None: to the transport (a user)
    done: Callable[[str | None, str | None], None]  # (message id, error)


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    uid: int
    buf: bytes = b""
    waiting_for: str | None = None  # message id whose reply it waits for (send --wait)
    timer: Timer | None = None


def _say(text: str) -> None:
    print(f"sandbox up: {text}", flush=True)


class Dispatcher:
    def __init__(self, system: System, feats: Features | None = None) -> None:
        self.system = system
        self.feats = probe() if feats is None else feats
        self.loop = EventLoop(on_error=self._on_loop_error)
        self.clock = message.IdClock()
        self.agents = {name: AgentRun(spec) for name, spec in system.agents.items()}
        self.tree = supervisor.build(system.tree)
        self.parents = supervisor.parents(self.tree)
        self.requests: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.steps: deque[tuple[str, str]] = deque()
        self.staged: list[_Staged] = []
        self.flush_timer: Timer | None = None
        self.clients: dict[int, _Client] = {}
        self.waiters: dict[str, _Client] = {}  # user message id -> client waiting for its reply
        self.exit_status: int | None = None
        self.exit_message = ""
        self.shutting_down = False
        self.audit: AuditLog | None = None
        self.msglog: AuditLog | None = None
        self.listener: socket.socket | None = None
        self._lock_fd = -1

    # ================================================================== life cycle

    def run(self) -> int:
        """`sandbox up`: start everything, serve until `down` or the root gives up."""
        self._open_state()
        assert self.audit is not None
        try:
            self._resume()
            self.audit.record(
                "system",
                event="up",
                system=self.system.source,
                system_sha256=self.system.sha256,
                pid=os.getpid(),
            )
            os.chdir(self.system.base_dir)  # SPEC 9: each agent runs in that directory
            self.listener = control.listen(self.system.control_socket)
            self.loop.add(self.listener, self._on_accept)
            self.loop.on_signals(
                (signal.SIGINT, signal.SIGTERM, signal.SIGHUP), lambda _s: self.shutdown("signal")
            )
            _say(f"system {self.system.name} ({self.system.source}), state {self.system.state_dir}")
            for name in self.tree.agents():
                self.steps.append(("start", name))
            self._advance()
            while self.exit_status is None:
                try:
                    self.loop.run()
                except Exception as e:  # a bug of ours must not end every agent's parent
                    import traceback

                    _say(f"internal error: {type(e).__name__}: {e}")
                    self._system_record("internal-error", reason=traceback.format_exc()[-2000:])
        finally:
            self._close()
        if self.exit_message:
            print(f"sandbox up: {self.exit_message}", file=sys.stderr, flush=True)
        return self.exit_status or 0

    def _open_state(self) -> None:
        state = self.system.state_dir
        try:
            os.makedirs(state, mode=0o700, exist_ok=True)
            st = os.stat(state, follow_symlinks=False)
        except OSError as e:
            raise SetupError(f"state directory {state}: {e.strerror}") from e
        if st.st_uid != os.geteuid():
            raise SetupError(f"state directory {state} belongs to uid {st.st_uid}, not to you")
        if st.st_mode & 0o077:
            raise SetupError(
                f"state directory {state} is mode {st.st_mode & 0o777:o}; it must be 0700 "
                f"(chmod 700 {state})"
            )
        import fcntl

        self._lock_fd = os.open(
            f"{state}/dispatcher.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SetupError(f"a dispatcher is already running for {state} (pid {other})") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        for path in (self.system.audit_log, self.system.message_log):
            cut = recover_tail(path)
            if cut:
                _say(f"{path}: dropped {cut} bytes of a record cut short by a crash")
        try:
            durability = self.system.audit
            self.audit = AuditLog(
                self.system.audit_log,
                "dispatcher",
                kinds=AUDIT_KINDS,
                sync=durability.sync,
                window=durability.window,
            )
            self.msglog = msglog.open_log(self.system.message_log)
        except AuditError as e:
            raise SetupError(str(e)) from e

    def _resume(self) -> None:
        """Rebuild every inbox from the log: what was sent and not acknowledged."""
        proj = msglog.fold(self.system.message_log, conversations=False)
        if proj.last_id is not None:
            self.clock.advance_past(proj.last_id)
        resumed = 0
        for name, box in proj.inbox.items():
            run = self.agents.get(name)
            if run is None:
                continue
            for msg in box.values():
                size = len(json.dumps(msg, separators=(",", ":")))
                run.pending.append(Entry(msg, size, deliveries=1))  # may have been delivered
                resumed += 1
        for ident, msg in proj.requests.items():
            self.requests[ident] = msg
        while len(self.requests) > MAX_OPEN_REQUESTS:
            self.requests.popitem(last=False)
        for name, life in proj.agents.items():
            if name in self.agents and isinstance(life.get("restarts"), int):
                self.agents[name].restarts = life["restarts"]
        if resumed:
            _say(f"resumed {resumed} unacknowledged messages from {self.system.message_log}")

    def _close(self) -> None:
        for run in self.agents.values():
            for inst in [*run.old, run.current]:
                if inst is not None:
                    inst.launch.kill()
                    inst.launch.close()
        if self.listener is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.system.control_socket)
            self.listener.close()
        for client in list(self.clients.values()):
            client.sock.close()
        for log in (self.msglog, self.audit):
            if log is not None:
                with contextlib.suppress(AuditError):
                    log.close()
        self.loop.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)

    def shutdown(self, why: str, status: int = 0, message_: str = "") -> None:
        """Stop every agent in reverse start order, then end `up` with `status`."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.exit_message = message_
        self._system_record("down", reason=why)
        _say(f"shutting down ({why})")
        self.steps.clear()
        for name in reversed(list(self.tree.agents())):
            self.steps.append(("stop", name))
        self.steps.append(("exit", str(status)))
        # Whatever happens, `up` ends: each agent gets its shutdown, then SIGKILL.
        grace = sum(a.spec.shutdown for a in self.agents.values()) + 10.0
        self.loop.call_at(time.monotonic() + grace, lambda: self._force_exit(status))
        self._advance()

    def _force_exit(self, status: int) -> None:
        if self.exit_status is None:
            _say("shutdown took too long: every remaining agent is killed")
            self.exit_status = status or 1
            self.loop.stop()

    # ================================================================== records

    def _on_loop_error(self, failure: Failure) -> None:
        """A handler of ours failed (the loop went on): say it and record it."""
        print_failure(failure)
        if self.audit is not None:
            record_error(self.audit, os.getpid(), failure.where, failure.error)

    def _system_record(self, event: str, agent: str = "dispatcher", **fields: Any) -> None:
        if self.audit is None:
            return
        with contextlib.suppress(AuditError, ValueError):
            self.audit.append("system", agent=agent, event=event, **fields)
            self.audit.commit()

    def _state(self, run: AgentRun, state: str, pid: int | None = None) -> None:
        run.state = state
        if state not in ("running", "stopping"):
            pid = None  # as ps shows it: a pid only while a process is the agent
        if self.msglog is not None:
            with contextlib.suppress(AuditError, ValueError):
                self.msglog.append(
                    "agent", agent=run.name, state=state, pid=pid, restarts=run.restarts
                )
                self._schedule_flush()

    def _refuse(self, inst: Instance | None, op: str, target: str, reason: str) -> None:
        """An audit record for a refused message operation (committed with the turn); an
        agent's refusals go through its rate limiter (a flood is counted, not each kept)."""
        if self.audit is None:
            return
        broker = inst.launch.broker if inst is not None else None
        key = f"bus {op} {target if target in self.agents else '?'}"  # our words only
        if broker is not None and not broker.limiter.admit(key):
            return
        with contextlib.suppress(AuditError, ValueError):
            self.audit.append(
                "op",
                agent=inst.agent.name if inst else "dispatcher",
                pid=inst.pid if inst else os.getpid(),
                op=op,
                resource=target[:256],
                path="",
                decision="deny",
                reason=reason[:1024],
            )
            self._schedule_flush()

    # ================================================================== steps

    def _advance(self) -> None:
        """Carry out queued steps until one has to wait for an agent to exit."""
        while self.steps:
            action, name = self.steps[0]
            if action == "exit":
                self.steps.clear()
                self.exit_status = int(name)
                self.loop.stop()
                return
            run = self.agents[name]
            if action == "stop":
                live = [i for i in [run.current, *run.old] if i is not None]
                if live:
                    for inst in live:
                        self._signal_stop(inst)
                    return  # _on_exit continues
                if run.state not in ("stopped", "failed", "exited"):
                    self._state(run, "stopped")
                self.steps.popleft()
            else:  # start
                self.steps.popleft()
                if run.current is None and not self.shutting_down:
                    self._start(run)
                    if self.exit_status is not None:
                        return

    def _signal_stop(self, inst: Instance) -> None:
        if inst.stopping:
            return
        inst.stopping = True
        run = inst.agent
        if run.current is inst:
            self._state(run, "stopping", inst.pid)
        # SIGTERM through the agent's pidfd; its whole tree is killed after `shutdown`.
        inst.launch.stop(signal.SIGTERM, run.spec.shutdown)
        inst.launch.reason = "stopped by the dispatcher (SIGTERM)"

    def _start(self, run: AgentRun, spec: AgentSpec | None = None) -> Instance | None:
        spec = spec or run.spec
        self._state(run, "starting")
        try:
            plan = compile_plan(spec.policy, self.feats, os.environ)
            check_enforceable(plan)
            argv = list(spec.policy.command)
            path = resolve_command(argv, plan.env)
            assert self.audit is not None
            inst_box: list[Instance] = []
            launch = Launch(
                plan, path, argv, self.audit.view(run.name), self.feats, ops=self._ops(inst_box)
            )
            inst = Instance(run, launch)
            inst_box.append(inst)
            inst.pid = launch.start(self.loop, lambda result: self._on_exit(inst, result))
        except (SetupError, OSError) as e:
            why = str(e)
            _say(f"{run.name}: cannot start: {why}")
            self._state(run, "failed")
            self._system_record("start-failed", agent=run.name, reason=why)
            if run.started_at == 0.0:
                # At `up`, a child that cannot start fails the system (as OTP's start_link).
                self.shutdown("start failed", 1, f"{run.name} could not start: {why}")
            else:
                self._crashed(run, normal=False, how=f"start failed: {why}")
            return None
        broker = launch.broker
        if broker is not None:
            self.loop.set_priority(broker.fileno(), run.rank)
        run.started_at = time.monotonic()
        if run.exited_at:
            run.ready_ms = (run.started_at - run.exited_at) * 1000
            run.exited_at = 0.0
        if spec is not run.spec:
            run.spec = spec
        run.current = inst
        self._state(run, "running", inst.pid)
        _say(f"{run.name}[{inst.pid}] started (qos {spec.qos}, restarts {run.restarts})")
        self._deliver(run)
        return inst

    # ================================================================== exits

    def _on_exit(self, inst: Instance, result: RunResult) -> None:
        run = inst.agent
        if inst.waiting is not None and inst.waiting[2] is not None:
            inst.waiting[2].cancel()
        inst.waiting = None
        broker = inst.launch.broker
        if broker is not None:
            # What it wrote before it died is still in the channel: its last acks count.
            for _ in range(64):
                if not broker.on_readable():
                    break
        inst.waiting = None
        inst.launch.close()
        # What it had not acknowledged goes back to the front of the inbox, in order.
        for entry in reversed(list(inst.inflight.values())):
            run.pending.appendleft(entry)
        inst.inflight.clear()
        status = result.status
        how = result.reason or (f"status {status}" if status < 128 else f"signal {status - 128}")
        if status == 159:
            how = "killed for a violation"
        _say(f"{run.name}[{inst.pid}] exited ({how})")
        if inst in run.old:
            run.old.remove(inst)
            self._advance()
            return
        run.current = None
        if inst.stopping:
            self._state(run, "stopped", inst.pid)
            self._advance()
            return
        if self.shutting_down:
            self._state(run, "stopped", inst.pid)
            self._advance()
            return
        self._crashed(run, normal=status == 0, how=how)
        self._advance()

    def _crashed(self, run: AgentRun, normal: bool, how: str) -> None:
        """An exit nobody asked for: the supervisor decides."""
        run.exited_at = time.monotonic()
        decision = supervisor.decide(
            self.tree, self.system.agents, run.name, normal, time.monotonic()
        )
        if not decision.start and not decision.stop:
            self._state(run, "exited")
            self._system_record(
                "not-restarted", agent=run.name, restart=run.spec.restart, reason=how
            )
            _say(f"{run.name}: not restarted ({run.spec.restart}, {how})")
            return
        self._state(run, "exited")
        for sup, why in decision.gave_up:
            _say(f"supervisor {sup} gives up: {why}")
            self._system_record("give-up", supervisor=sup, reason=why)
        if decision.root_failed:
            why = decision.gave_up[-1][1] if decision.gave_up else how
            for name in decision.stop:
                self.agents[name].state = "failed"
            self.shutdown(
                "root supervisor gave up",
                1,
                f"the root supervisor gave up ({why}) after {run.name} exited ({how}); "
                "the system stops",
            )
            return
        for name in decision.stop:
            self.steps.append(("stop", name))
        for name in decision.start:
            target = self.agents[name]
            target.restarts += 1
            self._system_record(
                "restart", agent=name, after=run.name, reason=how, restarts=target.restarts
            )
            self.steps.append(("start", name))
        if decision.start:
            _say(f"restarting {' '.join(decision.start)} (after {run.name}: {how})")

    # ================================================================== bus operations

    def _ops(
        self, box: list[Instance]
    ) -> dict[Op, Callable[[dict[str, Any], int | None], Reply | None]]:
        def bind(
            fn: Callable[[Instance, dict[str, Any]], Reply | None],
        ) -> Callable[[dict[str, Any], int | None], Reply | None]:
            def handler(request: dict[str, Any], fd: int | None) -> Reply | None:
                if fd is not None:
                    os.close(fd)
                return fn(box[0], request)

            return handler

        return {
            Op.SEND: bind(self._on_send),
            Op.RECV: bind(self._on_recv),
            Op.ACK: bind(self._on_ack),
            Op.REPLY: bind(self._on_reply),
        }

    def _reply(self, inst: Instance, reply: dict[str, Any]) -> None:
        broker = inst.launch.broker
        if broker is not None:
            broker.reply(reply)

    def _on_send(self, inst: Instance, request: dict[str, Any]) -> Reply | None:
        """One message, or a `batch` of up to MAX_SEND_BATCH (send_many): each is checked,
        logged and queued on its own; the reply goes once every one is durable or failed."""
        ident = request["id"]
        batch = request.get("batch")
        if batch is None:
            items: list[Any] = [request]
        elif (
            isinstance(batch, list)
            and 0 < len(batch) <= MAX_SEND_BATCH
            and set(request)
            == {
                "id",
                "op",
                "batch",
            }
        ):
            items = batch
        else:
            why = f"batch must be a list of 1 to {MAX_SEND_BATCH} messages, and alone"
            self._refuse(inst, "send", "", f"malformed message: {why}")
            self._fail(inst, ident, f"malformed message: {why}")
            return None
        results: list[dict[str, Any] | None] = [None] * len(items)
        left = [len(items)]

        def finish(i: int, result: dict[str, Any]) -> None:
            results[i] = result
            left[0] -= 1
            if left[0]:
                return
            if batch is None:
                self._reply(inst, {"id": ident, **result})
            else:
                self._reply(inst, {"id": ident, "ok": True, "results": results})

        for i, item in enumerate(items):
            self._send_one(inst, item, functools.partial(finish, i))
        return None

    def _send_one(
        self, inst: Instance, item: Any, finish: Callable[[dict[str, Any]], None]
    ) -> None:
        def fail(why: str, name: str) -> None:
            finish({"ok": False, "error": name, "message": why})

        if not isinstance(item, dict):
            self._refuse(inst, "send", "", "malformed message: not an object")
            fail("malformed message: a message is a JSON object", "ValueError")
            return
        try:
            fields = message.parse_send(item)
        except message.MessageError as e:
            what = "forged message" if e.forged else "malformed message"
            self._refuse(inst, "send", str(item.get("to", ""))[:64], f"{what}: {e}")
            fail(f"{what}: {e}", "PermissionError" if e.forged else "ValueError")
            return
        to = fields["to"]
        target = self.agents.get(to)
        if (to, "send") not in inst.agent.spec.policy.capabilities or target is None:
            why = f"{to}:send is not promised" if target is not None else f"no agent {to!r}"
            self._refuse(inst, "send", to, why)
            fail(why, "PermissionError")
            return

        def done(mid: str | None, error: str | None) -> None:
            if error is None:
                finish({"ok": True, "message_id": mid})
            else:
                fail(error, "TimeoutError" if "full" in error else "OSError")

        self._post({"agent": inst.agent.name}, target, fields, done)

    def _on_reply(self, inst: Instance, request: dict[str, Any]) -> Reply | None:
        ident = request["id"]
        name = inst.agent.name
        try:
            fields = message.parse_reply(request)
        except message.MessageError as e:
            what = "forged reply" if e.forged else "malformed reply"
            self._refuse(inst, "reply", "", f"{what}: {e}")
            self._fail(inst, ident, f"{what}: {e}", "PermissionError" if e.forged else "ValueError")
            return None
        original = self.requests.get(fields["reply_to"])
        if original is None or original.get("to") != name:
            why = (
                f"message {fields['reply_to']} is not a request to {name} awaiting a reply "
                "(a reply goes once, to the sender of a request this agent received)"
            )
            self._refuse(inst, "reply", fields["reply_to"], why)
            self._fail(inst, ident, why, "PermissionError")
            return None
        del self.requests[fields["reply_to"]]  # once
        sender = original.get("from") or {}
        target = self.agents.get(str(sender.get("agent"))) if "agent" in sender else None
        fields["to"] = target.name if target is not None else "transport"
        fields["conversation_id"] = original.get("conversation_id")

        def done(mid: str | None, error: str | None) -> None:
            if error is None:
                self._reply(inst, {"id": ident, "ok": True, "message_id": mid})
            else:
                self._reply(inst, error_reply(ident, error, "OSError"))

        self._post({"agent": name}, target, fields, done)
        return None

    def _on_recv(self, inst: Instance, request: dict[str, Any]) -> Reply | None:
        ident = request["id"]
        extra = sorted(set(request) - RECV_FIELDS)
        if extra:  # no field names another inbox: an agent reads its own, and only that
            why = f"recv reads only the caller's own inbox (field {extra[0][:64]!r} refused)"
            self._refuse(inst, "recv", str(request.get(extra[0], ""))[:64], why)
            self._fail(inst, ident, why, "PermissionError")
            return None
        limit = request.get("max", 64)
        timeout = request.get("timeout", 0)
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= MAX_RECV_BATCH
        ):
            self._fail(inst, ident, f"max must be a whole number from 1 to {MAX_RECV_BATCH}")
            return None
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 <= timeout <= MAX_RECV_TIMEOUT
        ):
            self._fail(inst, ident, f"timeout must be from 0 to {MAX_RECV_TIMEOUT:g} seconds")
            return None
        if inst.waiting is not None:
            self._fail(inst, ident, "a recv is already waiting on this channel")
            return None
        run = inst.agent
        idle = inst.draining or run.current is not inst or not run.pending
        if idle and (timeout == 0 or inst.draining):
            return {"messages": []}, None
        timer = None
        if timeout:
            timer = self.loop.call_at(
                time.monotonic() + timeout, lambda: self._recv_timeout(inst, ident)
            )
        inst.waiting = (ident, limit, timer)
        if run.pending and run.current is inst:
            if self.staged or self.flush_timer is not None:
                self._schedule_flush()  # after this turn's commit
            else:
                self._deliver(run)
        return None

    def _recv_timeout(self, inst: Instance, ident: int) -> None:
        if inst.waiting is not None and inst.waiting[0] == ident:
            inst.waiting = None
            self._reply(inst, {"id": ident, "ok": True, "messages": []})

    def _on_ack(self, inst: Instance, request: dict[str, Any]) -> Reply | None:
        ids = request.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_ACK_IDS:
            self._refuse(
                inst, "ack", "", f"ids must be a list of at most {MAX_ACK_IDS} message ids"
            )
            return None  # acks get no reply
        acked = [i for i in ids if isinstance(i, str) and inst.inflight.pop(i, None) is not None]
        if len(acked) != len(ids):
            self._refuse(
                inst, "ack", "", f"{len(ids) - len(acked)} ids were not delivered to this instance"
            )
        if acked and self.msglog is not None:
            with contextlib.suppress(AuditError, ValueError):
                self.msglog.append("ack", agent=inst.agent.name, ids=acked, pid=inst.pid)
            self._schedule_flush()
            self._unblock(inst.agent)
        if inst.draining and not inst.inflight:
            self._signal_stop(inst)
        return None

    def _fail(self, inst: Instance, ident: int, why: str, name: str = "ValueError") -> None:
        """An error reply, sent now (ahead of later replies of the same batch, in order)."""
        self._reply(inst, error_reply(ident, why, name))

    # ================================================================== posting

    def _post(
        self,
        sender: dict[str, Any],
        target: AgentRun | None,
        fields: dict[str, Any],
        done: Callable[[str | None, str | None], None],
    ) -> None:
        """Append a message to the log (committed this turn) and queue it for `target`; a
        full inbox makes the send wait for room (up to send_timeout), then fail."""

        def post() -> None:
            try:
                msg, size = message.build(
                    self.clock.next(),
                    sender,
                    fields["to"],
                    fields["type"],
                    fields["payload"],
                    fields.get("conversation_id"),
                    fields.get("reply_to"),
                )
            except message.MessageError as e:
                self._refuse(None, "send", fields["to"], f"oversized message from {sender}: {e}")
                done(None, f"oversized message: {e}")
                return
            if self.msglog is None or self.msglog.broken:
                done(None, "the message log is unavailable; nothing is sent")
                return
            try:
                self.msglog.append("msg", agent=message.sender_name(msg), message=msg)
            except (AuditError, ValueError) as e:
                done(None, f"cannot record the message: {e}")
                return
            if msg["type"] == "request":
                self.requests[msg["id"]] = msg
                if len(self.requests) > MAX_OPEN_REQUESTS:
                    self.requests.popitem(last=False)
            if target is not None:
                target.staged += 1
            self.staged.append(_Staged(Entry(msg, size), target, done))
            self._schedule_flush()

        if target is None or (target.depth < target.spec.inbox and not target.blocked):
            post()
            return
        blocked = Blocked(post, lambda why: done(None, why))
        wait = self.system.send_timeout

        def expire() -> None:
            if not blocked.done:
                blocked.done = True
                with contextlib.suppress(ValueError):
                    target.blocked.remove(blocked)
                why = (
                    f"inbox of {target.name} is full ({target.spec.inbox} messages not yet "
                    f"acknowledged); waited {wait:g}s, nothing was sent"
                )
                self._refuse(None, "send", target.name, why)
                blocked.fail(why)

        blocked.timer = self.loop.call_at(time.monotonic() + wait, expire)
        target.blocked.append(blocked)

    def _unblock(self, run: AgentRun) -> None:
        while run.blocked and run.depth < run.spec.inbox:
            blocked = run.blocked.popleft()
            if blocked.done:
                continue
            blocked.done = True
            if blocked.timer is not None:
                blocked.timer.cancel()
            blocked.post()

    def _schedule_flush(self) -> None:
        if self.flush_timer is None:
            self.flush_timer = self.loop.call_at(0.0, self._flush)

    def _flush(self) -> None:
        """The group commit: one fdatasync for everything appended this turn, then the
        replies to the senders and the deliveries (interactive agents first)."""
        self.flush_timer = None
        staged, self.staged = self.staged, []
        error: str | None = None
        if self.msglog is not None:
            try:
                self.msglog.commit()
            except AuditError as e:
                error = f"message log: {e}"
        if self.audit is not None:
            with contextlib.suppress(AuditError):
                self.audit.commit()
        touched: set[AgentRun] = set()
        for s in staged:
            if s.target is not None:
                s.target.staged -= 1
            if error is not None:
                s.done(None, error)
                continue
            if s.target is not None:
                s.target.pending.append(s.entry)
                touched.add(s.target)
            else:
                self._to_transport(s.entry.msg)
            s.done(s.entry.msg["id"], None)
        # Every waiting receiver, interactive first (GCD): not only those sent to this
        # turn, since a recv that arrived before an earlier commit waits for this one.
        for run in sorted(self.agents.values(), key=lambda r: r.rank):
            self._deliver(run)
            if error is not None and run in touched:
                self._unblock(run)

    def _deliver(self, run: AgentRun) -> None:
        inst = run.current
        if inst is None or inst.waiting is None or not run.pending or inst.draining:
            return
        ident, limit, timer = inst.waiting
        inst.waiting = None
        if timer is not None:
            timer.cancel()
        out: list[dict[str, Any]] = []
        budget = RECV_FRAME_BUDGET
        while run.pending and len(out) < limit:
            entry = run.pending[0]
            if out and entry.size + 32 > budget:
                break
            run.pending.popleft()
            budget -= entry.size + 32
            msg = entry.msg if entry.deliveries == 0 else {**entry.msg, "redelivered": True}
            entry.deliveries += 1
            inst.inflight[entry.msg["id"]] = entry
            out.append(msg)
        self._reply(inst, {"id": ident, "ok": True, "messages": out})

    # ================================================================== transport (users)

    def _to_transport(self, msg: dict[str, Any]) -> None:
        client = self.waiters.pop(str(msg.get("reply_to")), None)
        if client is not None:
            self._client_reply(client, {"ok": True, "reply": msg})

    def _user_send(self, client: _Client, req: dict[str, Any]) -> None:
        text = req.get("text")
        if not isinstance(text, str) or not text or len(text) > 4000:
            self._client_reply(client, {"ok": False, "error": "text must be 1 to 4000 characters"})
            return
        to = req.get("to")
        if to is None and text.startswith("@"):
            mention, _, rest = text[1:].partition(" ")
            if mention in self.agents:
                to, text = mention, rest.strip() or text
        to = to or self.system.route
        target = self.agents.get(str(to))
        if target is None:
            self._client_reply(client, {"ok": False, "error": f"no agent {to!r} in this system"})
            return
        try:
            login = pwd.getpwuid(client.uid).pw_name
        except KeyError:
            login = str(client.uid)
        wait = req.get("wait")
        sender = {"user": {"channel": "cli", "identity": login}}
        fields = {"to": target.name, "type": "request", "payload": {"text": text}}

        def done(mid: str | None, error: str | None) -> None:
            if error is not None:
                self._client_reply(client, {"ok": False, "error": error})
            elif isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
                assert mid is not None
                self.waiters[mid] = client
                client.waiting_for = mid
                client.timer = self.loop.call_at(
                    time.monotonic() + min(float(wait), MAX_RECV_TIMEOUT),
                    lambda: self._client_timeout(client, mid),
                )
            else:
                self._client_reply(client, {"ok": True, "message_id": mid, "to": target.name})

        self._post(sender, target, fields, done)

    def _client_timeout(self, client: _Client, mid: str) -> None:
        if self.waiters.get(mid) is client:
            del self.waiters[mid]
            self._client_reply(
                client,
                {"ok": False, "error": "no reply in time", "message_id": mid, "timeout": True},
            )

    # ================================================================== control socket

    def _on_accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        try:
            uid = control.peer_uid(sock)
        except OSError:
            sock.close()
            return
        if uid != os.geteuid() or len(self.clients) >= MAX_CONTROL_CLIENTS:
            why = f"control connection from uid {uid} refused (serves uid {os.geteuid()} only)"
            if uid == os.geteuid():
                why = f"control connection refused: {MAX_CONTROL_CLIENTS} already open"
            self._refuse(None, "control", str(uid), why)
            with contextlib.suppress(OSError):
                sock.sendall(json.dumps({"ok": False, "error": why}).encode() + b"\n")
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock, uid)
        self.clients[sock.fileno()] = client
        self.loop.add(sock, lambda: self._on_client(client))

    def _drop_client(self, client: _Client) -> None:
        self.loop.remove(client.sock)
        self.clients.pop(client.sock.fileno(), None)
        if client.waiting_for is not None:
            self.waiters.pop(client.waiting_for, None)
        if client.timer is not None:
            client.timer.cancel()
        client.sock.close()

    def _client_reply(self, client: _Client, reply: dict[str, Any]) -> None:
        try:
            client.sock.setblocking(True)
            client.sock.settimeout(1.0)
            client.sock.sendall(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
        except OSError:
            pass
        self._drop_client(client)

    def _on_client(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_client(client)
            return
        if client.waiting_for is not None:
            return  # one request per connection
        client.buf += chunk
        if b"\n" not in client.buf:
            if len(client.buf) > control.MAX_REQUEST:
                self._client_reply(client, {"ok": False, "error": "request too large"})
            return
        line = client.buf.split(b"\n", 1)[0]
        try:
            req = control.parse_request(line)
        except ValueError as e:
            self._client_reply(client, {"ok": False, "error": str(e)})
            return
        op = req["op"]
        if op == "ps":
            self._client_reply(client, {"ok": True, "agents": self.ps()})
        elif op == "send":
            self._user_send(client, req)
        elif op == "down":
            self._client_reply(client, {"ok": True})
            self.shutdown("down")
        else:
            self._client_reply(client, self._manage(op, req.get("agent")))

    def ps(self) -> list[dict[str, Any]]:
        out = []
        for name in self.tree.agents():
            run = self.agents[name]
            pid = run.current.pid if run.current is not None else None
            out.append(
                {
                    "agent": name,
                    "state": run.state,
                    "pid": pid,
                    "restarts": run.restarts,
                    "inbox": run.depth,
                    "inflight": sum(len(i.inflight) for i in [run.current, *run.old] if i),
                    "qos": run.spec.qos,
                    "restart": run.spec.restart,
                    "supervisor": self.parents[name].name,
                    "ready_ms": run.ready_ms,
                }
            )
        return out

    def _manage(self, op: str, agent: object) -> dict[str, Any]:
        run = self.agents.get(str(agent))
        if run is None:
            return {"ok": False, "error": f"no agent {agent!r} in this system"}
        if self.shutting_down:
            return {"ok": False, "error": "the system is shutting down"}
        self._system_record(op, agent=run.name, reason="control request")
        if op == "stop":
            self.steps.append(("stop", run.name))
        elif op == "restart":
            run.restarts += 1
            self.steps.append(("stop", run.name))
            self.steps.append(("start", run.name))
        else:
            return self._reload(run)
        _say(f"{op} {run.name} (control request)")
        self._advance()
        return {"ok": True}

    def _reload(self, run: AgentRun) -> dict[str, Any]:
        """New code or policy: a new instance takes the inbox; the old one finishes what
        it holds, then stops. The others are untouched."""
        try:
            policy = load_policy(run.spec.policy_path)
        except PolicyError as e:
            return {"ok": False, "error": "\n".join(str(p) for p in e.problems)}
        policy = replace(policy, name=run.name, qos=run.spec.qos)
        spec = replace(run.spec, policy=policy)
        old = run.current
        if old is not None:
            old.draining = True
            run.old.append(old)
            run.current = None
            if old.waiting is not None:
                ident, _, timer = old.waiting
                if timer is not None:
                    timer.cancel()
                old.waiting = None
                self._reply(old, {"id": ident, "ok": True, "messages": []})
        _say(f"reload {run.name}: new instance, inbox carried over")
        inst = self._start(run, spec)
        if old is not None and not old.inflight:
            self._signal_stop(old)
        if inst is None:
            return {"ok": False, "error": f"{run.name}: the new instance could not start"}
        return {"ok": True, "pid": inst.pid}


def recover_tail(path: str) -> int:
    """Cut a last line left without its newline by a crash; the bytes dropped. Safe by
    write-ahead: that record's commit never returned, so nothing it describes happened."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        good = auditlib._last_line_start(fd, size)
        if good is None:  # a last "line" longer than any record: not ours to cut
            raise SetupError(f"{path}: the last line is longer than any record; run verify")
        os.ftruncate(fd, good)
        os.fsync(fd)
        return size - good
    finally:
        os.close(fd)
