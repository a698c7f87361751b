"""lock: agent: the parent's check of what an agent declares when it locks itself.

The agent sends {"op": "lock", "pledge", "execpromises", "unveil"} with its seccomp
listener (first lock only). The declaration must lie within the policy: promises and
capabilities a subset of the policy's, every unveiled path inside a path the policy unveils
with at least the same letters, execpromises no wider than the policy's. The parent records
the declaration (write-ahead) before it answers; a declaration outside the policy ends the
agent. A declaration is checked with the one within-policy check of sandbox.policy.model
(the closest enclosing unveil decides), the same one `-v` narrowing uses.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sandbox.enforce.plan import AGENT_PID_IN_NAMESPACE, Plan, brought_files, seccomp_rules
from sandbox.parent.audit import AuditError, AuditLog
from sandbox.plain import plain, replace
from sandbox.policy.model import PERM_LETTERS, Policy, Unveil, perm_string, unveil_beyond

if TYPE_CHECKING:
    from sandbox.parent.loop import Timer
    from sandbox.parent.notify import Supervisor


@plain(frozen=True)
class Declaration:
    pledge: frozenset[str]
    capabilities: frozenset[tuple[str, str]]
    execpromises: frozenset[str] | None
    unveil: tuple[Unveil, ...]


class Refused(ValueError):
    """The declaration exceeds the policy (or is malformed); the message says how."""


MAX_PATH = 4096  # bytes of one unveiled path (PATH_MAX)
MAX_SHOWN = 1024  # characters of a refused declaration's field kept in its record


def _shown(value: Any) -> Any:
    """A refused declaration's field as recorded: the agent chose it, so it is bounded."""
    if isinstance(value, str):
        return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."
    if value is None:
        return None
    if (
        isinstance(value, dict)
        and all(isinstance(x, str) for kv in value.items() for x in kv)
        and sum(len(k) + len(v) for k, v in value.items()) <= 4 * MAX_SHOWN
    ):
        return value
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _words(value: Any, what: str) -> list[str]:
    if not isinstance(value, str) or len(value) > 4096:
        raise Refused(f"{what} must be a string of promises")
    return value.split()


def parse(request: Mapping[str, Any]) -> Declaration:
    plain: set[str] = set()
    caps: set[tuple[str, str]] = set()
    for w in _words(request.get("pledge"), "pledge"):
        if ":" in w:
            res, _, right = w.partition(":")
            caps.add((res, right))
        else:
            plain.add(w)
    exe_raw = request.get("execpromises")
    exe = None if exe_raw is None else frozenset(_words(exe_raw, "execpromises"))
    unveil_raw = request.get("unveil", {})
    if not isinstance(unveil_raw, dict) or len(unveil_raw) > 1024:
        raise Refused("unveil must be a mapping of at most 1024 paths")
    unveils = []
    for path, perms in unveil_raw.items():
        if (
            not isinstance(path, str)
            or not isinstance(perms, str)
            or not set(perms) <= set(PERM_LETTERS)
        ):
            raise Refused(f"bad unveil entry {_shown(path)!r}: {_shown(perms)!r}")
        if "\0" in path or not os.path.isabs(path):
            raise Refused(f"unveil path must be absolute: {_shown(path)!r}")
        if len(os.fsencode(path)) > MAX_PATH:
            raise Refused(f"unveil path longer than {MAX_PATH} bytes: {_shown(path)!r}")
        unveils.append(Unveil(os.path.normpath(path), frozenset(perms)))
    return Declaration(frozenset(plain), frozenset(caps), exe, tuple(unveils))


def check(policy: Policy, decl: Declaration) -> None:
    extra = sorted(decl.pledge - policy.pledge)
    if extra:
        raise Refused(f"promise '{extra[0]}' is not in the policy")
    extra_caps = sorted(f"{r}:{x}" for r, x in decl.capabilities - policy.capabilities)
    if extra_caps:
        raise Refused(f"capability '{extra_caps[0]}' is not in the policy")
    if policy.execpromises is not None and "exec" in decl.pledge:
        if decl.execpromises is None:
            raise Refused("the policy sets execpromises; the agent must declare them too")
        wider = sorted(decl.execpromises - policy.execpromises)
        if wider:
            raise Refused(f"execpromise '{wider[0]}' is not in the policy's execpromises")
    for u in decl.unveil:
        if unveil_beyond(u.path, u.perms, policy.unveil) is not None:
            raise Refused(
                f"unveil {u.path}:{perm_string(u.perms)} is not within the policy's unveil"
            )


def declaration(
    policy: Policy, request: Mapping[str, Any], current: Policy | None = None
) -> Declaration:
    """The checked declaration of a lock request, or Refused: never another exception.

    `current`: the policy already narrowed by an earlier lock (later locks only narrow it);
    execpromises left out (None) stay as they are, as pledge(2) leaves them.
    """
    try:
        decl = parse(request)
        if current is not None and decl.execpromises is None:
            decl = replace(decl, execpromises=current.execpromises)
        check(current or policy, decl)
    except Refused:
        raise
    except Exception as e:  # e.g. a path the checks cannot even resolve (a lone surrogate)
        raise Refused(f"malformed declaration ({type(e).__name__}: {_shown(str(e))})") from None
    return decl


