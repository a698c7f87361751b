"""The parent's answers to seccomp notifications: violations, exec, execpromises, dns.

The agent's filter sends to the parent (SECCOMP_RET_USER_NOTIF) every call its pledge does
not allow, every exec, and the calls that need a decision the filter cannot make. The
parent never answers "continue" to a call whose arguments it had to inspect in the agent's
memory (that would race with the agent's other threads, see seccomp_unotify(2)); it either
performs such a call itself (dns) or decides on facts the agent cannot change (the pid).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sandbox import procfs
from sandbox.enforce import seccomp
from sandbox.enforce.plan import EXEC_SYSCALLS, Plan
from sandbox.enforce.promises import UNSUPPORTED, never_allowed, refusal
from sandbox.enforce.rules import match
from sandbox.enforce.syscalls import Memory, decode_args
from sandbox.parent.audit import AuditError, AuditLog, record_error
from sandbox.parent.ratelimit import RateLimiter, violation_key
from sandbox.plain import field, plain

if TYPE_CHECKING:
    from sandbox.parent.denials import Reporter
    from sandbox.parent.dnsproxy import DnsEmulator
    from sandbox.parent.loop import EventLoop
    from sandbox.parent.perform import Perform

# Handlers of notify rows whose calls the parent decides from the agent's memory and
# performs itself (sandbox.parent.perform, SPEC section 8), and the calls that may open or
# stat a file a pledged promise brings (an agent without rpath).
PERFORMED = frozenset({"perform", "setid", "unix"})
BRINGING = frozenset(
    {"open", "openat", "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2"}
)


# Characters of a call's decoded arguments kept in a violation record: a path can be 4 KiB,
# and the record's size is what a flood of refusals costs the disk.
MAX_ARGS = 512

# The errno under `violation: errno` (and log) for a call that no promise allows with these
# arguments but that is not on the never list: what the kernel itself answers for an
# unknown command, so that the program goes on as it would unsandboxed (OpenBSD: EINVAL
# for an fcntl it does not know). Any other refused call gets EPERM.
UNALLOWED_ARGS_ERRNO = {"fcntl": errno.EINVAL}


def _status_field(pid: int, key: str) -> int | None:
    return procfs.status_int(f"/proc/{pid}/status", key)


def no_id_change(tid: int, call: str, args: Sequence[int]) -> bool:
    """Would this set*id call leave the caller's ids as they are? Only where its real,
    effective, saved (and filesystem) ids are all one value and every id the call names is
    that value or -1: then no form of the call can change anything (setreuid's rule that
    may move the saved id included). The ids are the thread's own, as the call would see."""
    from sandbox.enforce.promises import OWN_ID_CALLS

    kinds = OWN_ID_CALLS.get(call)
    if kinds is None:
        return False
    try:
        uids = procfs.status_field(f"/proc/{tid}/status", "Uid")
        gids = procfs.status_field(f"/proc/{tid}/status", "Gid")
    except OSError:
        return False
    held = {"u": uids, "g": gids}
    for i, kind in enumerate(kinds):
        ids = held[kind]
        if not ids or len(set(ids)) != 1:
            return False
        value = args[i] & 0xFFFFFFFF
        if value != 0xFFFFFFFF and str(value) != ids[0]:
            return False
    return True


def _own_ns_tgid(pid: int) -> int | None:
    """The process id of thread `pid` as that process itself sees it (innermost NStgid)."""
    return procfs.status_int(f"/proc/{pid}/status", "NStgid", last=True)


def _own_ns_tids(tid: int) -> set[int]:
    """The thread ids of thread `tid`'s process as that process sees them (innermost NSpid
    of each task). Without 'proc' nothing else lives in the agent's pid namespace, so a
    tid listed now cannot belong to another process."""
    tgid = _status_field(tid, "Tgid") or tid
    try:
        tasks = os.listdir(f"/proc/{tgid}/task")
    except OSError:
        return set()
    out = set()
    for task in tasks:
        own = procfs.status_int(f"/proc/{tgid}/task/{task}/status", "NSpid", last=True)
        if own is not None:
            out.add(own)
    return out


