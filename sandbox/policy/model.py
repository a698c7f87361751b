"""The validated policy: immutable values, no YAML, no locations.

Loading (sandbox.policy.loader) knows YAML and locations; nothing after it does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from sandbox.enforce.landlock import PERM_RIGHTS
from sandbox.plain import asdict, field, plain

Perm = Literal["r", "w", "x", "c"]
# The permission letters of unveil, in their canonical order: those of the Landlock rights
# table (sandbox.enforce.landlock.PERM_RIGHTS), so a letter is known iff it is enforced.
PERM_LETTERS = "".join(PERM_RIGHTS)
LockMode = Literal["exec", "agent"]
ViolationMode = Literal["kill", "errno", "log"]
Qos = Literal["interactive", "initiated", "utility", "background"]
ResourceType = Literal["dir", "http", "agent"]
SyncMode = Literal["durable", "batch"]

# Rights each resource type knows; a capability promise RESOURCE:RIGHT must name one.
RESOURCE_RIGHTS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "dir": frozenset({"read", "write", "create", "delete", "list"}),
        "http": frozenset({"get", "post", "put", "patch", "delete", "head"}),
        # Another agent of the system (SPEC 9): the right to send it messages, as seL4's
        # endpoint capability. The resource's name is the agent's.
        "agent": frozenset({"send"}),
    }
)

DEFAULT_ENV_KEEP: tuple[str, ...] = ("PATH", "LANG", "TERM", "HOME", "TZ")


@plain(frozen=True)
class Unveil:
    """A path (absolute, normalised, symlinks not resolved) and its permissions."""

    path: str
    perms: frozenset[str]
    optional: bool = False


@plain(frozen=True)
class Network:
    connect: tuple[int, ...] = ()
    bind: tuple[int, ...] = ()


@plain(frozen=True)
class Resource:
    name: str
    type: ResourceType
    path: str | None = None  # dir: absolute path of the root
    url: str | None = None  # http: URL prefix (scheme, host, port pinned)
    # http: header name -> value or "env:NAME" (read from the parent's environment)
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 10.0  # http: seconds
    max_bytes: int = 16 * 1024 * 1024  # http: response size cap


@plain(frozen=True)
class Limits:
    memory: int | None = None  # bytes, whole process tree (cgroup)
    cpu: int | None = None  # seconds (RLIMIT_CPU, per process)
    wall: float | None = None  # seconds, whole run
    processes: int | None = None  # whole process tree (cgroup pids)
    files: int | None = None  # RLIMIT_NOFILE
    file_size: int | None = None  # RLIMIT_FSIZE, bytes


@plain(frozen=True)
class Env:
    keep: tuple[str, ...] = DEFAULT_ENV_KEEP
    set: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@plain(frozen=True)
class Audit:
    """How the audit log makes records durable (sandbox.parent.audit, README "Durability").

    durable: every record is synced before the operation it describes is acknowledged;
    batch: op records are acknowledged once written and synced within `window` seconds."""

    sync: SyncMode = "durable"
    window: float = 0.002  # seconds; batch only


@plain(frozen=True)
class Param:
    """A declared parameter (`params:`): its meaning, its default, the value it had."""

    name: str
    doc: str = ""
    default: str | None = None  # as written, may refer to CWD, HOME and earlier parameters
    value: str | None = None  # what ${NAME} was replaced with when the policy was loaded


@plain(frozen=True)
class Policy:
    name: str
    version: int = 1
    command: tuple[str, ...] = ()
    lock: LockMode = "exec"
    init_timeout: float = 10.0  # seconds, lock: agent only
    # Init bounds for lock: agent (promises allowed before the agent locks); None = hygiene only.
    init_pledge: frozenset[str] | None = None
    pledge: frozenset[str] = frozenset()  # plain promises (stdio, rpath, ...)
    capabilities: frozenset[tuple[str, str]] = frozenset()  # (resource, right)
    execpromises: frozenset[str] | None = None
    unveil: tuple[Unveil, ...] = ()
    network: Network | None = None
    resources: Mapping[str, Resource] = field(default_factory=lambda: MappingProxyType({}))
    limits: Limits = Limits()
    env: Env = Env()
    audit: Audit = Audit()
    violation: ViolationMode = "kill"
    qos: Qos | None = None
    best_effort: bool = False
    user: str | None = None  # run the agent as this user (launcher must be root)
    params: tuple[Param, ...] = ()  # declared parameters, with the values used
    source: str | None = None  # path of the policy file, if any
    sha256: str | None = None  # of the policy file's bytes

    def promise_string(self) -> str:
        caps = sorted(f"{r}:{right}" for r, right in self.capabilities)
        return " ".join([*sorted(self.pledge), *caps])


# --- paths and unveils: one rule each ------------------------------------------------------


def absolute(base_dir: str, path: str) -> str:
    """`path` made absolute against `base_dir` and normalised; symlinks kept (normpath, not
    realpath). POSIX keeps a leading '//' as implementation-defined; on Linux it is '/'."""
    resolved = os.path.normpath(os.path.join(base_dir, path))
    return "/" + resolved.lstrip("/")


def path_within(path: str, root: str) -> bool:
    """`path` is `root` or lies beneath it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def perm_string(perms: Iterable[str]) -> str:
    """Permission letters in canonical order ("rwxc")."""
    have = set(perms)
    return "".join(c for c in PERM_LETTERS if c in have)


