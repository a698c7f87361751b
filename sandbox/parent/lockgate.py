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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sandbox.enforce.plan import Plan, brought_files, seccomp_rules
from sandbox.parent.audit import AuditError, AuditLog
from sandbox.policy.model import PERM_LETTERS, Policy, Unveil, perm_string, unveil_beyond

if TYPE_CHECKING:
    from sandbox.parent.loop import Timer
    from sandbox.parent.notify import Supervisor


@dataclass(frozen=True)
class Declaration:
    pledge: frozenset[str]
    capabilities: frozenset[tuple[str, str]]
    execpromises: frozenset[str] | None
    unveil: tuple[Unveil, ...]


class Refused(ValueError):
    """The declaration exceeds the policy (or is malformed); the message says how."""


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
            raise Refused(f"bad unveil entry {path!r}: {perms!r}")
        if "\0" in path or not os.path.isabs(path):
            raise Refused(f"unveil path must be absolute: {path!r}")
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
    """The broker op "lock" (lock: agent): check, record, then take the listener.

    `take_listener` receives the seccomp listener of the agent's first lock (the launcher
    starts serving it); later locks only narrow and bring none.
    """

    def __init__(
        self,
        plan: Plan,
        audit: AuditLog,
        sup: Supervisor,
        take_listener: Callable[[int], None],
    ) -> None:
        self.plan, self.audit, self.sup, self.take_listener = plan, audit, sup, take_listener
        self.pid = sup.agent_pid
        self.locked = False
        self.timer: Timer | None = None  # init.timeout, cancelled by the first lock

    def handle(self, request: dict[str, Any], fd: int | None) -> tuple[dict[str, Any], None]:
        policy = self.plan.policy
        try:
            decl = parse(request)
            check(policy if not self.locked else self.sup.plan.policy, decl)
            if not self.locked and self.plan.user_notif and fd is None:
                raise Refused("the first lock must hand over the seccomp listener")
        except Refused as e:
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
        resolve_unix = self.plan.resolve_unix
        self.sup.plan = replace(
            self.sup.plan,
            policy=narrowed_policy(policy, decl),
            rules=seccomp_rules(decl.pledge, decl.execpromises, resolve_unix=resolve_unix),
            parent_unix="unix" in decl.pledge and not resolve_unix,
            brought=brought_files(decl.pledge),
        )
        if fd is not None:
            if self.locked:
                os.close(fd)  # one listener per filter chain; later locks only narrow
            else:
                self.take_listener(fd)
        self.sup.kernel_kill_hint = (
            "a call outside the agent's narrowed pledge (enforced by the kernel alone, "
            "not recorded call by call)"
            if self.locked
            else "a system call of a foreign architecture or ABI (x32, int 0x80)"
        )
        self.locked = True
        if self.timer is not None:
            self.timer.cancel()
        return {"locked": True}, None
