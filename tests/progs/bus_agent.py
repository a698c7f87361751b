"""A test agent of the agent system: does what the messages it receives say.

    bus_agent.py PLEDGE            (pledges "stdio PLEDGE" after connecting)

A message's payload {"text": COMMAND ...} (a user's `sandbox send`) or {"cmd": ...}:
  echo TEXT          reply with TEXT                   crash            exit with status 3
  exit               exit with status 0                sleep S          sleep, then reply
  noack              receive, never acknowledge        flood TO N [D]   send N events to TO
                     (the receiver sleeps D seconds on each)
  send TO TEXT       send a request to TO, reply with what came back (or the error)
  forge              send with a forged 'from'         peek OTHER       recv from OTHER's inbox
  violate            open a file (no rpath: a violation)
  rtt TO N           N round trips to TO, one at a time: p50/p99 (us) as JSON
  tput TO N          N events in flight to TO, then its count: timings as JSON
  garbage            send malformed bus requests; reply how many were refused
  big TO N           send TO a payload of N strings of 4000 characters
  count              reply with the number of distinct events received so far
Events are acknowledged and counted; every request is answered, then acknowledged.
"""

from __future__ import annotations

import json
import os
import sys
import time

import sandbox
from sandbox import wire
from sandbox.protocol import Op


