"""The protocol catalogue: every message between the agent's side and the parent's.

One place for what both sides must agree on, as OpenBSD's privilege-separated daemons keep
their `enum imsg_type` in one header: the operations with their phase and required fields,
the error names a refusal may carry, the descriptor numbers and the environment names.
sandbox.wire frames these messages; sandbox.parent.broker serves them; sandbox.agent
sends them. Standard library only, cheap to import (it runs in every agent).

Phases:
- handshake: the launcher's own code in the child, between fork and exec (or the agent's
  init under `lock: agent`), tells the parent how set-up went and hands it descriptors.
- lock: the agent declares its pledge and unveil (`lock: agent`) and hands over the
  seccomp listener with its first lock.
- request: what a locked agent asks the parent to perform on a declared resource.
- message: the agent system's bus (SPEC section 9), served by the dispatcher of
  `sandbox up` only: send to another agent (capability NAME:send), receive from its own
  inbox, acknowledge, reply to a message received.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

# The agent's end of the broker channel: the launcher places it at this number, and the
# filter always allows read/write/recvmsg/sendmsg/close on it (an agent can always ask).
BROKER_FD = 3

# Environment names the launcher sets for the agent.
ENV_BROKER_FD = "SANDBOX_BROKER_FD"  # the channel's descriptor number (BROKER_FD)
ENV_AGENT = "SANDBOX_AGENT"  # the policy's name
ENV_LOCK = "SANDBOX_LOCK"  # "agent" when the parent waits for the agent to lock itself
ENV_VIOLATION = "SANDBOX_VIOLATION"  # the policy's violation mode, for narrowing pledges
# landlock_restrict_self() flags for the agent's own lock (lock: agent): set when the
# parent reads Landlock's audit records, so refusals after an exec are logged too.
ENV_LANDLOCK_FLAGS = "SANDBOX_LANDLOCK_FLAGS"

# Request ids of messages that are not requests of the agent's own numbering.
HANDSHAKE_ID = 0
LOCK_ID = 1 << 40


class Phase(StrEnum):
    HANDSHAKE = "handshake"
    LOCK = "lock"
    REQUEST = "request"
    MESSAGE = "message"


class Op(StrEnum):
    """Every operation, by its name on the wire."""

    # handshake (child -> parent, before the program runs)
    LISTENER = "listener"  # the seccomp listener rides along
    READY = "ready"  # set-up done; no listener (lock: agent, or no user notification)
    SETUP_ERROR = "setup-error"  # set-up or exec failed; `message` says why
    DNS_SOCKET = "dns-socket"  # the relay's socket in the agent's network namespace
    # lock (agent -> parent)
    LOCK = "lock"
    # requests on resources (agent -> parent)
    OPEN = "open"
    LIST = "list"
    STAT = "stat"
    REMOVE = "remove"
    RENAME = "rename"
    MKDIR = "mkdir"
    HTTP = "http"
    # messages (agent -> dispatcher)
    SEND = "send"  # -> {"message_id"} once in the log; a `batch` -> {"results": [...]}
    RECV = "recv"  # -> {"messages": [...]} (waits up to `timeout` for one)
    ACK = "ack"  # no reply: the messages `ids` are handled
    REPLY = "reply"  # -> {"message_id"}; no capability, to the asker, once


class OpSpec(NamedTuple):
    phase: Phase
    required: tuple[str, ...]  # fields the request must carry (besides id and op)
    optional: tuple[str, ...] = ()
    fd: bool = False  # a descriptor may ride along with the request


OPS: Mapping[Op, OpSpec] = MappingProxyType(
    {
        Op.LISTENER: OpSpec(Phase.HANDSHAKE, (), fd=True),
        Op.READY: OpSpec(Phase.HANDSHAKE, ()),
        Op.SETUP_ERROR: OpSpec(Phase.HANDSHAKE, ("message",)),
        Op.DNS_SOCKET: OpSpec(Phase.HANDSHAKE, (), fd=True),
        Op.LOCK: OpSpec(Phase.LOCK, ("pledge",), ("execpromises", "unveil"), fd=True),
        Op.OPEN: OpSpec(Phase.REQUEST, ("resource", "path"), ("mode", "create")),
        Op.LIST: OpSpec(Phase.REQUEST, ("resource",), ("path",)),
        Op.STAT: OpSpec(Phase.REQUEST, ("resource",), ("path",)),
        Op.REMOVE: OpSpec(Phase.REQUEST, ("resource", "path")),
        Op.RENAME: OpSpec(Phase.REQUEST, ("resource", "src", "dst")),
        Op.MKDIR: OpSpec(Phase.REQUEST, ("resource", "path")),
        Op.HTTP: OpSpec(Phase.REQUEST, ("resource",), ("method", "path", "body", "headers")),
        Op.SEND: OpSpec(
            Phase.MESSAGE, (), ("to", "payload", "type", "conversation_id", "reply_to", "batch")
        ),
        Op.RECV: OpSpec(Phase.MESSAGE, (), ("max", "timeout")),
        Op.ACK: OpSpec(Phase.MESSAGE, ("ids",)),
        Op.REPLY: OpSpec(Phase.MESSAGE, ("reply_to",), ("payload", "type")),
    }
)


def op_of(name: object) -> Op | None:
    """The operation a request names, or None if it names none we know."""
    if not isinstance(name, str):
        return None
    try:
        return Op(name)
    except ValueError:
        return None


def missing_field(op: Op, request: Mapping[str, object]) -> str | None:
    """The first required field of `op` that `request` lacks, or None."""
    return next((f for f in OPS[op].required if f not in request), None)


# The exception names a refusal may carry ({"ok": false, "error": NAME, "message": ...}):
# builtins, so that the agent's side raises exactly what the parent names. Anything else
# is sent as OSError.
ERROR_NAMES: tuple[str, ...] = (
    "PermissionError",
    "FileNotFoundError",
    "FileExistsError",
    "IsADirectoryError",
    "NotADirectoryError",
    "ValueError",
    "TimeoutError",
    "ConnectionError",
    "OSError",
)
DEFAULT_ERROR = "OSError"
