"""The inline flags of `sandbox run` (SPEC section 3): a policy, or the narrowing of one.

Without a policy file the flags are the policy (promises `stdio rpath` unless -p says
otherwise); with one, they can only narrow it: each -p promise must be in its pledge, each
-v path within what it unveils with at least the letters asked for (the one within-policy
check, sandbox.policy.model.unveil_beyond, which the lock gate and `explain` use too).
-v narrows per path: `-v DIR:r` replaces the entry that decides DIR (the closest enclosing
one) and leaves every other entry as it is.

The values of --limit, --env, --connect, --bind, --user and --violation are checked by the
policy loader itself (a small policy made of the flag), so a flag accepts exactly what a
policy file accepts, with the same messages.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

from sandbox.errors import PolicyError, UsageError
from sandbox.plain import field, field_names, plain, replace
from sandbox.policy import pathsets
from sandbox.policy.model import (
    PERM_LETTERS,
    Env,
    Limits,
    Network,
    Policy,
    Unveil,
    absolute,
    closest_unveil,
    perm_string,
    unveil_beyond,
)
from sandbox.policy.schema import promise_names, suggest

DEFAULT_PROMISES = "stdio rpath"  # without a policy and without -p, as Cosmopolitan's pledge
DEFAULT_PERMS = "r"  # -v PATH without letters
# How far each penalty lets a refused call go: a flag may move towards 'kill', and between
# kill and errno (neither lets the call run), never to 'log' (the call proceeds).
_LETS_CALLS_RUN = {"log": True, "errno": False, "kill": False}


@plain
class Flags:
    """The policy-shaped flags of `sandbox run`, as given (strings)."""

    promises: str | None = None
    unveils: list[str] = field(default_factory=list)
    violation: str | None = None
    best_effort: bool = False
    limits: list[str] = field(default_factory=list)  # KEY=VALUE
    env: list[str] = field(default_factory=list)  # NAME or NAME=VALUE
    connect: list[str] = field(default_factory=list)
    bind: list[str] = field(default_factory=list)
    user: str | None = None

    def any(self) -> bool:
        return self != Flags()


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
    if not sep and spec.startswith("@"):
        raw, sep, letters = spec, ":", DEFAULT_PERMS
    if sep and raw.startswith("@"):
        expanded = pathsets.expand(raw)
        if expanded is None:
            known = ", ".join(sorted(pathsets.PATH_SETS))
            raise UsageError(f"-v '{spec}': unknown path set '{raw}' (known: {known})")
        return [_parse_cli_unveil(f"{p}:{letters}", cwd) for p in expanded]
    return [_parse_cli_unveil(spec, cwd)]


def _parse_cli_unveil(spec: str, cwd: str) -> Unveil:
    raw, sep, letters = spec.rpartition(":")
    if not sep:  # -v PATH means r
        raw, letters = spec, DEFAULT_PERMS
    if not raw:
        raise UsageError(f"-v '{spec}': expected PATH or PATH:PERMS, e.g. -v /usr:rx")
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
    """The policy of `sandbox run -p PROMISES -v PATH:PERMS...`: see apply_flags."""
    return apply_flags(base, Flags(promises=promises, unveils=list(unveils)))


def apply_flags(base: Policy | None, flags: Flags) -> Policy:
    """The policy of `sandbox run`: the flags alone, or `base` narrowed by them.

    `flags.unveils` are -v PATH[:PERMS] values (PATH may contain ':', the last ':' separates
    the permissions; relative paths are relative to the cwd; no letters mean 'r').
    Without a base the promises default to 'stdio rpath'. With a base, each -p promise must
    be in its pledge, each -v path within an unveiled path whose permissions include the
    letters asked for, --connect/--bind ports within its ports, --limit values at most its
    limits; anything wider is a UsageError.
    """
    cwd = os.getcwd()
    # A path given twice is a mistake, unless a path set brought it: @python is /usr for a
    # distribution's interpreter, which @system names too. Then the letters are merged.
    merged: dict[str, Unveil] = {}
    literal: set[str] = set()
    for spec in flags.unveils:
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
        pledge, _ = _parse_cli_promises(flags.promises or DEFAULT_PROMISES, None)
        if not unveil_list and flags.promises is None:
            # Neither a policy nor -p nor -v: almost surely a mistake (the command could not
            # even be executed). With -p, an empty view is what was asked for.
            raise UsageError(
                "nothing is unveiled: give a POLICY file, or paths with -v (e.g. -v /usr:rx); "
                "without them the command cannot even be executed"
            )
        policy = Policy(name="inline", pledge=pledge, unveil=tuple(unveil_list))
        return _inline_values(policy, flags, None)
    changes: dict[str, Any] = {}
    if flags.promises is not None:
        changes["pledge"], changes["capabilities"] = _parse_cli_promises(flags.promises, base)
    if unveil_list:
        changes["unveil"] = narrow_unveils(base, unveil_list)
    return _inline_values(replace(base, **changes), flags, base)


def narrow_unveils(base: Policy, given: list[Unveil]) -> tuple[Unveil, ...]:
    """The base's unveil with each entry that decides a given path (the closest enclosing
    one) replaced by the given paths within it, in place; the other entries as they were."""
    within: dict[Unveil, list[Unveil]] = {}
    for u in given:
        _check_within_base(u, base)
        closest = closest_unveil(u.path, base.unveil)
        assert closest is not None  # _check_within_base refused paths outside every entry
        within.setdefault(closest, []).append(u)
    out: list[Unveil] = []
    for entry in base.unveil:
        out.extend(within.get(entry, [entry]))
    return tuple(out)


# --- the other inline flags ---------------------------------------------------------------


def _fragment(flag: str, body: dict[str, Any]) -> Policy:
    """A policy made of one flag, checked by the policy loader (same rules, same messages)."""
    import json

    from sandbox.policy.loader import load_policy_text

    text = "version: 1\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items())
    try:
        return load_policy_text(text, flag, os.getcwd())
    except PolicyError as e:
        raise UsageError("; ".join(f"{flag}: {p.message}" for p in e.problems)) from None


def _key_value(flag: str, spec: str, example: str) -> tuple[str, str]:
    key, eq, value = spec.partition("=")
    if not eq or not key:
        raise UsageError(f"{flag} '{spec[:80]}': expected KEY=VALUE, e.g. {flag} {example}")
    return key, value


def _limits(flags: Flags) -> dict[str, Any]:
    given: dict[str, str] = {}
    for spec in flags.limits:
        key, value = _key_value("--limit", spec, "memory=512MiB")
        if key in given:
            raise UsageError(f"--limit: '{key}' is given twice")
        given[key] = value
    if not given:
        return {}
    parsed = _fragment(f"--limit {' '.join(flags.limits)}", {"limits": given}).limits
    return {k: getattr(parsed, k) for k in given}


def env_from_flags(specs: list[str], base: Env | None = None) -> Env:
    """The environment `--env NAME[=VALUE]...` gives (on top of `base`, default Env())."""
    keep, values = _env(Flags(env=list(specs)))
    old = base or Env()
    return Env(
        keep=tuple(dict.fromkeys([*old.keep, *keep])),
        set=MappingProxyType({**old.set, **values}),
    )


def _env(flags: Flags) -> tuple[list[str], dict[str, str]]:
    keep: list[str] = []
    values: dict[str, str] = {}
    for spec in flags.env:
        name, eq, value = spec.partition("=")
        body: dict[str, Any] = {"env": {"set": {name: value}} if eq else {"keep": [name]}}
        _fragment(f"--env {spec}", body)
        if name in keep or name in values:
            raise UsageError(f"--env: '{name}' is given twice")
        if eq:
            values[name] = value
        else:
            keep.append(name)
    return keep, values


def _ports(flag: str, specs: list[str]) -> tuple[int, ...]:
    if not specs:
        return ()
    key = flag.removeprefix("--")
    net = _fragment(f"{flag} {' '.join(specs)}", {"pledge": "inet", "network": {key: specs}})
    assert net.network is not None
    return net.network.connect if key == "connect" else net.network.bind


def _network(policy: Policy, flags: Flags, base: Policy | None) -> Network | None:
    if not flags.connect and not flags.bind:
        return policy.network
    connect, bind = _ports("--connect", flags.connect), _ports("--bind", flags.bind)
    if "inet" not in policy.pledge:
        raise UsageError(
            "--connect/--bind are TCP rules and need the promise 'inet' "
            f"(promised: {policy.promise_string() or 'nothing'})"
        )
    old = base.network if base is not None else None
    if old is not None:
        for flag, asked, allowed in (
            ("--connect", connect, old.connect),
            ("--bind", bind, old.bind),
        ):
            wider = [p for p in asked if p not in allowed]
            if wider:
                raise UsageError(
                    f"{flag} {' '.join(map(str, wider))}: policy '{policy.name}' allows only "
                    f"{list(allowed) or 'no ports'}; {flag} can only narrow it"
                )
    # A port list the flags do not give stays as the policy had it; with no network
    # section before, the flags are the first TCP rules (everything else refused).
    return Network(
        connect=connect if flags.connect else (old.connect if old else ()),
        bind=bind if flags.bind else (old.bind if old else ()),
    )


def _inline_values(policy: Policy, flags: Flags, base: Policy | None) -> Policy:
    """--violation, --best-effort, --limit, --env, --connect, --bind, --user on `policy`."""
    changes: dict[str, Any] = {}
    if flags.violation is not None:
        mode = _fragment(f"--violation {flags.violation}", {"violation": flags.violation})
        if base is not None and _LETS_CALLS_RUN[mode.violation] and base.violation != "log":
            raise UsageError(
                f"--violation log lets refused calls run; policy '{base.name}' says "
                f"'{base.violation}', and flags can only narrow it"
            )
        changes["violation"] = mode.violation
    if flags.best_effort:
        changes["best_effort"] = True
    limits = _limits(flags)
    if limits:
        if base is not None:
            for key, value in limits.items():
                have = getattr(base.limits, key)
                if have is not None and value > have:
                    raise UsageError(
                        f"--limit {key}: policy '{base.name}' allows at most {have:g}"
                        f"{'' if key in ('processes', 'files') else _UNIT[key]}; "
                        "--limit can only lower it"
                    )
        changes["limits"] = replace(policy.limits, **limits)
    if flags.env:
        changes["env"] = env_from_flags(flags.env, policy.env)
    network = _network(policy, flags, base)
    if network is not policy.network:
        changes["network"] = network
    if flags.user is not None:
        user = _fragment(f"--user {flags.user}", {"user": flags.user}).user
        if base is not None and base.user is not None and base.user != user:
            raise UsageError(
                f"--user {flags.user}: policy '{base.name}' runs as '{base.user}'; "
                "--user applies only where the policy names no user"
            )
        changes["user"] = user
    return replace(policy, **changes) if changes else policy


_UNIT = {"memory": " bytes", "file_size": " bytes", "cpu": " s", "wall": " s"}
assert set(_UNIT) | {"processes", "files"} == set(field_names(Limits))


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
