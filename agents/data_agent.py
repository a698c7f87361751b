"""The data agent: keeps the vault of notes, and touches it only through the parent.

Role: answer requests on stdin ("list", "read NAME", "write NAME TEXT"), one per line.
Powers: vault:read vault:write vault:create vault:list, performed by the parent and
recorded; no direct access to any file, no network, no exec.

With --bus (policies/outheis/data.yaml): outheis's "zeno". Requests arrive as messages
({op: search|read|list|write|append, ...}) and are answered with a reply; a message is
acknowledged only after its reply, so a crash in between answers it again.
"""

from __future__ import annotations

import json
import re
import sys
import time

import sandbox
from sandbox.agent.client import Parent

VAULT = "vault"


def handle(parent: Parent, payload: dict[str, object]) -> str:
    op = payload.get("op", "search")
    name = str(payload.get("name", ""))
    if op == "list":
        return ", ".join(e.name for e in parent.list(VAULT, "notes"))
    if op == "read":
        return parent.read(VAULT, f"notes/{name}").decode()
    if op in ("write", "append"):
        old = parent.read(VAULT, f"notes/{name}").decode() if op == "append" else ""
        parent.write(VAULT, f"notes/{name}", old + str(payload.get("text", "")) + "\n")
        return f"wrote notes/{name}"
    words = [w.lower() for w in re.findall(r"\w+", str(payload.get("query", "")))]
    hits = []
    for entry in parent.list(VAULT, "notes"):
        for line in parent.read(VAULT, f"notes/{entry.name}").decode().splitlines():
            if words and all(w in line.lower() for w in words):
                hits.append(f"{entry.name}: {line.strip()}")
    return "\n".join(hits) or f"nothing about {' '.join(words)!r} in the vault"


def bus_main() -> int:
    bus = sandbox.connect()
    sandbox.pledge(f"stdio {VAULT}:read {VAULT}:write {VAULT}:create {VAULT}:list")
    while True:
        msg = bus.recv()
        if msg is None:
            continue
        payload = msg["payload"]
        if msg["type"] == "request":
            slow = payload.get("slow")
            if isinstance(slow, int | float) and 0 < slow <= 10:
                time.sleep(slow)  # a long job: the demo kills the agent here
            try:
                text = handle(bus, payload)
            except (PermissionError, FileNotFoundError, ValueError) as e:
                text = f"refused: {e}"
            if msg.get("redelivered"):
                text += "\n(answered by a new instance: the request was delivered again)"
            bus.reply(msg, {"text": text})
        bus.ack(msg)


def main() -> int:
    if "--bus" in sys.argv:
        return bus_main()
    parent = sandbox.connect()
    # Init is over: from here on the agent holds only what its role needs.
    sandbox.pledge(f"stdio {VAULT}:read {VAULT}:write {VAULT}:create {VAULT}:list")
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        try:
            if cmd == "list":
                print(json.dumps([e.name for e in parent.list(VAULT, "notes")]))
            elif cmd == "read":
                print(parent.read(VAULT, f"notes/{rest}").decode())
            elif cmd == "write":
                name, _, text = rest.partition(" ")
                parent.write(VAULT, f"notes/{name}", text + "\n")
                print(f"wrote notes/{name}")
            elif cmd == "delete":
                parent.remove(VAULT, f"notes/{rest}")
                print(f"deleted notes/{rest}")
            elif cmd == "open-directly":
                # What a tricked agent would try: the kernel refuses (no 'rpath').
                with open(rest) as f:
                    print(f.read())
            else:
                print(f"unknown request {cmd!r}")
        except (PermissionError, FileNotFoundError, ValueError) as e:
            print(f"refused: {e}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
