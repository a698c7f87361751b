"""Supervision decisions with Erlang/OTP's semantics, on the plain-data tree.

Pure logic, no processes: given which child of which supervisor exited and how, it says
which agents to stop (in reverse start order) and which to start (in start order), or
that the supervisor gives up. The dispatcher carries the steps out.

- restart types: permanent (always restarted), transient (only after an abnormal exit),
  temporary (never; also not restarted when its siblings are).
- strategies: one_for_one (the child), one_for_all (every child), rest_for_one (the
  child and those started after it).
- intensity and period: a supervisor that would restart more than `intensity` times
  within `period` seconds gives up: it stops all its children and exits abnormally to
  its own supervisor, which applies its strategy to it as to any child. The root giving
  up ends the system.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sandbox.system.model import AgentSpec, SupervisorSpec


@dataclass(eq=False)
class Node:
    """A supervisor at run time: its spec, its parent, its recent restarts."""

    spec: SupervisorSpec
    parent: Node | None = None
    children: list[str | Node] = field(default_factory=list)
    restarts: deque[float] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.spec.name

    def agents(self) -> Iterator[str]:
        return self.spec.agents()  # the run-time tree has the spec's shape


def build(spec: SupervisorSpec, parent: Node | None = None) -> Node:
    node = Node(spec, parent)
    node.children = [c if isinstance(c, str) else build(c, node) for c in spec.children]
    return node


def parents(root: Node) -> dict[str, Node]:
    """agent -> the supervisor it is a child of."""
    out: dict[str, Node] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        for child in node.children:
            if isinstance(child, str):
                out[child] = node
            else:
                stack.append(child)
    return out


@dataclass
class Decision:
    """What to do after an exit: stop these (in this order), then start these."""

    stop: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # agents counted as restarted
    gave_up: list[tuple[str, str]] = field(default_factory=list)  # (supervisor, why)
    root_failed: bool = False


def needs_restart(spec: AgentSpec, normal: bool) -> bool:
    return spec.restart == "permanent" or (spec.restart == "transient" and not normal)


def _agents_of(child: str | Node) -> list[str]:
    return [child] if isinstance(child, str) else list(child.agents())


def decide(
    root: Node,
    agents: Mapping[str, AgentSpec],
    agent: str,
    normal: bool,
    now: float,
) -> Decision:
    """The steps after `agent` exited (`normal`: with status 0) on its own."""
    decision = Decision()
    if not needs_restart(agents[agent], normal):
        return decision
    node = parents(root)[agent]
    child: str | Node = agent
    while True:
        node.restarts.append(now)
        while node.restarts and node.restarts[0] < now - node.spec.period:
            node.restarts.popleft()
        if len(node.restarts) > node.spec.intensity:
            why = (
                f"{len(node.restarts)} restarts within {node.spec.period:g}s "
                f"(intensity {node.spec.intensity})"
            )
            decision.gave_up.append((node.name, why))
            # Stop everything beneath it, in reverse start order; then its parent decides.
            decision.stop.extend(reversed(list(node.agents())))
            node.restarts.clear()
            if node.parent is None:
                decision.root_failed = True
                decision.start.clear()
                return decision
            child, node = node, node.parent
            continue
        index = node.children.index(child)
        strategy = node.spec.strategy
        if strategy == "one_for_one":
            group = [child]
        elif strategy == "one_for_all":
            group = list(node.children)
        else:  # rest_for_one
            group = node.children[index:]
        members = [a for c in group for a in _agents_of(c)]
        # The siblings are stopped in reverse start order; the child that failed is down.
        decision.stop.extend(a for a in reversed(members) if a not in decision.stop)
        for a in members:
            if a == agent or agents[a].restart != "temporary":
                decision.start.append(a)
        decision.restarted.extend(decision.start)
        if isinstance(child, Node):
            child.restarts.clear()  # a restarted supervisor starts with a clean window
        return decision
