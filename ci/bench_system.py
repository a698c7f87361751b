"""Messages through the dispatcher of `sandbox up`, with the durable message log.

Prints, for a system of sandboxed agents (tests/progs/bus_agent.py under lock: agent):
- round trip relay -> data -> relay, one request in flight: p50 and p99 (median of rounds)
- throughput with many messages in flight (send_many, window 128): events/s until the
  receiver has acknowledged all of them and answered a request queued behind them
- crash-to-ready: from an agent's crash (its exit seen by the dispatcher) to its next
  instance being ready (launcher hand-shake done), excluding the agent's own start-up
Beside them, the peer floor: a plain Python socketpair ping-pong between two processes
(no sandbox, no dispatcher, no log), and fdatasync of the message log's file system.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from progs.syskit import System

ROUNDS = 5


def socketpair_floor(n: int = 2000) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        a.close()
        while data := b.recv(256):
            b.send(data)
        os._exit(0)
    b.close()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        a.send(b'{"id":1,"op":"x"}')
        a.recv(256)
        times.append(time.perf_counter() - t)
    a.close()
    os.waitpid(pid, 0)
    return statistics.median(times) * 1e6


def fdatasync_cost(directory: str, n: int = 200) -> float:
    fd = os.open(f"{directory}/sync-probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, b"x" * 200 + b"\n")
        os.fdatasync(fd)
    os.close(fd)
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-system-") as tmp:
        root = Path(tmp)
        s = System(
            root,
            {
                "relay": {"qos": "interactive"},
                "data": {"qos": "initiated"},
                "sink": {"inbox": 200000},
            },
            sends={"relay": ["data", "sink"]},
            extra={
                "supervision": {
                    "intensity": 100,
                    "period": "10s",
                    "children": ["relay", "data", "sink"],
                }
            },
        )
        s.up()
        try:
            p50s, p99s, rates = [], [], []
            for _ in range(ROUNDS):
                rtt = json.loads(s.send("rtt data 400", to="relay"))
                p50s.append(rtt["p50_us"])
                p99s.append(rtt["p99_us"])
                tput = json.loads(s.send("tput sink 20000", to="relay"))
                assert tput["sent"] == 20000 and tput["received"].isdigit(), tput
                rates.append(20000 / tput["total_s"])
            ready = []
            for _ in range(ROUNDS * 2):
                before = s.by_name()["data"]["restarts"]
                s.send("crash", to="data", wait=False)
                got = s.wait_for(
                    lambda ps, b=before: (
                        {a["agent"]: a for a in ps}["data"]["restarts"] > b
                        and {a["agent"]: a for a in ps}["data"]["state"] == "running"
                    )
                )
                ready.append({a["agent"]: a for a in got}["data"]["ready_ms"])
            verified = s.cli("log", "verify", str(s.file)).stdout.strip()
        finally:
            s.down()
        floor = socketpair_floor()
        sync = fdatasync_cost(tmp)
    print("== the agent system: messages through the dispatcher (durable log, group commit)")
    print(
        f"round trip relay -> data -> relay, 1 in flight: p50 {statistics.median(p50s):7.0f} us"
        f"   p99 {statistics.median(p99s):7.0f} us   (median of {ROUNDS} rounds of 400)"
    )
    print(
        f"throughput, 20000 events in flight (window 128): {statistics.median(rates):8.0f} "
        f"messages/s median, best {max(rates):.0f}  (until acknowledged and answered)"
    )
    print(
        f"crash to ready (next instance's hand-shake done): median "
        f"{statistics.median(ready):.1f} ms, max {max(ready):.1f} ms  ({len(ready)} crashes)"
    )
    print(
        f"peer floor: Python socketpair ping-pong, two processes, no sandbox: {floor:.0f} us;"
        f" fdatasync on this file system: {sync:.0f} us"
    )
    print(f"message log after the run: {verified.split(': ', 1)[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