@plain
class Supervisor:
    plan: Plan
    audit: AuditLog
    agent_pid: int
    kill_tree: Callable[[], None]
    listener: int = -1
    exec_done: bool = False  # the launcher's own exec of the command has happened
    killed_for_violation: bool = False
    execd: set[int] = field(default_factory=set)  # tgids that exec'd (execpromises apply)
    dns: DnsEmulator | None = None
    reporter: Reporter | None = None  # names the paths Landlock refuses (--trace-unveil)
    # Which refusal records are written whole (the rest are counted); the launcher passes
    # one that shares the agent's timers and the broker's budget.
    limiter: RateLimiter | None = None
    loop: EventLoop | None = None  # serves the agent's performer (sandbox.parent.perform)
    # What a SIGSYS from the kernel itself (no notification) most likely was, for the message.
    kernel_kill_hint: str = "a system call of a foreign architecture or ABI (x32, int 0x80)"

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = RateLimiter(self.audit, self.agent_pid)
        self._perform: Perform | None = None  # made on first use: its import costs a launch
        if "dns" in self.plan.policy.pledge:
            from sandbox.parent.dnsproxy import DnsEmulator  # only agents with 'dns' need it

            # With the relay the agent's resolv.conf names 127.0.0.1 in its own namespace.
            self.dns = DnsEmulator(frozenset({"127.0.0.1"}) if self.plan.dns_relay else None)

    @property
    def name(self) -> str:
        return self.plan.policy.name

    def on_listener_readable(self) -> bool:
        """Handle one notification; False when the listener is gone (every user exited)."""
        try:
            n = seccomp.recv_notification(self.listener)
        except OSError as e:
            # ENOENT/EINTR/EAGAIN: the caller died or was interrupted before we read it.
            return e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN)
        if n is not None:
            try:
                self.decide(n)
            except Exception as e:  # a decision that fails must not leave the call pending
                self._failed(n, e)
            return True
        # Nothing to read: the target died or was interrupted, or every process using the
        # filter is gone, which the listener reports as a hang-up forever after.
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        return not any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def decide(self, n: seccomp.Notification) -> None:
        name = seccomp.syscall_name(n.nr)
        args = list(n.args)
        if not self.exec_done and n.pid == self.agent_pid:
            # Between the lock and the exec only the launcher's own code runs in the child.
            if name in EXEC_SYSCALLS:
                self.exec_done = True
                if not self._lock_record(n.pid):
                    # Write-ahead: the program does not start without its lock record.
                    print(f"sandbox: audit log failed; {self.name} not started", file=sys.stderr)
                    self.killed_for_violation = True
                    self.kill_tree()
                    return
            seccomp.respond(self.listener, n.id, continue_=True)
            return
        if name in EXEC_SYSCALLS:
            execp = self.plan.policy.execpromises
            if "exec" in self.plan.policy.pledge:
                if execp is not None:
                    # A program the agent executed runs under execpromises: without 'exec'
                    # in them it cannot execute another.
                    if "exec" not in execp and self._under_execpromises(n.pid):
                        self.violation(n, name, args, "exec", note="not in execpromises")
                        return
                    tgid = _status_field(n.pid, "Tgid") or n.pid
                    self.execd.add(tgid)  # before the exec runs: fail closed if it fails
                seccomp.respond(self.listener, n.id, continue_=True)
                return
            self.violation(n, name, args, "exec")
            return
        rule = match(self.plan.rules, name, args)
        handler = rule.handler if rule is not None and rule.action == "notify" else None
        if handler == "execpromises":
            if self._under_execpromises(n.pid):
                exe = self.plan.policy.execpromises or frozenset()
                self.refuse(n, name, args, exe, note="not in execpromises")
            else:
                seccomp.respond(self.listener, n.id, continue_=True)
            return
        if handler == "self_signal":
            # kill/tkill/tgkill/rt_(tg)sigqueueinfo: the first argument names the target.
            # The caller names itself by its pid in its own (innermost) namespace.
            # tkill names a thread: one of the caller's own (its thread ids as the process
            # sees them) is a signal to itself too. Decided on registers only, which the
            # caller, blocked in the call, cannot change.
            target = args[0] & 0xFFFFFFFF
            if target == _own_ns_tgid(n.pid) or (name == "tkill" and target in _own_ns_tids(n.pid)):
                seccomp.respond(self.listener, n.id, continue_=True)
            else:
                self.refuse(n, name, args, self.plan.policy.pledge)
            return
        if handler == "own_ids":
            # Registers only, nothing read from the agent's memory: setting the ids the
            # caller already has is answered 0 (it would change nothing); else refused.
            if no_id_change(n.pid, name, args):
                seccomp.respond(self.listener, n.id, val=0)
            else:
                self.refuse(n, name, args, self.plan.policy.pledge)
            return
        if handler == "dns" and self.dns is not None:
            self._emulate_dns(n, name, args)
            return
        if handler == "trace":
            self._trace(n, name, args)
            return
        if handler == "unsupported":
            # A route around a kernel check (MPTCP, TCP Fast Open): refused and recorded in
            # every mode, failing as on a kernel without the feature, so programs fall back.
            code, why = UNSUPPORTED[name]
            self.violation(n, name, args, None, note=why, answer=code)
            return
        if handler in PERFORMED:
            # Decided from the agent's memory and performed by the parent (SPEC section 8).
            self.perform().start(n, name, args, handler)
            return
        if rule is None and self.plan.brought and name in BRINGING:
            # Maybe a file a pledged promise brings (an agent without rpath).
            self.perform().start(n, name, args, "brought")
            return
        self.refuse(n, name, args, self.plan.policy.pledge)

    def refuse(
        self,
        n: seccomp.Notification,
        name: str,
        args: list[int],
        have: frozenset[str],
        note: str | None = None,
    ) -> None:
        """A violation worded by the promise table: the promises missing beyond `have`, or
        the hint that fits better (read from the agent's memory, for the message only).

        Beyond the rate limit the refusal is counted, not recorded: nothing is read from
        the agent's memory (what the promise is decides only whether the call proceeds
        under `violation: log`, and that does not depend on the hints)."""
        assert self.limiter is not None
        if not self.limiter.admit(violation_key(name, note)):
            why = refusal(name, args, have=have)
            self.violation(n, name, args, why.promise, note=note, whole=False)
            return
        with Memory(n.pid) as mem:
            why = refusal(name, args, have=have, mem=mem)
            notes = "; ".join(x for x in (note, why.note) if x) or None
            self.violation(n, name, args, why.promise, note=notes, mem=mem, whole=True)

    def flush(self) -> None:
        """Write the counts of refusals not recorded whole (before the exit record)."""
        assert self.limiter is not None
        self.limiter.flush()

    def _failed(self, n: seccomp.Notification, error: Exception) -> None:
        """The call whose decision failed fails (EPERM: the safe answer in every mode, and
        the agent goes on); the failure is recorded. An answer given already stands (the
        kernel refuses a second one with ENOENT)."""
        with contextlib.suppress(OSError):
            seccomp.respond(self.listener, n.id, error=errno.EPERM)
        assert self.limiter is not None
        if self.limiter.admit(f"error notification {type(error).__name__}"):
            where = f"notification ({seccomp.syscall_name(n.nr)})"
            record_error(self.audit, n.pid, where, error)

    def perform(self) -> Perform:
        if self._perform is None:
            from sandbox.parent.perform import Perform

            self._perform = Perform(self)
        return self._perform

    def close(self) -> None:
        if self._perform is not None:
            self._perform.close()

    def under_execpromises(self, tid: int) -> bool:
        return self._under_execpromises(tid)

    def _lock_record(self, pid: int) -> bool:
        pol = self.plan.policy
        try:
            self.audit.record(
                "lock",
                pid=pid,
                pledge=pol.promise_string(),
                unveil={u.path: "".join(sorted(u.perms)) for u in self.plan.unveils},
            )
        except AuditError:
            return False
        return True

    def _under_execpromises(self, tid: int) -> bool:
        """Has this process, or an ancestor below the agent, exec'd since the lock?

        Unknown lineage (a process reparented away, /proc unreadable) counts as exec'd:
        the stricter answer.
        """
        pid = _status_field(tid, "Tgid") or tid
        for _ in range(4096):
            if pid in self.execd:
                return True
            if pid == self.agent_pid:
                return False
            parent = _status_field(pid, "PPid")
            if not parent or parent == os.getpid() or parent == 1:
                return True
            pid = parent
        return True

    def _trace(self, n: seccomp.Notification, name: str, args: list[int]) -> None:
        """--trace-unveil: read the path for a hint, decide nothing. The answer is "continue"
        whatever was read, so Landlock decides on what the call really names; a thread
        racing the read can only make the hint wrong."""
        if self.reporter is not None:
            from sandbox.enforce.syscalls import Memory, read_path
            from sandbox.parent.denials import TRACED_NET, predict, predict_net

            if name in TRACED_NET:
                ll = self.plan.landlock
                ports = None
                if ll is not None and ll.handled_net:
                    ports = ll.bind_ports if name == "bind" else ll.connect_ports

                def read(pid: int, addr: int, size: int) -> bytes | None:
                    with Memory(pid) as mem:
                        return mem.read(addr, size)

                found = predict_net(n.pid, name, args, ports, read)
            else:
                found = predict(n.pid, name, args, self.plan.unveils, read_path)
            for refusal in found:
                self.reporter.report(refusal)
        seccomp.respond(self.listener, n.id, continue_=True)

    def _emulate_dns(self, n: seccomp.Notification, name: str, args: list[int]) -> None:
        assert self.dns is not None
        result = self.dns.perform(n.pid, name, args)
        if result.allowed:
            if not seccomp.id_valid(self.listener, n.id):
                return
            seccomp.respond(self.listener, n.id, val=result.value, error=result.error)
            return
        self.violation(n, name, args, "inet", note=result.reason)

    def violation(
        self,
        n: seccomp.Notification,
        name: str,
        args: list[int],
        promise: str | None,
        note: str | None = None,
        mem: Memory | None = None,
        answer: int | None = None,
        whole: bool | None = None,
    ) -> None:
        """Record the refused call, then apply the policy's `violation:`. A call no promise
        allows (`promise` None) is never performed: under errno and log it fails with EPERM
        (recorded as action errno), under kill the agent is killed.

        `answer`: fail the call with this errno whatever the mode (handler "unsupported").
        `whole`: whether the rate limiter let this record be written (None: ask it here).
        """
        pol = self.plan.policy
        never = promise is None
        if answer is not None:
            action = "errno"
        else:
            action = ("kill" if pol.violation == "kill" else "errno") if never else pol.violation
        if whole is None:
            assert self.limiter is not None
            whole = self.limiter.admit(violation_key(name, note))
        call = ""  # "name(a, b, ...)": decoded only to be recorded or printed (reads memory)
        if whole:
            call = decode_args(name, args, pid=n.pid, mem=mem)
            shown = call[len(name) + 1 : -1] if call.startswith(name + "(") else call
            if len(shown) > MAX_ARGS:
                shown = f"{shown[:MAX_ARGS]}...[{len(shown) - MAX_ARGS} more characters]"
            fields = {
                "pid": n.pid,
                "syscall": name,
                "args": shown,
                "promise": promise,
                "action": action,
            }
            if note:
                fields["note"] = note
            try:
                self.audit.record("violation", **fields)
            except (AuditError, ValueError) as e:
                # Write-ahead: an unrecorded refusal must not let anything through.
                print(f"sandbox: audit log failed ({e}); ending {pol.name}", file=sys.stderr)
                action = "kill"
        elif action == "log" and self.audit.broken is not None:
            # Counted, not recorded, yet the call would proceed: only while the log works.
            action = "kill"
        if action == "kill":
            call = call or decode_args(name, args, pid=n.pid, mem=mem)
            # SPEC's line; a never-allowed call's reason is in its record's note
            what = "is never allowed" if never else f"needs '{promise}'"
            if note and not never:
                what += f" ({note})"
            print(f"sandbox: {pol.name}[{n.pid}]: pledge violation: {call} {what}", file=sys.stderr)
            self.killed_for_violation = True
            self.kill_tree()
            return
        if action == "errno" or never:  # a never-allowed call never goes through
            code = errno.EPERM
            if answer is not None:
                code = answer
            elif never and not never_allowed(name, args):
                code = UNALLOWED_ARGS_ERRNO.get(name, errno.EPERM)
            seccomp.respond(self.listener, n.id, error=code)
        else:  # log: learning mode, the call goes through (recorded above)
            seccomp.respond(self.listener, n.id, continue_=True)
