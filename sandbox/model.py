"""The validated policy: immutable values, no YAML, no locations.

Loading (sandbox.policy) knows YAML and locations; nothing after it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Perm = Literal["r", "w", "x", "c"]
LockMode = Literal["exec", "agent"]
ViolationMode = Literal["kill", "errno", "log"]
Qos = Literal["interactive", "initiated", "utility", "background"]
ResourceType = Literal["dir", "http"]

# Rights each resource type knows; a capability promise RESOURCE:RIGHT must name one.
RESOURCE_RIGHTS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "dir": frozenset({"read", "write", "create", "delete", "list"}),
        "http": frozenset({"get", "post", "put", "patch", "delete", "head"}),
    }
)

DEFAULT_ENV_KEEP: tuple[str, ...] = ("PATH", "LANG", "TERM", "HOME", "TZ")


@dataclass(frozen=True)
class Unveil:
    """A path (absolute, normalised, symlinks not resolved) and its permissions."""

    path: str
    perms: frozenset[str]
    optional: bool = False


@dataclass(frozen=True)
class Network:
    connect: tuple[int, ...] = ()
    bind: tuple[int, ...] = ()


@dataclass(frozen=True)
class Resource:
    name: str
    type: ResourceType
    path: str | None = None  # dir: absolute path of the root
    url: str | None = None  # http: URL prefix (scheme, host, port pinned)
    # http: header name -> value or "env:NAME" (read from the parent's environment)
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 10.0  # http: seconds
    max_bytes: int = 16 * 1024 * 1024  # http: response size cap


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes, whole process tree (cgroup)
    cpu: int | None = None  # seconds (RLIMIT_CPU, per process)
    wall: float | None = None  # seconds, whole run
    processes: int | None = None  # whole process tree (cgroup pids)
    files: int | None = None  # RLIMIT_NOFILE
    file_size: int | None = None  # RLIMIT_FSIZE, bytes


@dataclass(frozen=True)
class Env:
    keep: tuple[str, ...] = DEFAULT_ENV_KEEP
    set: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
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
    violation: ViolationMode = "kill"
    qos: Qos | None = None
    best_effort: bool = False
    user: str | None = None  # run the agent as this user (launcher must be root)
    source: str | None = None  # path of the policy file, if any
    sha256: str | None = None  # of the policy file's bytes

    def promise_string(self) -> str:
        caps = sorted(f"{r}:{right}" for r, right in self.capabilities)
        return " ".join([*sorted(self.pledge), *caps])
