"""The agenda agent: outheis's "cato", the user's secretary, in the agent system only.

Role: answer `agenda` requests with the open items of the notes (lines starting with
"Next:" or "- [ ]"). Powers: vault:read vault:list, through the parent; nothing else.
"""

from __future__ import annotations

import sys

import sandbox
from sandbox.agent.client import Parent


def items(bus: Parent) -> list[str]:
    out = []
    for entry in bus.list("vault", "notes"):
        for line in bus.read("vault", f"notes/{entry.name}").decode().splitlines():
            line = line.strip()
            if line.startswith(("Next:", "- [ ]")):
                out.append(f"{entry.name}: {line}")
    return out


def main() -> int:
    bus = sandbox.connect()
    sandbox.pledge("stdio vault:read vault:list")
    while True:
        msg = bus.recv()
        if msg is None:
            continue
        if msg["type"] == "request":
            found = items(bus)
            bus.reply(msg, {"text": "\n".join(found) or "nothing on the agenda"})
        bus.ack(msg)


if __name__ == "__main__":
    sys.exit(main())