def main() -> int:
    bus = sandbox.connect()
    sandbox.pledge(" ".join(["stdio", *sys.argv[1:]]))
    seen: set[str] = set()
    answers: dict[str, dict[str, object]] = {}
    while True:
        msg = bus.recv()
        if msg is None:
            continue
        payload = msg["payload"]
        if msg["type"] == "event":
            delay = payload.get("delay")
            if isinstance(delay, float):
                time.sleep(delay)  # a slow consumer
            seen.add(str(payload.get("n", msg["id"])))
            bus.ack(msg)
            continue
        if msg["type"] == "response":
            answers[str(msg["reply_to"])] = msg
            bus.ack(msg)
            continue
        words = str(payload.get("text", payload.get("cmd", ""))).split()
        cmd, args = (words[0], words[1:]) if words else ("", [])
        text = ""
        if cmd in ("crash", "exit", "violate"):
            bus.ack(msg)  # else its next instance gets it again (at-least-once) and dies too
        if cmd == "crash":
            os._exit(3)
        elif cmd == "exit":
            sys.exit(0)
        elif cmd == "violate":  # not pledged: the parent kills it (violation: kill)
            with open("/etc/hostname", encoding="utf-8") as f:
                text = f.read()
        elif cmd == "noack":
            continue
        elif cmd == "echo":
            text = " ".join(args)
        elif cmd == "sleep":
            time.sleep(float(args[0]))
            text = f"slept {args[0]}" + (" (redelivered)" if msg.get("redelivered") else "")
        elif cmd == "count":
            text = str(len(seen))
        elif cmd == "flood":
            delay = {"delay": float(args[2])} if len(args) > 2 else {}
            results = bus.send_many(
                [(args[0], {"n": i, **delay}) for i in range(int(args[1]))], type="event"
            )
            errors = [r for r in results if isinstance(r, Exception)]
            text = f"sent {len(results) - len(errors)} failed {len(errors)}"
            if errors:
                text += f": {type(errors[0]).__name__}: {errors[0]}"
        elif cmd == "rtt":  # N requests one at a time to TO (an echo): p50 and p99 in us
            times = []
            for i in range(int(args[1])):
                t = time.perf_counter()
                mid = bus.send(args[0], {"cmd": f"echo {i}"})
                got = bus.recv(timeout=30)
                assert got is not None and got["reply_to"] == mid
                bus.ack(got)
                times.append(time.perf_counter() - t)
            times.sort()
            text = json.dumps(
                {
                    "p50_us": times[len(times) // 2] * 1e6,
                    "p99_us": times[len(times) * 99 // 100] * 1e6,
                }
            )
        elif cmd == "tput":  # N events in flight to TO, then its count: messages/s
            t = time.perf_counter()
            n = int(args[1])
            results = bus.send_many([(args[0], {"n": i}) for i in range(n)], type="event")
            sent = time.perf_counter() - t
            mid = bus.send(args[0], {"cmd": "count"})
            got = bus.recv(timeout=60)
            assert got is not None and got["reply_to"] == mid
            bus.ack(got)
            total = time.perf_counter() - t
            ok = sum(1 for r in results if not isinstance(r, Exception))
            text = json.dumps(
                {"sent": ok, "received": got["payload"]["text"], "send_s": sent, "total_s": total}
            )
        elif cmd == "garbage":  # malformed bus requests: each must be refused
            bad: list[tuple[str, dict[str, object]]] = [
                (Op.RECV, {"max": "x"}),
                (Op.RECV, {"max": 0}),
                (Op.RECV, {"timeout": -1}),
                (Op.RECV, {"timeout": "soon"}),
                (Op.SEND, {"batch": []}),
                (Op.SEND, {"batch": "x"}),
                (Op.SEND, {"batch": [{"to": "a"}], "to": "a"}),
                (Op.SEND, {"batch": [7]}),
                (Op.SEND, {"to": "a", "type": "response"}),
                (Op.SEND, {"to": "a", "payload": [1, 2]}),
                (Op.SEND, {"to": ""}),
                (Op.SEND, {"to": "a", "conversation_id": "bad"}),
                (Op.SEND, {"to": "a", "reply_to": "x"}),
                (Op.SEND, {"to": "a", "payload": {"d": [[[[[[[[[[1]]]]]]]]]]}}),
                (Op.SEND, {"to": "a", "timestamp": "now"}),
                (Op.REPLY, {"reply_to": "1" * 19}),
                (Op.REPLY, {"payload": {}}),
                ("sendx", {}),
            ]
            refused, through = 0, []
            for op, fields in bad:
                try:
                    reply, _ = bus.request(op, **fields)
                    if all(r.get("ok") is False for r in reply.get("results", [{}])):
                        refused += 1  # a batch answers per message
                    else:
                        through.append(f"{op} {fields}")
                except (PermissionError, ValueError, OSError):
                    refused += 1
            # A lone surrogate, as JSON's \ud800 escape decodes (the client cannot send it).
            raw = b'{"id": 77, "op": "send", "to": "a", "payload": {"x": "\\ud800"}}'
            wire.send_bytes(bus._sock, raw)
            reply, _ = bus._recv()
            refused += reply.get("ok") is False
            bad.append(("raw", {}))
            for n, ids in enumerate(("x", [1, 2], ["9" * 19])):  # no reply: refused, recorded
                wire.send(bus._sock, {"id": 1 << 50 | n, "op": Op.ACK, "ids": ids})
            text = f"refused {refused} of {len(bad)}" + "".join(f"; allowed?! {t}" for t in through)
        elif cmd == "big":  # a message of N strings of 4000 characters to TO
            try:
                bus.send(args[0], {"parts": ["x" * 4000] * int(args[1])})
                text = "sent"
            except (OSError, ValueError) as e:
                text = f"{type(e).__name__}: {e}"
        elif cmd == "send":
            try:
                mid = bus.send(args[0], {"cmd": " ".join(args[1:])})
                while mid not in answers:
                    got = bus.recv(timeout=10)
                    if got is None:
                        break
                    if got["type"] == "response":
                        answers[str(got["reply_to"])] = got
                    bus.ack(got)
                reply = answers.get(mid)
                text = "no answer" if reply is None else str(reply["payload"].get("text"))
            except (PermissionError, TimeoutError, ValueError) as e:
                text = f"{type(e).__name__}: {e}"
        elif cmd in ("forge", "peek"):
            fields: dict[str, object] = {"to": args[0], "payload": {"text": "hi"}}
            op = Op.SEND
            if cmd == "forge":
                fields["from"] = {"agent": args[1] if len(args) > 1 else "data"}
            else:
                op, fields = Op.RECV, {"agent": args[0], "timeout": 0}
            try:
                bus.request(op, **fields)
                text = "allowed?!"
            except (PermissionError, ValueError) as e:
                text = f"{type(e).__name__}: {e}"
        else:
            text = f"unknown command {cmd!r}"
        bus.reply(msg, {"text": text})
        bus.ack(msg)


if __name__ == "__main__":
    sys.exit(main())
