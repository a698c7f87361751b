"""Messages between agents (SPEC section 9, outheis's fields): ids, parsing, building.

Everything an agent sends is a request on its broker channel; `parse_send` and
`parse_reply` turn one into the fields of a message or raise MessageError, never
anything else, whatever the bytes said (the dispatcher stamps `from`, `id` and
`timestamp` itself; a request that tries to set them is forged and refused).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from sandbox.parent.audit import MAX_STRING

VERSION = 1
TYPES = ("request", "response", "event")
SEND_TYPES = ("request", "event")  # a response goes through reply(), to the asker only
MAX_MESSAGE = 32 * 1024  # bytes of a message's JSON: several fit in one broker frame
MAX_DEPTH = 8  # nesting of a payload
CONV_RE = re.compile(r"conv_[0-9a-f]{12}")
ID_RE = re.compile(r"[0-9]{19}")
AGENT_RE = re.compile(r"[a-z][a-z0-9-]*")
SEND_FIELDS = frozenset({"id", "op", "to", "payload", "type", "conversation_id", "reply_to"})
# (id and op belong to the request; a message of a batch has neither)
REPLY_FIELDS = frozenset({"id", "op", "reply_to", "payload", "type"})
# Fields only the dispatcher writes: an agent that sends them tries to forge a message.
STAMPED = frozenset({"from", "v", "timestamp", "message_id", "redelivered"})

# 41 bits of milliseconds since 2024-01-01T00:00:00Z, 10 bits of machine, 12 of sequence.
EPOCH_MS = 1_704_067_200_000


class MessageError(ValueError):
    """A message that is not accepted; `forged` for one that tries to set stamped fields."""

    def __init__(self, message: str, forged: bool = False) -> None:
        super().__init__(message)
        self.forged = forged


def _machine() -> int:
    try:
        with open("/etc/machine-id", "rb") as f:
            return int.from_bytes(f.read()[:8] or b"\0", "big") % 1024
    except OSError:
        return os.getpid() % 1024


class IdClock:
    """Time-ordered unique ids: strictly increasing in one dispatcher, 19 digits."""

    def __init__(self, machine: int | None = None) -> None:
        self._machine = _machine() if machine is None else machine & 1023
        self._last_ms = 0
        self._seq = 0
        self._mutex = threading.Lock()

    def next(self) -> str:
        with self._mutex:
            ms = max(time.time_ns() // 1_000_000 - EPOCH_MS, self._last_ms)
            if ms == self._last_ms:
                self._seq += 1
                if self._seq >= 4096:  # 4096 ids in one millisecond: borrow the next one
                    ms, self._seq = ms + 1, 0
            else:
                self._seq = 0
            self._last_ms = ms
            return f"{(ms << 22) | (self._machine << 12) | self._seq:019d}"

    def advance_past(self, ident: str) -> None:
        """Never issue an id at or below `ident` (one found in the log on resume)."""
        with self._mutex:
            value = int(ident)
            ms = value >> 22
            if ms > self._last_ms or (ms == self._last_ms and value & 4095 >= self._seq):
                self._last_ms, self._seq = ms, value & 4095


def new_conversation() -> str:
    return "conv_" + secrets.token_hex(6)


_second: list[Any] = [-1, ""]  # the last second formatted: strftime once a second, not a message


def timestamp() -> str:
    """RFC 3339 in UTC with microseconds, as the logs write time."""
    secs, ns = divmod(time.time_ns(), 1_000_000_000)
    if secs != _second[0]:
        _second[:] = [secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))]
    return f"{_second[1]}.{ns // 1000:06d}Z"


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise MessageError(f"payload nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise MessageError(f"payload string {where} is not valid Unicode") from None
        if len(value) > MAX_STRING:
            raise MessageError(
                f"payload string {where} has {len(value)} characters, more than {MAX_STRING}"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_value(k, f"{where} (a key)", depth + 1)
            _check_value(v, f"{where}.{k[:32]}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise MessageError(f"payload number {where} is not finite")


def _payload(request: Mapping[str, Any]) -> dict[str, Any]:
    payload = request.get("payload", {})
    if not isinstance(payload, dict):
        raise MessageError(f"payload must be a JSON object, not {type(payload).__name__}")
    _check_value(payload, "payload")
    return payload


def _fields(request: Mapping[str, Any], allowed: frozenset[str]) -> None:
    forged = sorted(STAMPED.intersection(request))
    if forged:
        raise MessageError(
            f"field {forged[0]!r} is set by the dispatcher, not by the sender (forged)",
            forged=True,
        )
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise MessageError(f"unknown message field {unknown[0][:64]!r}")


def _optional(request: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MessageError(f"{name} must match {pattern.pattern}")
    return value


def parse_send(request: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an agent may choose for a new message: to, type, payload,
    conversation_id, reply_to. MessageError for anything else."""
    _fields(request, SEND_FIELDS)
    to = request.get("to")
    if not isinstance(to, str) or not AGENT_RE.fullmatch(to) or len(to) > 64:
        raise MessageError("'to' must name an agent ([a-z][a-z0-9-]*)")
    kind = request.get("type", "request")
    if kind not in SEND_TYPES:
        raise MessageError(f"type must be one of {', '.join(SEND_TYPES)} (answer with reply)")
    return {
        "to": to,
        "type": kind,
        "payload": _payload(request),
        "conversation_id": _optional(request, "conversation_id", CONV_RE),
        "reply_to": _optional(request, "reply_to", ID_RE),
    }


def parse_reply(request: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a reply: reply_to (required), payload, type (response or event)."""
    _fields(request, REPLY_FIELDS)
    reply_to = _optional(request, "reply_to", ID_RE)
    if reply_to is None:
        raise MessageError("a reply needs 'reply_to': the id of the message it answers")
    kind = request.get("type", "response")
    if kind not in ("response", "event"):
        raise MessageError("the type of a reply must be response or event")
    return {"reply_to": reply_to, "type": kind, "payload": _payload(request)}


def build(
    ident: str,
    sender: Mapping[str, Any],
    to: str,
    kind: str,
    payload: dict[str, Any],
    conversation_id: str | None,
    reply_to: str | None,
) -> tuple[dict[str, Any], int]:
    """A whole message, in outheis's field order, and its size in bytes as JSON;
    MessageError if it is too large."""
    msg = {
        "v": VERSION,
        "id": ident,
        "conversation_id": conversation_id or new_conversation(),
        "from": dict(sender),
        "to": to,
        "type": kind,
        "payload": payload,
        "reply_to": reply_to,
        "timestamp": timestamp(),
    }
    size = len(json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_MESSAGE:
        raise MessageError(f"message of {size} bytes is larger than {MAX_MESSAGE}")
    return msg, size


def sender_name(msg: Mapping[str, Any]) -> str:
    """'relay' for {agent: relay}, 'user:cli:LOGIN' for a user (for records)."""
    sender = msg.get("from") or {}
    if "agent" in sender:
        return str(sender["agent"])
    user = sender.get("user") or {}
    return f"user:{user.get('channel', '?')}:{user.get('identity', '?')}"