@plain(frozen=True, slots=True)
class Beyond:
    """Why an unveil is not within others: the closest enclosing one (None: outside every
    one) and the letters it lacks."""

    closest: Unveil | None
    extra: frozenset[str]


def unveil_beyond(path: str, perms: Iterable[str], within: Iterable[Unveil]) -> Beyond | None:
    """The one within-policy check: None if `path` with `perms` lies within `within`.

    Symlinks are resolved on both sides (Landlock grants on what a path reaches). The
    closest enclosing unveil decides, as on OpenBSD: Landlock would grant the union of all
    enclosing rules, which is never less, so checking against the closest fails closed
    (a policy `data: rw` with `data/ro: r` does not let `data/ro` be declared writable).
    """
    return beyond_resolved(os.path.realpath(path), perms, resolve_unveils(within))


def closest_unveil(path: str, within: Iterable[Unveil]) -> Unveil | None:
    """The unveil that decides `path` (the closest one at or above it, symlinks resolved on
    both sides), None if none encloses it: what unveil_beyond checks against."""
    return closest_resolved(os.path.realpath(path), resolve_unveils(within))


def resolve_unveils(unveils: Iterable[Unveil]) -> tuple[tuple[str, Unveil], ...]:
    """Each unveil with its real path (what Landlock's rule is attached to)."""
    return tuple((os.path.realpath(u.path), u) for u in unveils)


def closest_resolved(real: str, resolved: Iterable[tuple[str, Unveil]]) -> Unveil | None:
    """closest_unveil() for a path already resolved, against unveils already resolved."""
    enclosing = [(r, u) for r, u in resolved if path_within(real, r)]
    if not enclosing:
        return None
    return max(enclosing, key=lambda ru: len(ru[0]))[1]


def beyond_resolved(
    real: str, perms: Iterable[str], resolved: Iterable[tuple[str, Unveil]]
) -> Beyond | None:
    """unveil_beyond() for a path already resolved, against unveils already resolved (the
    parent checks every call it performs this way, with the unveils resolved once)."""
    closest = closest_resolved(real, resolved)
    if closest is None:
        return Beyond(None, frozenset(perms))
    extra = frozenset(perms) - closest.perms
    return Beyond(closest, extra) if extra else None


def effective_perms(path: str, unveils: Iterable[Unveil]) -> frozenset[str]:
    """What Landlock grants on `path`: the union of the letters of every unveil at or above
    it (unlike unveil(2), where the closest decides; see unveil_beyond)."""
    real = os.path.realpath(path)
    out: set[str] = set()
    for u in unveils:
        if path_within(real, os.path.realpath(u.path)):
            out |= u.perms
    return frozenset(out)


# --- a JSON view -----------------------------------------------------------------------------


def policy_to_dict(p: Policy) -> dict[str, Any]:
    """A JSON-able view of the policy (for `sandbox explain --json`).

    Literal header values are secrets: they are shown as '***'; 'env:NAME' is shown as is.
    """
    return {
        "name": p.name,
        "version": p.version,
        "source": p.source,
        "sha256": p.sha256,
        "command": list(p.command),
        "lock": p.lock,
        "init": {
            "timeout": p.init_timeout,
            "pledge": None if p.init_pledge is None else sorted(p.init_pledge),
        },
        "pledge": sorted(p.pledge),
        "capabilities": sorted(f"{r}:{right}" for r, right in p.capabilities),
        "execpromises": None if p.execpromises is None else sorted(p.execpromises),
        "unveil": [
            {"path": u.path, "perms": perm_string(u.perms), "optional": u.optional}
            for u in p.unveil
        ],
        "network": None
        if p.network is None
        else {"connect": list(p.network.connect), "bind": list(p.network.bind)},
        "resources": {name: _resource_dict(r) for name, r in sorted(p.resources.items())},
        "limits": asdict(p.limits),
        "env": {"keep": list(p.env.keep), "set": dict(p.env.set)},
        "audit": {"sync": p.audit.sync, "window": p.audit.window},
        "violation": p.violation,
        "qos": p.qos,
        "best_effort": p.best_effort,
        "user": p.user,
        "params": {
            q.name: {"doc": q.doc, "default": q.default, "value": q.value} for q in p.params
        },
    }


def _resource_dict(r: Resource) -> dict[str, Any]:
    if r.type == "dir":
        return {"type": "dir", "path": r.path}
    return {
        "type": "http",
        "url": r.url,
        "headers": {k: v if v.startswith("env:") else "***" for k, v in r.headers.items()},
        "timeout": r.timeout,
        "max_bytes": r.max_bytes,
    }
