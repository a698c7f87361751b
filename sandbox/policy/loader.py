"""Loading and validating policy files (SPEC section 4), and the `-p`/`-v` narrowing (section 3).

This is the only module that knows YAML and locations. It walks PyYAML's node tree (not
constructed Python objects) so that every problem carries FILE:LINE:COLUMN, collects
every problem, and raises PolicyError with all of them. The tables of allowed keys below
are the single source of truth: the loader refuses what they do not list, and `schema()`
(shipped as sandbox/schema.json) is generated from them.
"""

from __future__ import annotations

import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sandbox.plain import replace

if TYPE_CHECKING:
    import yaml
else:

    class _LazyYaml:
        """PyYAML, imported on first use: `sandbox run -p ... -v ...` reads no policy
        file and should not pay ~8 ms of its launch time for the YAML parser."""

        def __getattr__(self, name: str) -> Any:
            import yaml as real

            globals()["yaml"] = real
            return getattr(real, name)

    yaml = _LazyYaml()

from sandbox.errors import PolicyError, Problem
from sandbox.policy import params as param_rules
from sandbox.policy import pathsets
from sandbox.policy.model import (
    DEFAULT_ENV_KEEP,
    PERM_LETTERS,
    RESOURCE_RIGHTS,
    Audit,
    Env,
    Limits,
    LockMode,
    Network,
    Param,
    Policy,
    Resource,
    SyncMode,
    Unveil,
    absolute,
)
from sandbox.policy.nodes import TAG as _TAG
from sandbox.policy.nodes import Ctx as _Ctx
from sandbox.policy.nodes import Fields as _Fields
from sandbox.policy.nodes import Loc as _Loc
from sandbox.policy.nodes import compose as _compose
from sandbox.policy.nodes import line_col as _line_col
from sandbox.policy.nodes import read_text
from sandbox.policy.schema import (
    AUDIT_KEYS,
    ENV_KEYS,
    ENV_NAME_RE,
    HEADER_NAME_RE,
    INIT_KEYS,
    LIMIT_KEYS,
    LOCK_MODES,
    MAX_AUDIT_WINDOW,
    MAX_INT,
    MAX_POLICY_BYTES,
    NAME_RE,
    NETWORK_KEYS,
    PARAM_KEYS,
    QOS_LEVELS,
    RESOURCE_KEYS,
    RESOURCE_NAME_RE,
    RESOURCE_TYPES,
    SYNC_MODES,
    TOP_LEVEL_KEYS,
    UNVEIL_ENTRY_KEYS,
    VIOLATION_MODES,
    promise_names,
    suggest,
)

_UID_RE = re.compile(r"[0-9]{1,10}")  # a uid: 32 bits

# --- Loading -----------------------------------------------------------------------------


def load_policy(path: str | os.PathLike[str], params: Mapping[str, str] | None = None) -> Policy:
    """Load and validate a policy file; PolicyError lists every problem with FILE:LINE:COLUMN.

    `params`: values of its declared parameters (--set NAME=VALUE), already absolute."""
    filename = os.fspath(path)
    text, data = read_text(filename)
    base_dir = os.path.dirname(os.path.abspath(filename))
    return _load(text, data, filename, base_dir, os.path.abspath(filename), params)


