"""lock: agent: the parent's check of what an agent declares when it locks itself.

The agent sends {"op": "lock", "pledge", "execpromises", "unveil"} with its seccomp
listener (first lock only). The declaration must lie within the policy: promises and
capabilities a subset of the policy's, every unveiled path inside a path the policy unveils
with at least the same letters, execpromises no wider than the policy's. The parent records
the declaration (write-ahead) before it answers; a declaration outside the policy ends the
agent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sandbox.model import Policy, Unveil


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
        if not isinstance(path, str) or not isinstance(perms, str) or not set(perms) <= set("rwxc"):
            raise Refused(f"bad unveil entry {path!r}: {perms!r}")
        if "\0" in path or not os.path.isabs(path):
            raise Refused(f"unveil path must be absolute: {path!r}")
        unveils.append(Unveil(os.path.normpath(path), frozenset(perms)))
    return Declaration(frozenset(plain), frozenset(caps), exe, tuple(unveils))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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
        # Symlinks are resolved on both sides: Landlock grants on what the path reaches.
        real = os.path.realpath(u.path)
        covering = [
            p
            for p in policy.unveil
            if _inside(real, os.path.realpath(p.path)) and u.perms <= p.perms
        ]
        if not covering:
            raise Refused(
                f"unveil {u.path}:{''.join(sorted(u.perms))} is not within the policy's unveil"
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
