"""The relay agent: talks to the user, and can do nothing else.

Role: relay each line it reads, upper-cased, as a stand-in for passing messages between a
user and the other agents. Powers: stdio. No files, no network, no exec.

With --bus (the agent system, policies/outheis/relay.yaml): outheis's "ou". Each user
message is routed by its first word (agenda, run, insights, read-vault; anything else is
a question for data), the answer comes back as a reply and is passed on to the user. Its
only powers are to send messages (data:send agenda:send action:send pattern:send).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  # socket looks it up lazily; after the lock it could not
import socket
import sys

import sandbox

ROUTES = {"agenda": "agenda", "run": "action", "insights": "pattern"}


def route(text: str) -> tuple[str, dict[str, object]]:
    word, _, rest = text.strip().partition(" ")
    if word in ROUTES:
        return ROUTES[word], {"op": word, "text": rest}
    if word == "slow":  # a slow question (for the demo of a crash mid-request)
        to, payload = route(rest)
        return to, {**payload, "slow": 2}
    if word == "search":
        return "data", {"op": "search", "query": rest}
    return "data", {"op": "search", "query": text}


def bus_main() -> int:
    bus = sandbox.connect()
    sandbox.unveil()
    sandbox.pledge("stdio data:send agenda:send action:send pattern:send")
    asked: dict[str, dict[str, object]] = {}  # our request id -> the user's message
    while True:
        msg = bus.recv()
        if msg is None:
            continue
        if msg["type"] == "response":
            user = asked.pop(str(msg["reply_to"]), None)
            if user is not None:  # else an answer to a request of an earlier instance
                bus.reply(user, {"text": msg["payload"].get("text", "")})
                bus.ack(user)
        elif "user" in msg["from"]:
            text = str(msg["payload"].get("text", ""))
            if text.strip() == "read-vault":  # what a tricked relay might try
                bus.reply(msg, {"text": read_vault()})
                bus.ack(msg)
                continue
            to, payload = route(text)
            asked[bus.send(to, payload, conversation_id=msg["conversation_id"])] = msg
            continue  # acknowledged once answered: a crash before that asks again
        bus.ack(msg)


def read_vault() -> str:
    out = []
    try:
        sandbox.connect().read("vault", "notes/today.md")
        out.append("broker: allowed?!")
    except PermissionError as e:
        out.append(f"broker: refused ({e})")
    try:
        with open("data/vault/notes/today.md", encoding="utf-8"):
            out.append("open: allowed?!")
    except OSError as e:
        out.append(f"open: refused ({e.strerror})")
    return "; ".join(out)


def main() -> int:
    if "--bus" in sys.argv:
        return bus_main()
    sandbox.unveil()  # an empty view of the filesystem
    sandbox.pledge("stdio")
    for line in sys.stdin:
        text = line.strip()
        if text == "phone-home":  # what a tricked relay agent might try
            try:
                socket.create_connection(("127.0.0.1", 9), timeout=1)
                print("connect: allowed?!")
            except OSError as e:
                print(f"connect: refused ({e.strerror})")
        else:
            print(f"relay: {text.upper()}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