def load_policy_text(
    text: str, filename: str, base_dir: str, params: Mapping[str, str] | None = None
) -> Policy:
    """Validate policy text as if read from `filename`; relative paths resolve in `base_dir`."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no file could hold this text
        line, column = _line_col(text, exc.start)
        raise PolicyError(
            [Problem(filename, line, column, "the text is not valid Unicode")]
        ) from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(
            [Problem(filename, 1, 1, f"the file is larger than {MAX_POLICY_BYTES} bytes (1 MiB)")]
        )
    return _load(text, data, filename, os.path.abspath(base_dir), os.path.abspath(filename), params)


def _load(
    text: str,
    data: bytes,
    filename: str,
    base_dir: str,
    source: str,
    params: Mapping[str, str] | None = None,
) -> Policy:
    ctx = _Ctx(filename, text, base_dir, params)
    root = _compose(ctx)
    policy: Policy | None = None
    if root is None and not ctx.problems:
        ctx.error((1, 1), "the policy is empty; it needs at least 'version: 1'")
    elif root is not None:
        stem = os.path.splitext(os.path.basename(filename))[0]
        policy = _build(ctx, root, stem)
    if ctx.problems or policy is None:
        problems = sorted(ctx.problems, key=lambda p: (p.line, p.column))
        raise PolicyError(problems or [Problem(filename, 1, 1, "invalid policy")])
    from sandbox.digest import sha256  # policy files only

    return replace(policy, source=source, sha256=sha256(data).hexdigest())


def _default_name(stem: str) -> str:
    """The file's stem, made a valid name ("My_Agent" -> "my-agent")."""
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)
    return name or "agent"


def _build(ctx: _Ctx, root: yaml.Node, stem: str) -> Policy | None:
    top = ctx.fields(root, "the policy", TOP_LEVEL_KEYS)
    if top is None:
        return None
    values: dict[str, Any] = {}
    # Parameters first: paths and the command below refer to them.
    values["params"] = _params(ctx, top.get("params"), top.key_node("params") or root)

    check_version(ctx, top.get("version"))
    values["name"] = file_name(ctx, top.get("name"), _default_name(stem), " (e.g. 'data-agent')")

    lock: LockMode = "exec"
    node = top.get("lock")
    if node is not None:
        lock = ctx.choice(node, "lock", LOCK_MODES) or lock
        values["lock"] = lock

    resources = _resources(ctx, top.get("resources"))
    declared = _declared_resource_names(top.get("resources"))

    pledge: frozenset[str] | None = frozenset()
    node = top.get("pledge")
    if node is not None:
        words = ctx.words(node, "pledge")
        if words is None:
            pledge = None
        else:
            pledge, caps = _promises(ctx, words, "pledge", resources, declared, allow_caps=True)
            values["pledge"], values["capabilities"] = pledge, caps

    node = top.get("init")
    if node is not None:
        _init(ctx, node, top.key_node("init"), lock, pledge, values)

    node = top.get("execpromises")
    if node is not None:
        words = ctx.words(node, "execpromises")
        if words is not None:
            execp, _ = _promises(ctx, words, "execpromises", resources, declared, allow_caps=False)
            values["execpromises"] = execp
            # Filters only stack: a program the agent executes can never hold more than the
            # agent, so a wider execpromise would only kill it at its first such call.
            held = pledge if pledge is not None and "exec" in pledge else None
            for word, where in words if held is not None else ():
                if word in execp and held is not None and word not in held:
                    ctx.error(
                        where,
                        f"execpromise '{word}' is not in pledge: programs the agent executes "
                        "can hold only what the agent holds (add it to pledge, or remove it)",
                    )
        if pledge is not None and "exec" not in pledge:
            ctx.error(
                top.key_node("execpromises") or node,
                "execpromises needs the promise 'exec' in pledge (without it nothing is executed)",
            )

    node = top.get("unveil")
    if node is not None:
        values["unveil"] = _unveil(ctx, node)

    node = top.get("network")
    if node is not None:
        network = _network(ctx, node)
        if network is not None:
            values["network"] = network
        if pledge is not None and "inet" not in pledge:
            ctx.error(
                top.key_node("network") or node,
                "network rules need the promise 'inet' in pledge (add it, or remove 'network')",
            )

    if resources is not None:
        values["resources"] = MappingProxyType(resources)

    for key, build in _SECTIONS.items():
        node = top.get(key)
        value = None if node is None else build(ctx, node)
        if value is not None:  # None: absent, or a problem already recorded
            values[key] = value

    if ctx.problems:
        return None
    return Policy(**values)


