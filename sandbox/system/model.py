"""The validated system file (SPEC section 9): plain, immutable data.

The supervision tree is data, as in Erlang/OTP's child specifications: a supervisor is
its strategy, its restart intensity window and its ordered children (agent names or
nested supervisors). The dispatcher (sandbox.system.dispatcher) interprets it; the
decisions themselves are in sandbox.system.supervisor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

from sandbox.plain import field, plain
from sandbox.policy.model import Audit, Policy, Qos

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]

STRATEGIES: tuple[Strategy, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS: tuple[Restart, ...] = ("permanent", "transient", "temporary")
# GCD's classes, in the order the dispatcher serves them (lower first).
QOS_RANK: Mapping[str, int] = {"interactive": 0, "initiated": 1, "utility": 2, "background": 3}
DEFAULT_QOS: Qos = "utility"

DEFAULT_INTENSITY = 3  # restarts ...
DEFAULT_PERIOD = 5.0  # ... within this many seconds, else the supervisor gives up
DEFAULT_SHUTDOWN = 5.0  # seconds between SIGTERM and SIGKILL
DEFAULT_INBOX = 1000  # messages sent to an agent and not yet acknowledged
DEFAULT_SEND_TIMEOUT = 5.0  # how long a send waits for room in a full inbox


@plain(frozen=True)
class AgentSpec:
    name: str  # the key under `agents`: the agent's name in messages and records
    policy: Policy  # its name replaced by the agent's
    policy_path: str
    qos: Qos = DEFAULT_QOS
    restart: Restart = "permanent"
    shutdown: float = DEFAULT_SHUTDOWN
    inbox: int = DEFAULT_INBOX

    @property
    def sends_to(self) -> frozenset[str]:
        """The agents this one may send to (its `NAME:send` capabilities)."""
        return frozenset(r for r, right in self.policy.capabilities if right == "send")


@plain(frozen=True)
class SupervisorSpec:
    name: str
    strategy: Strategy = "one_for_one"
    intensity: int = DEFAULT_INTENSITY
    period: float = DEFAULT_PERIOD
    children: tuple[str | SupervisorSpec, ...] = ()

    def agents(self) -> Iterator[str]:
        """Every agent beneath this supervisor, in start order."""
        for child in self.children:
            if isinstance(child, str):
                yield child
            else:
                yield from child.agents()

    def supervisors(self) -> Iterator[SupervisorSpec]:
        yield self
        for child in self.children:
            if not isinstance(child, str):
                yield from child.supervisors()


@plain(frozen=True)
class System:
    name: str
    source: str  # absolute path of the system file
    sha256: str
    base_dir: str  # the system file's directory: agents run there
    state_dir: str
    agents: Mapping[str, AgentSpec]
    tree: SupervisorSpec
    route: str
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    # The dispatcher's audit log, shared by every agent's launch (its start records say so).
    audit: Audit = field(default_factory=Audit)

    @property
    def message_log(self) -> str:
        return f"{self.state_dir}/messages.jsonl"

    @property
    def audit_log(self) -> str:
        return f"{self.state_dir}/audit.jsonl"

    @property
    def control_socket(self) -> str:
        return f"{self.state_dir}/control.sock"
