"""Loading and validating system files (SPEC section 9), like policy files.

The same node walker as policies (sandbox.policy.nodes): every problem with
FILE:LINE:COLUMN, all of them, exit 2 and nothing started. Each agent's policy is loaded
with the policy loader (its problems carry the policy file's locations), then checked
against the system: a `NAME:send` capability must name an agent of the system.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sandbox.digest import sha256
from sandbox.errors import PolicyError, Problem
from sandbox.plain import plain, replace
from sandbox.policy.loader import audit_settings, check_version, file_name, load_policy
from sandbox.policy.model import Audit, Qos, absolute
from sandbox.policy.nodes import Ctx, compose, read_text
from sandbox.policy.schema import MAX_INT, NAME_RE, QOS_LEVELS, Field, suggest
from sandbox.system.model import (
    DEFAULT_INBOX,
    DEFAULT_INTENSITY,
    DEFAULT_PERIOD,
    DEFAULT_QOS,
    DEFAULT_SHUTDOWN,
    RESTARTS,
    STRATEGIES,
    AgentSpec,
    SupervisorSpec,
    System,
)

if TYPE_CHECKING:
    import yaml
    import yaml as _yaml
else:
    from sandbox.policy.nodes import yaml

MAX_INBOX = 1_000_000
ROOT = "root"

_S = {"type": "string"}
AGENT_KEYS: Mapping[str, Field] = {
    "policy": Field(_S, "the agent's policy file, relative to the system file", required=True),
    "qos": Field({"enum": list(QOS_LEVELS)}, "scheduling class; default: the policy's or utility"),
    "restart": Field({"enum": list(RESTARTS)}, "permanent (default) | transient | temporary"),
    "shutdown": Field(_S, "time between SIGTERM and SIGKILL when stopped; default 5s"),
    "inbox": Field({"type": "integer"}, "messages not yet acknowledged; default 1000"),
}
SUPERVISOR_KEYS: Mapping[str, Field] = {
    "name": Field(_S, "the supervisor's name in records (inline supervisors)"),
    "strategy": Field({"enum": list(STRATEGIES)}, "one_for_one (default) | one_for_all | ..."),
    "intensity": Field({"type": "integer"}, "restarts allowed within period; default 3"),
    "period": Field(_S, "the intensity window; default 5s"),
    "children": Field({"type": "array"}, "agents and supervisors, in start order"),
}
TOP_KEYS: Mapping[str, Field] = {
    "version": Field({"const": 1}, "format version, must be 1", required=True),
    "name": Field(_S, "the system's name; default: the file's stem"),
    "state": Field(_S, "message log, audit log and control socket; default state/"),
    "agents": Field({"type": "object"}, "name: {policy, qos, restart, shutdown, inbox}", True),
    "supervision": Field({"type": "object"}, "the root supervisor"),
    "supervisors": Field({"type": "object"}, "named supervisors, referred to in children"),
    "route": Field(_S, "where a user message without @name goes; default: the first agent"),
    "send_timeout": Field(_S, "how long a send waits on a full inbox; default 5s"),
    "audit": Field(
        {"type": "object"}, "{sync: durable|batch, window}: the shared audit log's durability"
    ),
}


def load_system(path: str | os.PathLike[str]) -> System:
    """Load a system file and every policy it names; PolicyError lists every problem."""
    filename = os.fspath(path)
    text, data = read_text(filename, "system file")
    base_dir = os.path.dirname(os.path.abspath(filename))
    ctx = Ctx(filename, text, base_dir)
    root = compose(ctx)
    system: System | None = None
    if root is None and not ctx.problems:
        ctx.error((1, 1), "the system file is empty; it needs 'version: 1' and 'agents'")
    elif root is not None:
        system = _build(ctx, root, filename, sha256(data).hexdigest())
    if ctx.problems or system is None:
        problems = ctx.problems or [Problem(filename, 1, 1, "invalid system file")]
        order = sorted(problems, key=lambda p: (p.file == filename, p.file, p.line, p.column))
        raise PolicyError(order)  # the policies first: the system file refers to them
    return system


def is_system_file(path: str) -> bool:
    """A YAML file with a top-level `agents` mapping is a system file (for check/explain)."""
    try:
        text, _ = read_text(path)
    except PolicyError:
        return False
    return any(line.startswith("agents:") for line in text.splitlines())


def _build(ctx: Ctx, root: _yaml.Node, filename: str, sha: str) -> System | None:
    top = ctx.fields(root, "the system file", TOP_KEYS)
    if top is None:
        return None
    check_version(ctx, top.get("version"))
    name = file_name(ctx, top.get("name"), os.path.splitext(os.path.basename(filename))[0])
    state = absolute(ctx.base_dir, "state")
    node = top.get("state")
    if node is not None:
        value = ctx.text_of(node, "state")
        if value == "":
            ctx.error(node, "state is empty; write a directory such as state/")
        elif value is not None:
            state = absolute(ctx.base_dir, value)
    send_timeout = 5.0
    node = top.get("send_timeout")
    if node is not None:
        send_timeout = ctx.duration(node, "send_timeout") or send_timeout

    agents: dict[str, AgentSpec] = {}
    agent_nodes: dict[str, _yaml.Node] = {}
    node = top.get("agents")
    if node is not None:
        for agent, key_node, value_node in ctx.items(node, "agents") or []:
            if not NAME_RE.fullmatch(agent):
                ctx.error(key_node, f"agent name '{agent}' must match [a-z][a-z0-9-]*")
                continue
            agent_nodes[agent] = key_node
            spec = _agent(ctx, agent, value_node)
            if spec is not None:
                agents[agent] = spec
        if not agent_nodes:
            ctx.error(node, "agents is empty; a system needs at least one agent")
    known = set(agent_nodes)  # valid names, even where the agent has problems: no cascade

    named = _named_supervisors(ctx, top.get("supervisors"))
    node = top.get("supervision")
    if node is not None:
        tree = _supervisor(ctx, node, ROOT, _Tree(known, named, {}), [])
    else:
        tree = SupervisorSpec(ROOT, children=tuple(agent_nodes))
    if tree is not None:
        placed = set(tree.agents())
        for agent, key_node in agent_nodes.items():
            if agent not in placed:
                ctx.error(key_node, f"agent '{agent}' is in no supervisor's children")

    route = next(iter(agent_nodes), "")
    node = top.get("route")
    if node is not None:
        value = ctx.text_of(node, "route")
        if value is not None and value not in known:
            ctx.error(
                node, f"route names agent '{value}', which is not in agents{suggest(value, known)}"
            )
        elif value is not None:
            route = value

    audit = Audit()
    node = top.get("audit")
    if node is not None:
        audit = audit_settings(ctx, node) or audit
    for agent, spec in agents.items():
        _check_sends(ctx, spec, known)
        # One audit log for the whole system: an agent cannot have a mode of its own.
        if spec.policy.audit not in (Audit(), audit):
            mode = spec.policy.audit.sync
            ctx.error(
                agent_nodes[agent],
                f"agent '{agent}': its policy asks for 'audit: sync: {mode}', but the agents of a "
                f"system share the dispatcher's audit log ({audit.sync}); set 'audit' in the "
                "system file",
            )
    if ctx.problems or tree is None:
        return None
    return System(
        name=name,
        source=os.path.abspath(filename),
        sha256=sha,
        base_dir=ctx.base_dir,
        state_dir=state,
        agents=agents,
        tree=tree,
        route=route,
        send_timeout=send_timeout,
        audit=audit,
    )


def _agent(ctx: Ctx, agent: str, node: _yaml.Node) -> AgentSpec | None:
    what = f"agent '{agent}'"
    fields = ctx.fields(node, what, AGENT_KEYS)
    if fields is None:
        return None
    values = _values(ctx, fields, what, _AGENT_VALUES)
    ok = None not in values.values()
    n = fields.get("policy")
    raw = None if n is None else ctx.text_of(n, f"policy of {what}")
    if n is None or raw is None:
        return None
    path = absolute(ctx.base_dir, raw)
    try:
        policy = load_policy(path)
    except PolicyError as e:
        # The policy's own problems, at its own locations; and where the system names it.
        ctx.problems.extend(e.problems)
        ctx.error(n, f"policy '{raw}' of {what} is not valid (problems above)")
        return None
    if not policy.command:
        ctx.error(n, f"policy '{raw}' of {what} has no command")
        ok = False
    if not ok:
        return None
    qos: Qos = values.pop("qos", None) or policy.qos or DEFAULT_QOS
    policy = replace(policy, name=agent, qos=qos)
    return AgentSpec(
        name=agent,
        policy=policy,
        policy_path=path,
        qos=qos,
        restart=values.get("restart", "permanent"),
        shutdown=values.get("shutdown", DEFAULT_SHUTDOWN),
        inbox=values.get("inbox", DEFAULT_INBOX),
    )


# key -> how its value is read (None: a problem was recorded).
_Reader = Callable[[Ctx, "_yaml.Node", str], Any]
_AGENT_VALUES: Mapping[str, _Reader] = {
    "qos": lambda ctx, n, what: ctx.choice(n, what, QOS_LEVELS),
    "restart": lambda ctx, n, what: ctx.choice(n, what, RESTARTS),
    "shutdown": lambda ctx, n, what: ctx.duration(n, what),
    "inbox": lambda ctx, n, what: ctx.integer(n, what, 1, MAX_INBOX),
}
_SUPERVISOR_VALUES: Mapping[str, _Reader] = {
    "strategy": lambda ctx, n, what: ctx.choice(n, what, STRATEGIES),
    "intensity": lambda ctx, n, what: ctx.integer(n, what, 0, MAX_INT),
    "period": lambda ctx, n, what: ctx.duration(n, what),
}


def _values(ctx: Ctx, fields: Any, what: str, table: Mapping[str, _Reader]) -> dict[str, Any]:
    """The keys of `table` present in `fields`, each read by its reader."""
    out: dict[str, Any] = {}
    for key, read in table.items():
        node = fields.get(key)
        if node is not None:
            out[key] = read(ctx, node, f"{key} of {what}")
    return out


def _named_supervisors(ctx: Ctx, node: _yaml.Node | None) -> dict[str, _yaml.Node]:
    out: dict[str, _yaml.Node] = {}
    if node is None:
        return out
    for name, key_node, value_node in ctx.items(node, "supervisors") or []:
        if not NAME_RE.fullmatch(name):
            ctx.error(key_node, f"supervisor name '{name}' must match [a-z][a-z0-9-]*")
            continue
        out[name] = value_node
    return out


@plain
class _Tree:
    """What checking the supervision tree needs throughout."""

    known: set[str]  # the agents' names
    named: Mapping[str, _yaml.Node]  # named supervisors
    placed: dict[str, _yaml.Node]  # agents already in the tree (duplicate check)


def _supervisor(
    ctx: Ctx, node: _yaml.Node, name: str, tree: _Tree, path: list[str]
) -> SupervisorSpec | None:
    """One supervisor; `path` is the chain of named supervisors above (cycle check)."""
    what = "supervision" if name == ROOT else f"supervisor '{name}'"
    fields = ctx.fields(node, what, SUPERVISOR_KEYS)
    if fields is None:
        return None
    values: dict[str, Any] = {}
    n = fields.get("name")
    if n is not None:
        text = ctx.text_of(n, f"name of {what}")
        if text is not None and not NAME_RE.fullmatch(text):
            ctx.error(n, f"supervisor name '{text}' must match [a-z][a-z0-9-]*")
        elif text is not None:
            name = text
    values.update(_values(ctx, fields, what, _SUPERVISOR_VALUES))
    children: list[str | SupervisorSpec] = []
    n = fields.get("children")
    items = [] if n is None else ctx.sequence(n, f"children of {what}") or []
    if n is not None and not items and isinstance(n, yaml.SequenceNode):
        ctx.error(n, f"children of {what} is empty")
    for index, item in enumerate(items):
        child = _child(ctx, item, f"{name}.{index + 1}", tree, path)
        if child is not None:
            children.append(child)
    if None in values.values():
        return None
    return SupervisorSpec(
        name=name,
        strategy=values.get("strategy", "one_for_one"),
        intensity=values.get("intensity", DEFAULT_INTENSITY),
        period=values.get("period", DEFAULT_PERIOD),
        children=tuple(children),
    )


def _child(
    ctx: Ctx, item: _yaml.Node, default_name: str, tree: _Tree, path: list[str]
) -> str | SupervisorSpec | None:
    if isinstance(item, yaml.MappingNode):
        return _supervisor(ctx, item, default_name, tree, path)
    ref = ctx.text_of(item, "a child")
    if ref is None:
        return None
    known, named, placed = tree.known, tree.named, tree.placed
    if ref in named:
        if ref in path:
            cycle = " -> ".join([*path[path.index(ref) :], ref])
            ctx.error(item, f"supervisors form a cycle: {cycle}")
            return None
        return _supervisor(ctx, named[ref], ref, tree, [*path, ref])
    if ref not in known:
        choices = known | set(named)
        ctx.error(
            item, f"child '{ref}' is neither an agent nor a supervisor{suggest(ref, choices)}"
        )
        return None
    if ref in placed:
        first = placed[ref].start_mark.line + 1
        ctx.error(item, f"duplicate child '{ref}' (already supervised, line {first})")
        return None
    placed[ref] = item
    return ref


def _check_sends(ctx: Ctx, spec: AgentSpec, known: set[str]) -> None:
    """Every agent resource of the policy (`NAME: {type: agent}`) names an agent here."""
    for res in spec.policy.resources.values():
        if res.type == "agent" and res.name not in known:
            where = _resource_location(spec.policy_path, res.name)
            ctx.problems.append(
                Problem(
                    spec.policy_path,
                    *where,
                    f"resource '{res.name}' (type agent) names no agent of system "
                    f"{ctx.filename}{suggest(res.name, known)}; its '{res.name}:send' "
                    "could reach nobody",
                )
            )


def _resource_location(policy_path: str, name: str) -> tuple[int, int]:
    """Where `resources: {name: ...}` is written in a policy file (loaded before: valid)."""
    try:
        text, _ = read_text(policy_path)
    except PolicyError:
        return 1, 1
    pctx = Ctx(policy_path, text, os.path.dirname(policy_path))
    root = compose(pctx)
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if getattr(key, "value", None) == "resources" and isinstance(value, yaml.MappingNode):
                for rkey, _ in value.value:
                    if getattr(rkey, "value", None) == name:
                        return rkey.start_mark.line + 1, rkey.start_mark.column + 1
    return 1, 1


def check_files(paths: list[str], params: Mapping[str, str] | None = None) -> tuple[int, list[str]]:
    """`sandbox check FILE...` for policy and system files alike: (0, []) or (2, problems).
    `params`: the policies' parameters (--set NAME=VALUE)."""
    from sandbox.policy.loader import check_files as check_policies

    lines: list[str] = []
    policies = [p for p in paths if not is_system_file(p)]
    for path in paths:
        if path not in policies:
            try:
                load_system(path)
            except PolicyError as exc:
                lines.extend(str(problem) for problem in exc.problems)
    status, more = check_policies(policies, params) if policies or not paths else (0, [])
    lines.extend(more)
    return (2 if lines or status else 0), lines
