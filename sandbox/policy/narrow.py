"""The `-p`/`-v` narrowing of `sandbox run` (SPEC section 3).

Without a policy file the flags are the policy; with one, they can only narrow it: each
-p promise must be in its pledge, each -v path within what it unveils with at least the
letters asked for (the one within-policy check, sandbox.policy.model.unveil_beyond, which
the lock gate and `explain` use too).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sandbox.errors import UsageError
from sandbox.policy import pathsets
from sandbox.policy.model import PERM_LETTERS, Policy, Unveil, absolute, perm_string, unveil_beyond
from sandbox.policy.schema import promise_names, suggest


def _parse_cli_promises(
    promises: str, base: Policy | None
) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    known = promise_names()
    plain: set[str] = set()
    caps: set[tuple[str, str]] = set()
    for word in promises.split():
        if ":" in word:
            resource, _, right = word.partition(":")
            if base is None:
                raise UsageError(
                    f"-p: capability promise '{word}' needs a policy file declaring "
                    f"resource '{resource}'"
                )
            if (resource, right) not in base.capabilities:
                raise UsageError(
                    f"-p: '{word}' is not in the pledge of policy '{base.name}'; -p can only "
                    f"narrow it (its pledge: {base.promise_string() or 'nothing'})"
                )
            caps.add((resource, right))
            continue
        if word not in known:
            raise UsageError(f"-p: unknown promise '{word}'{suggest(word, known)}")
        if base is not None and word not in base.pledge:
            raise UsageError(
                f"-p: promise '{word}' is not in the pledge of policy '{base.name}'; -p can "
                f"only narrow it (its pledge: {base.promise_string() or 'nothing'})"
            )
        plain.add(word)
    return frozenset(plain), frozenset(caps)


def _parse_cli_unveils(spec: str, cwd: str) -> list[Unveil]:
    """-v PATH:PERMS, where PATH may name a set of paths (@python, @system, @devices)."""
    raw, sep, letters = spec.rpartition(":")
    if sep and raw.startswith("@"):
        expanded = pathsets.expand(raw)
        if expanded is None:
            known = ", ".join(sorted(pathsets.PATH_SETS))
            raise UsageError(f"-v '{spec}': unknown path set '{raw}' (known: {known})")
        return [_parse_cli_unveil(f"{p}:{letters}", cwd) for p in expanded]
    return [_parse_cli_unveil(spec, cwd)]


def _parse_cli_unveil(spec: str, cwd: str) -> Unveil:
    raw, sep, letters = spec.rpartition(":")
    if not sep or not raw:
        raise UsageError(f"-v '{spec}': expected PATH:PERMS, e.g. -v /usr:rx (PERMS may be empty)")
    bad = sorted({c for c in letters if c not in PERM_LETTERS})
    if bad:
        raise UsageError(
            f"-v '{spec}': unknown permission {', '.join(repr(c) for c in bad)}; use any of r w x c"
        )
    if "\0" in raw:
        raise UsageError(f"-v '{spec}': the path contains a NUL character")
    if raw.startswith("@"):
        raise UsageError(f"-v '{spec}': use _parse_cli_unveils for path sets")
    path = absolute(cwd, raw)
    if not os.path.exists(path):
        raise UsageError(f"-v '{spec}': '{path}' does not exist")
    return Unveil(path, frozenset(letters))


def narrow(base: Policy | None, promises: str | None, unveils: list[str]) -> Policy:
    """The policy of `sandbox run`: the flags alone, or `base` narrowed by them.

    `promises` is the -p string; `unveils` the -v PATH:PERMS values (PATH may contain ':',
    the last ':' separates the permissions; relative paths are relative to the cwd).
    With a base, each -p promise must be in its pledge and each -v path must lie within
    an unveiled path whose permissions include the letters asked for; anything wider is
    a UsageError.
    """
    cwd = os.getcwd()
    # A path given twice is a mistake, unless a path set brought it: @python is /usr for a
    # distribution's interpreter, which @system names too. Then the letters are merged.
    merged: dict[str, Unveil] = {}
    literal: set[str] = set()
    for spec in unveils:
        from_set = spec.startswith("@")
        for u in _parse_cli_unveils(spec, cwd):
            first = merged.get(u.path)
            if first is not None and not from_set and u.path in literal:
                raise UsageError(f"-v: '{u.path}' is given twice")
            if not from_set:
                literal.add(u.path)
            merged[u.path] = u if first is None else Unveil(u.path, first.perms | u.perms)
    unveil_list = list(merged.values())
    if base is None:
        if promises is None:
            raise UsageError(
                "without a policy file, give the promises with -p (e.g. -p 'stdio rpath')"
            )
        pledge, _ = _parse_cli_promises(promises, None)
        return Policy(name="inline", pledge=pledge, unveil=tuple(unveil_list))
    changes: dict[str, Any] = {}
    if promises is not None:
        changes["pledge"], changes["capabilities"] = _parse_cli_promises(promises, base)
    if unveil_list:
        for u in unveil_list:
            _check_within_base(u, base)
        changes["unveil"] = tuple(unveil_list)
    return dataclasses.replace(base, **changes)


def _check_within_base(u: Unveil, base: Policy) -> None:
    beyond = unveil_beyond(u.path, u.perms, base.unveil)
    if beyond is None:
        return
    if beyond.closest is None:
        unveiled = ", ".join(b.path for b in base.unveil) or "nothing"
        raise UsageError(
            f"-v '{u.path}' is outside what policy '{base.name}' unveils ({unveiled}); "
            "-v can only narrow it"
        )
    have = perm_string(beyond.closest.perms) or "no rights"
    raise UsageError(
        f"-v '{u.path}' asks for '{perm_string(beyond.extra)}', but policy '{base.name}' "
        f"gives '{beyond.closest.path}' only '{have}'; -v can only narrow it"
    )
