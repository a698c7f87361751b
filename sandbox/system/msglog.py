"""The message log `state/messages.jsonl`: the system's event source (SPEC section 9).

The audit log's machinery (sandbox.parent.audit: hash chain, group commit, write-ahead,
verify, show) with its own record kinds:

| kind    | agent         | fields                                                  |
|---------|---------------|---------------------------------------------------------|
| `msg`   | the sender    | `message`: the whole message, as delivered              |
| `ack`   | the receiver  | `ids`: the messages it acknowledged                      |
| `agent` | the agent     | `state`, `pid`, `restarts`: a change of its life cycle   |

A message's `msg` record is committed before its send is acknowledged and before it is
delivered. Each inbox is a projection of the log: the messages sent to an agent that it
has not acknowledged. `fold()` computes it (on resume, and for `log replay --at TIME`,
which is the same fold stopped at a time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sandbox.parent import audit
from sandbox.parent.audit import AuditError, AuditLog

KINDS: Mapping[str, tuple[tuple[str, ...], ...]] = MappingProxyType(
    {
        "msg": (("message",),),
        "ack": (("ids",),),
        "agent": (("state",), ("pid",), ("restarts",)),
    }
)


def open_log(path: str) -> AuditLog:
    # checked: every value the dispatcher records here is JSON it parsed and bounded itself
    # (sandbox.system.message), so the log need not copy each payload once more.
    return AuditLog(path, "dispatcher", kinds=KINDS, checked=True)


@dataclass
class Projection:
    """What the log says at one time."""

    inbox: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # agent -> id -> msg
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # not yet replied
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    transport: list[dict[str, Any]] = field(default_factory=list)  # replies to users
    last_id: str | None = None
    records: int = 0
    keep_conversations: bool = True

    def apply(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        self.records += 1
        if kind == "msg":
            msg = record.get("message")
            if not isinstance(msg, dict):
                return
            ident, to = str(msg.get("id")), str(msg.get("to"))
            self.last_id = ident
            if to == "transport":
                self.transport.append(msg)
            else:
                self.inbox.setdefault(to, {})[ident] = msg
            if msg.get("type") == "request":
                self.requests[ident] = msg
            reply_to = msg.get("reply_to")
            if reply_to is not None:
                self.requests.pop(str(reply_to), None)
            if self.keep_conversations:
                self.conversations.setdefault(str(msg.get("conversation_id")), []).append(
                    {
                        k: msg.get(k)
                        for k in ("id", "from", "to", "type", "reply_to", "timestamp", "payload")
                    }
                )
        elif kind == "ack":
            box = self.inbox.get(str(record.get("agent")), {})
            ids = record.get("ids")
            for ident in ids if isinstance(ids, list) else []:
                box.pop(str(ident), None)
        elif kind == "agent":
            self.agents[str(record.get("agent"))] = {
                "state": record.get("state"),
                "pid": record.get("pid"),
                "restarts": record.get("restarts"),
            }


def parse_time(text: str) -> datetime:
    """RFC 3339 (the logs' own format), or a ValueError naming the format."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is not RFC 3339 (e.g. 2026-12-01T20:15:00Z)") from None
    if value.utcoffset() is None:
        raise ValueError(f"time {text!r} has no time zone (add Z for UTC)")
    return value


def fold(path: str, at: datetime | None = None, *, conversations: bool = True) -> Projection:
    """The projection of the log at `path` up to time `at` (the whole log if None)."""
    proj = Projection(keep_conversations=conversations)
    if not os.path.exists(path):
        return proj
    for record in audit.read_records(path):
        if at is not None:
            stamp = record.get("time")
            if not isinstance(stamp, str) or parse_time(stamp) > at:
                break
        proj.apply(record)
    return proj


def replay(path: str, agents: Iterable[str], at: datetime | None) -> dict[str, Any]:
    """`sandbox log replay`: every inbox, conversation and agent state at `at`."""
    proj = fold(path, at)
    out_agents: dict[str, Any] = {}
    for name in agents:
        life = proj.agents.get(name, {"state": "never started", "pid": None, "restarts": 0})
        box = proj.inbox.get(name, {})
        out_agents[name] = {**life, "inbox": len(box), "unacknowledged": list(box)}
    return {
        "at": at.isoformat() if at is not None else None,
        "records": proj.records,
        "agents": out_agents,
        "conversations": proj.conversations,
    }


def format_replay(state: Mapping[str, Any]) -> str:
    lines = [f"state at {state['at'] or 'the end of the log'} ({state['records']} records)"]
    lines.append(f"{'AGENT':<10} {'STATE':<14} {'PID':>7} {'RESTARTS':>8} {'INBOX':>6}")
    for name, a in state["agents"].items():
        pid = "-" if a["pid"] is None else str(a["pid"])
        lines.append(
            f"{name:<10} {a['state']!s:<14} {pid:>7} {a['restarts'] or 0:>8} {a['inbox']:>6}"
        )
    lines.append("conversations:")
    for cid, msgs in state["conversations"].items():
        lines.append(f"  {cid}")
        for m in msgs:
            sender = m["from"].get("agent") if isinstance(m["from"], dict) else None
            sender = sender or "user"
            text = m["payload"].get("text") if isinstance(m.get("payload"), dict) else None
            shown = "" if text is None else " " + json.dumps(str(text)[:60], ensure_ascii=False)
            lines.append(f"    {m['id']} {sender} -> {m['to']} {m['type']}{shown}")
    return "\n".join(lines)


def _sum_msg(r: Mapping[str, Any]) -> str:
    m = r.get("message")
    if not isinstance(m, Mapping):
        return "-"
    payload = json.dumps(m.get("payload"), ensure_ascii=False, separators=(",", ":"))
    if len(payload) > 80:
        payload = payload[:77] + "..."
    reply = f" reply_to {m.get('reply_to')}" if m.get("reply_to") else ""
    conv = m.get("conversation_id")
    return f"{m.get('id')} -> {m.get('to')} {m.get('type')}{reply} {conv} {payload}"


def _sum_ack(r: Mapping[str, Any]) -> str:
    ids = r.get("ids")
    return f"acknowledged {' '.join(map(str, ids)) if isinstance(ids, list) else ids}"


def _sum_agent(r: Mapping[str, Any]) -> str:
    return f"{r.get('state')} (pid {r.get('pid')}, restarts {r.get('restarts')})"


SUMMARIES = MappingProxyType({"msg": _sum_msg, "ack": _sum_ack, "agent": _sum_agent})


def show_cli(path: str, agent: str | None, kind: str | None, as_json: bool) -> int:
    return audit.show_cli(path, agent, kind, as_json, SUMMARIES)


def verify_cli(path: str) -> int:
    return audit.verify_cli(path, KINDS)


__all__ = ["KINDS", "AuditError", "Projection", "fold", "open_log", "replay"]