def narrowed_policy(policy: Policy, decl: Declaration) -> Policy:
    """The policy as the agent declared it: what the parent enforces from the lock on."""
    return replace(
        policy,
        pledge=decl.pledge,
        capabilities=decl.capabilities,
        execpromises=decl.execpromises,
        unveil=decl.unveil,
    )


class LockGate:
    """The broker op "lock": check, record, then take the listener.

    Under lock: agent, `take_listener` receives the seccomp listener of the agent's first
    lock (the launcher starts serving it); later locks only narrow and bring none. Under
    lock: exec the launcher has locked already (the gate starts `locked`): a pledge() the
    program makes narrows, and is recorded like a later lock: agent lock.
    """

    def __init__(
        self,
        plan: Plan,
        audit: AuditLog,
        sup: Supervisor,
        take_listener: Callable[[int], None],
        on_narrow: Callable[[Policy], None] | None = None,
    ) -> None:
        self.plan, self.audit, self.sup, self.take_listener = plan, audit, sup, take_listener
        # Told the narrowed policy at every lock (the broker then grants only what the agent
        # declared: a capability it dropped is refused like one it never had).
        self.on_narrow = on_narrow
        self.pid = sup.agent_pid
        self.locked = False
        self.timer: Timer | None = None  # init.timeout, cancelled by the first lock

    def handle(self, request: dict[str, Any], fd: int | None) -> tuple[dict[str, Any], None]:
        """Serve one lock request. The descriptor that came with it (the listener) is
        closed on every path unless it was handed to the launcher."""
        held = [fd]
        try:
            return self._handle(request, held)
        finally:
            if held[0] is not None:
                os.close(held[0])

    def _handle(
        self, request: dict[str, Any], held: list[int | None]
    ) -> tuple[dict[str, Any], None]:
        policy = self.plan.policy
        fd = held[0]
        try:
            decl = declaration(policy, request, self.sup.plan.policy if self.locked else None)
            if not self.locked and self.plan.user_notif and fd is None:
                raise Refused("the first lock must hand over the seccomp listener")
            fields = {
                "pid": self.pid,
                "pledge": " ".join(
                    sorted([*decl.pledge, *(f"{r}:{x}" for r, x in decl.capabilities)])
                ),
                "unveil": {u.path: "".join(sorted(u.perms)) for u in decl.unveil},
                "execpromises": None
                if decl.execpromises is None
                else " ".join(sorted(decl.execpromises)),
            }
            try:
                self.audit.append("lock", **fields)
            except ValueError as e:  # larger than a record may be: not recorded, not locked
                raise Refused(f"declaration cannot be recorded ({e})") from None
        except Refused as e:
            self._refuse(request, str(e))
            raise PermissionError(f"lock refused: {e}") from None
        except AuditError:
            self.sup.killed_for_violation = True
            self.sup.kill_tree()
            raise
        try:
            self.audit.commit()
        except AuditError:
            self.sup.killed_for_violation = True
            self.sup.kill_tree()
            raise
        if self.locked and policy.lock == "exec" and not decl.unveil:
            # Under lock: exec a pledge() without unveil() leaves the launcher's view as it
            # is (the agent adds no Landlock layer); only lock: agent starts from nothing.
            decl = replace(decl, unveil=self.sup.plan.policy.unveil)
        narrowed = narrowed_policy(policy, decl)
        resolve_unix = self.plan.resolve_unix
        self.sup.plan = replace(
            self.sup.plan,
            policy=narrowed,
            rules=seccomp_rules(
                decl.pledge,
                decl.execpromises,
                resolve_unix=resolve_unix,
                self_pid=AGENT_PID_IN_NAMESPACE if self.plan.pidns else None,
            ),
            parent_unix="unix" in decl.pledge and not resolve_unix,
            brought=brought_files(decl.pledge),
        )
        if self.on_narrow is not None:
            self.on_narrow(narrowed)
        if fd is not None and not self.locked:
            held[0] = None  # the launcher owns it now
            self.take_listener(fd)
        # (a later lock brings no listener: one per filter chain; one sent is closed above)
        self.sup.kernel_kill_hint = (
            "a call outside the agent's narrowed pledge (enforced by the kernel alone, "
            "not recorded call by call)"
            if self.locked
            else "a system call of a foreign architecture or ABI (x32, int 0x80)"
        )
        self.locked = True
        if self.timer is not None:
            self.timer.cancel()
        # The mode a narrowing filter applies by itself (lock: exec passes it no other way).
        return {"locked": True, "violation": policy.violation}, None

    def _refuse(self, request: Mapping[str, Any], reason: str) -> None:
        policy = self.plan.policy
        # The agent is being ended; requests it queued before are refused too, and counted
        # rather than each recorded and printed (sandbox.parent.ratelimit).
        limiter = self.sup.limiter
        if limiter is None or limiter.admit("lock deny"):
            with contextlib.suppress(AuditError, ValueError):
                self.audit.record(
                    "lock",
                    pid=self.pid,
                    pledge=_shown(request.get("pledge")),
                    unveil=_shown(request.get("unveil")),
                    decision="deny",
                    reason=reason,
                )
            reason = reason.encode("unicode_escape").decode("ascii")  # agent text, one line
            print(f"sandbox: {policy.name}[{self.pid}]: lock refused: {reason}", file=sys.stderr)
        self.sup.killed_for_violation = True
        self.sup.kill_tree()