def _command(ctx: _Ctx, node: yaml.Node) -> tuple[str, ...] | None:
    if isinstance(node, yaml.SequenceNode):
        args = [
            ctx.expand(item, ctx.text_of(item, "an argument of command"), "command")
            for item in node.value
        ]
        if any(a is None for a in args):
            return None
        return tuple(a for a in args if a is not None)
    text = ctx.text_of(node, "command")
    if text is None:
        return None
    try:
        import shlex  # a command given as a string

        words = [ctx.expand(node, w, "command") for w in shlex.split(text)]
        if any(w is None for w in words):
            return None
        return tuple(w for w in words if w is not None)
    except ValueError as exc:
        ctx.error(node, f"command cannot be split into words: {exc}")
        return None


def _declared_resource_names(node: yaml.Node | None) -> set[str]:
    """Names under 'resources', even invalid ones, so one typo does not cascade."""
    if not isinstance(node, yaml.MappingNode):
        return set()
    return {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _promises(
    ctx: _Ctx,
    words: list[tuple[str, _Loc]],
    what: str,
    resources: Mapping[str, Resource] | None,
    declared: set[str],
    *,
    allow_caps: bool,
) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """Split promise words into plain promises and capabilities, recording every bad word."""
    known = promise_names()
    plain: set[str] = set()
    caps: set[tuple[str, str]] = set()
    for word, where in words:
        if ":" not in word:
            if word in known:
                plain.add(word)
            else:
                ctx.error(where, f"unknown promise '{word}' in {what}{suggest(word, known)}")
            continue
        resource, _, right = word.partition(":")
        if not allow_caps:
            ctx.error(
                where,
                f"capability promise '{word}' is not allowed in {what}; "
                "capabilities belong in 'pledge'",
            )
            continue
        if resource not in declared:
            hint = suggest(resource, declared)
            ctx.error(
                where,
                f"capability '{word}' names resource '{resource}', which is not declared "
                f"under 'resources'{hint}",
            )
            continue
        res = (resources or {}).get(resource)
        if res is None:
            continue  # the resource itself has a problem, already recorded
        rights = RESOURCE_RIGHTS[res.type]
        if right not in rights:
            ctx.error(
                where,
                f"'{right}' is not a right of {res.type} resource '{resource}'"
                f"{suggest(right, rights)}; rights: {', '.join(sorted(rights))}",
            )
            continue
        caps.add((resource, right))
    return frozenset(plain), frozenset(caps)


def _params(ctx: _Ctx, node: yaml.Node | None, where: yaml.Node) -> tuple[Param, ...]:
    """The declared parameters, each with its value (--set, else its default), entered into
    ctx.values in order: a default may refer to CWD, HOME and the parameters above it."""
    declared: list[Param] = []
    entries = [] if node is None else ctx.items(node, "params") or []
    for name, key_node, value_node in entries:
        problem = param_rules.check_name(name)
        if problem is None and name in param_rules.BUILTINS:
            problem = f"{name} is built in ({param_rules.BUILTINS[name]}); choose another name"
        if problem is not None:
            ctx.error(key_node, f"params: {problem}")
            continue
        doc, default = "", None
        if isinstance(value_node, yaml.MappingNode):
            fields = ctx.fields(value_node, f"parameter {name}", PARAM_KEYS)
            if fields is None:
                continue
            n = fields.get("doc")
            doc = (ctx.text_of(n, f"doc of parameter {name}") or "") if n is not None else ""
            n = fields.get("default")
            if n is not None:
                default = ctx.text_of(n, f"default of parameter {name}")
                if default is None:
                    continue
                expanded = ctx.expand(n, default, f"default of parameter {name}")
                problem = None if expanded is None else param_rules.check_value(name, expanded)
                if problem is not None:
                    ctx.error(n, problem)
                if expanded is None or problem is not None:
                    continue
                ctx.values[name] = expanded
        else:
            doc = ctx.text_of(value_node, f"parameter {name}") or ""
        if name in ctx.given:
            ctx.values[name] = ctx.given[name]
        elif default is None:
            ctx.error(key_node, f"parameter {name} has no default: give it with --set {name}=...")
        declared.append(Param(name, doc, default, ctx.values.get(name)))
    names = {p.name for p in declared}
    for name in ctx.given:
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            ctx.error(
                where, f"--set {name}: the policy declares no parameter {name} (it has: {known})"
            )
    return tuple(declared)


def _init(
    ctx: _Ctx,
    node: yaml.Node,
    key_node: yaml.Node | None,
    lock: LockMode,
    pledge: frozenset[str] | None,
    values: dict[str, Any],
) -> None:
    if lock != "agent":
        ctx.error(
            key_node or node,
            "'init' applies only with 'lock: agent' "
            "(with lock: exec the agent never runs unlocked)",
        )
    fields = ctx.fields(node, "init", INIT_KEYS)
    if fields is None:
        return
    timeout = fields.get("timeout")
    if timeout is not None:
        seconds = ctx.duration(timeout, "init.timeout")
        if seconds is not None:
            values["init_timeout"] = seconds
    init_pledge = fields.get("pledge")
    if init_pledge is not None:
        words = ctx.words(init_pledge, "init.pledge")
        if words is None:
            return
        # Capabilities are broker rights, not system calls: they make no sense before lock.
        promises, _ = _promises(ctx, words, "init.pledge", None, set(), allow_caps=False)
        values["init_pledge"] = promises
        # Seccomp filters stack: what the init filter forbids, the agent can never promise.
        missing = sorted((pledge or frozenset()) - promises)
        if missing:
            ctx.error(
                init_pledge,
                f"init.pledge must include every promise of pledge; missing: {' '.join(missing)}",
            )


def _path_text(ctx: _Ctx, node: yaml.Node, raw: str | None, what: str) -> str | None:
    raw = ctx.expand(node, raw, what)
    if raw is None:
        return None
    if raw == "":
        ctx.error(node, f"{what} is empty; write '.' for the policy's directory")
        return None
    if "\0" in raw:
        ctx.error(node, f"{what} contains a NUL character")
        return None
    if raw.startswith("~"):
        ctx.error(node, f"{what} '{raw}': '~' is not expanded; write the absolute path")
        return None
    return raw


def _perms(ctx: _Ctx, node: yaml.Node, path: str) -> frozenset[str] | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null":
        ctx.error(node, f"permissions of '{path}' are missing (write \"\" for visible, no rights)")
        return None
    text = ctx.text_of(node, f"permissions of '{path}'")
    if text is None:
        return None
    bad = sorted({c for c in text if c not in PERM_LETTERS})
    if bad:
        ctx.error(
            node,
            f"unknown permission {', '.join(repr(c) for c in bad)} for '{path}': "
            f"use any of r (read) w (write) x (execute) c (create/remove)",
        )
        return None
    return frozenset(text)


def _unveil(ctx: _Ctx, node: yaml.Node) -> tuple[Unveil, ...]:
    entries = ctx.items(node, "unveil")
    out: list[Unveil] = []
    seen: dict[str, tuple[str, yaml.Node]] = {}
    for raw, key_node, value_node in entries or []:
        path = _path_text(ctx, key_node, raw, "an unveil path")
        optional = False
        if isinstance(value_node, yaml.MappingNode):
            fields = ctx.fields(value_node, f"unveil '{raw}'", UNVEIL_ENTRY_KEYS)
            if fields is None:
                continue
            perms_node = fields.get("perms")
            perms = None if perms_node is None else _perms(ctx, perms_node, raw)
            opt_node = fields.get("optional")
            if opt_node is not None:
                optional = bool(ctx.boolean(opt_node, f"optional of '{raw}'"))
        else:
            perms = _perms(ctx, value_node, raw)
        if path is None:
            continue
        if path.startswith("@"):
            expanded = pathsets.expand(path)
            if expanded is None:
                ctx.error(
                    key_node,
                    f"unknown path set '{path}' (known: {', '.join(sorted(pathsets.PATH_SETS))})",
                )
            elif perms is not None:
                out.extend(
                    Unveil(p, perms, True) for p in expanded if p not in {u.path for u in out}
                )
            continue
        resolved = absolute(ctx.base_dir, path)
        if resolved in seen:
            first_raw, first_node = seen[resolved]
            ctx.error(
                key_node,
                f"duplicate unveil path '{resolved}' (also '{first_raw}' at line "
                f"{first_node.start_mark.line + 1})",
            )
            continue
        seen[resolved] = (raw, key_node)
        if not optional and not os.path.exists(resolved):
            ctx.error(
                key_node,
                f"unveil path '{resolved}' does not exist; create it, fix the path, "
                "or write {perms: ..., optional: true}",
            )
            continue
        if perms is not None:
            out.append(Unveil(resolved, perms, optional))
    return tuple(out)


def _ports(ctx: _Ctx, node: yaml.Node | None, what: str) -> tuple[int, ...] | None:
    if node is None:
        return ()
    items = ctx.sequence(node, what)
    if items is None:
        return None
    ports = [ctx.integer(item, f"a port in {what}", 0, 65535) for item in items]
    if any(p is None for p in ports):
        return None
    return tuple(dict.fromkeys(p for p in ports if p is not None))


def _network(ctx: _Ctx, node: yaml.Node) -> Network | None:
    fields = ctx.fields(node, "network", NETWORK_KEYS)
    if fields is None:
        return None
    connect = _ports(ctx, fields.get("connect"), "network.connect")
    bind = _ports(ctx, fields.get("bind"), "network.bind")
    if connect is None or bind is None:
        return None
    return Network(connect=connect, bind=bind)


def _resources(ctx: _Ctx, node: yaml.Node | None) -> dict[str, Resource] | None:
    if node is None:
        return {}
    entries = ctx.items(node, "resources")
    if entries is None:
        return None
    out: dict[str, Resource] = {}
    for name, key_node, value_node in entries:
        if not RESOURCE_NAME_RE.fullmatch(name):
            ctx.error(key_node, f"resource name '{name}' must match {RESOURCE_NAME_RE.pattern}")
            continue
        resource = _resource(ctx, name, value_node)
        if resource is not None:
            out[name] = resource
    return out


def _resource(ctx: _Ctx, name: str, node: yaml.Node) -> Resource | None:
    what = f"resource '{name}'"
    entries = ctx.items(node, what)
    if entries is None:
        return None
    type_node = next((v for k, _, v in entries if k == "type"), None)
    if type_node is None:
        ctx.error(node, f"{what} needs a 'type': one of {', '.join(RESOURCE_TYPES)}")
        return None
    rtype = ctx.choice(type_node, f"type of {what}", RESOURCE_TYPES)
    if rtype is None:
        return None
    fields = ctx.fields_of(entries, node, what, RESOURCE_KEYS[rtype])
    if rtype == "dir":
        return _dir_resource(ctx, name, fields)
    if rtype == "agent":  # which agents exist is the system file's to check
        return Resource(name=name, type="agent")
    return _http_resource(ctx, name, fields)


def _dir_resource(ctx: _Ctx, name: str, fields: _Fields) -> Resource | None:
    node = fields.get("path")
    if node is None:
        return None
    raw = _path_text(ctx, node, ctx.text_of(node, f"path of resource '{name}'"), "a path")
    if raw is None:
        return None
    path = absolute(ctx.base_dir, raw)
    if not os.path.isdir(path):
        state = "is not a directory" if os.path.exists(path) else "does not exist"
        ctx.error(node, f"path '{path}' of resource '{name}' {state}")
        return None
    return Resource(name=name, type="dir", path=path)


def _http_resource(ctx: _Ctx, name: str, fields: _Fields) -> Resource | None:
    ok = True
    url: str | None = None
    node = fields.get("url")
    if node is not None:
        url = ctx.text_of(node, f"url of resource '{name}'")
        problem = None if url is None else _url_problem(url)
        if problem is not None:
            ctx.error(node, f"url '{url}' of resource '{name}' {problem}")
            url = None
    headers: dict[str, str] = {}
    node = fields.get("headers")
    if node is not None:
        for header, key_node, value_node in ctx.items(node, f"headers of '{name}'") or []:
            value = ctx.text_of(value_node, f"header '{header}'")
            if not HEADER_NAME_RE.fullmatch(header):
                ctx.error(key_node, f"'{header}' is not a valid HTTP header name")
                ok = False
            elif value is not None and _header_value_problem(value):
                ctx.error(value_node, f"header '{header}': {_header_value_problem(value)}")
                ok = False
            elif value is not None:
                headers[header] = value
            else:
                ok = False
    extra: dict[str, Any] = {}
    node = fields.get("timeout")
    if node is not None:
        extra["timeout"] = ctx.duration(node, f"timeout of '{name}'")
    node = fields.get("max_bytes")
    if node is not None:
        extra["max_bytes"] = ctx.size(node, f"max_bytes of '{name}'", minimum=1)
    if url is None or not ok or None in extra.values():
        return None
    return Resource(name=name, type="http", url=url, headers=MappingProxyType(headers), **extra)


def _url_problem(url: str) -> str | None:
    try:
        import urllib.parse  # only a policy with HTTP resources

        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError as exc:
        return f"is malformed: {exc}"
    del port
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain credentials; put them in 'headers' as env:NAME"
    if parts.query or parts.fragment:
        return "must be a prefix without '?query' or '#fragment'"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    return None


def _header_value_problem(value: str) -> str | None:
    if "\r" in value or "\n" in value:
        return "a value must not contain line breaks"
    if value.startswith("env:") and not ENV_NAME_RE.fullmatch(value[4:]):
        return f"'{value}': after 'env:' write an environment variable name, e.g. env:API_KEY"
    return None


def _limits(ctx: _Ctx, node: yaml.Node) -> Limits | None:
    fields = ctx.fields(node, "limits", LIMIT_KEYS)
    if fields is None:
        return None
    values: dict[str, Any] = {}
    n = fields.get("memory")
    if n is not None:
        values["memory"] = ctx.size(n, "limits.memory", minimum=1)
    n = fields.get("cpu")
    if n is not None:
        seconds = ctx.duration(n, "limits.cpu")
        # RLIMIT_CPU counts whole seconds; round up so the limit is never below what was asked.
        values["cpu"] = None if seconds is None else max(1, math.ceil(seconds))
    n = fields.get("wall")
    if n is not None:
        values["wall"] = ctx.duration(n, "limits.wall")
    n = fields.get("processes")
    if n is not None:
        values["processes"] = ctx.integer(n, "limits.processes", 1, MAX_INT)
    n = fields.get("files")
    if n is not None:
        values["files"] = ctx.integer(n, "limits.files", 1, MAX_INT)
    n = fields.get("file_size")
    if n is not None:
        values["file_size"] = ctx.size(n, "limits.file_size")
    if None in values.values():
        return None
    return Limits(**values)


def _env(ctx: _Ctx, node: yaml.Node) -> Env | None:
    fields = ctx.fields(node, "env", ENV_KEYS)
    if fields is None:
        return None
    ok = True
    keep: tuple[str, ...] = DEFAULT_ENV_KEEP
    n = fields.get("keep")
    if n is not None:
        names = []
        for item in ctx.sequence(n, "env.keep") or []:
            name = ctx.text_of(item, "a name in env.keep")
            if name is not None and not ENV_NAME_RE.fullmatch(name):
                ctx.error(item, f"'{name}' is not a valid environment variable name")
                name = None
            if name is None:
                ok = False
            else:
                names.append(name)
        keep = tuple(dict.fromkeys(names))
    values: dict[str, str] = {}
    n = fields.get("set")
    if n is not None:
        for name, key_node, value_node in ctx.items(n, "env.set") or []:
            value = ctx.text_of(value_node, f"env.set.{name}")
            if not ENV_NAME_RE.fullmatch(name):
                ctx.error(key_node, f"'{name}' is not a valid environment variable name")
                ok = False
            elif value is None:
                ok = False
            else:
                values[name] = value
    return Env(keep=keep, set=MappingProxyType(values)) if ok else None


def check_version(ctx: _Ctx, node: yaml.Node | None) -> None:
    """A policy's or a system file's `version`: 1, the only one this sandbox reads."""
    if node is not None:
        version = ctx.integer(node, "version", 0, MAX_INT)
        if version is not None and version != 1:
            ctx.error(node, f"version {version} is not supported; this sandbox reads version 1")


def file_name(ctx: _Ctx, node: yaml.Node | None, default: str, example: str = "") -> str:
    """A policy's or a system file's `name` (`default` if absent or wrong, which is an
    error at its node)."""
    if node is None:
        return default
    name = ctx.text_of(node, "name")
    if name is not None and not NAME_RE.fullmatch(name):
        ctx.error(node, f"name '{name}' must match [a-z][a-z0-9-]*{example}")
        return default
    return default if name is None else name


def audit_settings(ctx: _Ctx, node: yaml.Node, where: str = "audit") -> Audit | None:
    """`audit: {sync: durable|batch, window: DURATION}` (policies and system files)."""
    fields = ctx.fields(node, where, AUDIT_KEYS)
    if fields is None:
        return None
    n = fields.get("sync")
    sync: SyncMode | None = "durable" if n is None else ctx.choice(n, f"{where}.sync", SYNC_MODES)
    window: float | None = Audit.window
    n = fields.get("window")
    if n is not None:
        window = ctx.duration(n, f"{where}.window")
        if window is not None and window > MAX_AUDIT_WINDOW:
            ctx.error(
                n,
                f"{where}.window must be at most {MAX_AUDIT_WINDOW:g}s: it bounds what a power "
                "loss may take from the log",
            )
            window = None
        elif window is not None and sync == "durable":
            ctx.error(n, f"{where}.window applies only with 'sync: batch' (durable syncs all)")
            window = None
    if sync is None or window is None:
        return None
    return Audit(sync=sync, window=window)


def _user(ctx: _Ctx, node: yaml.Node) -> str | None:
    user = ctx.text_of(node, "user")
    if user is None:
        return None
    shown = user if len(user) <= 40 else f"{user[:37]}..."
    try:
        # ASCII digits only: str.isdigit() is also true of '²' and other digits int() refuses.
        if _UID_RE.fullmatch(user):
            pwd.getpwuid(int(user))
        else:
            pwd.getpwnam(user)
    except (KeyError, OverflowError, ValueError):
        # ValueError: a name pwd cannot even look up (an embedded NUL, a surrogate).
        ctx.error(node, f"user '{shown}' is not in the passwd database (see getent passwd)")
        return None
    return user


# Sections that depend on nothing but their own node: key -> builder (None: a problem was
# recorded). The others (name, lock, pledge, init, execpromises, unveil, network,
# resources) check each other and are built above in order.
_SECTIONS: Mapping[str, Callable[[_Ctx, yaml.Node], object]] = MappingProxyType(
    {
        "command": _command,
        "limits": _limits,
        "env": _env,
        "audit": audit_settings,
        "violation": lambda ctx, n: ctx.choice(n, "violation", VIOLATION_MODES),
        "qos": lambda ctx, n: ctx.choice(n, "qos", QOS_LEVELS),
        "best_effort": lambda ctx, n: ctx.boolean(n, "best_effort"),
        "user": _user,
    }
)


def check_files(paths: list[str], params: Mapping[str, str] | None = None) -> tuple[int, list[str]]:
    """`sandbox check POLICY...`: (0, []) if all are valid, else (2, every problem line)."""
    if not paths:
        return 2, ["sandbox check: give at least one policy file"]
    lines: list[str] = []
    for path in paths:
        try:
            load_policy(path, params)
        except PolicyError as exc:
            lines.extend(str(problem) for problem in exc.problems)
    return (2 if lines else 0), lines
