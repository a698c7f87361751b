#!/usr/bin/env python3
"""Broker throughput and latency: audited reads of a 100-byte file vs reading it directly.

An agent process (sandbox.agent.client on fd 3) reads through a Broker served in this process,
with a durable audit log (fdatasync per commit) in a temporary directory:

- sequential: one request in flight (open + read); every request costs one commit.
- pipelined:  Parent.read_many() keeps up to 128 requests in flight; the broker records a
              whole batch with one commit (group commit).
- direct:     open + read + close of the same file in the agent, no broker.

Prints numbers; asserts nothing. Usage: ci/bench_broker.py [--n 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from types import MappingProxyType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.agent.client import PIPELINE_WINDOW  # noqa: E402
from sandbox.parent.audit import AuditLog, verify  # noqa: E402
from sandbox.parent.broker import Broker  # noqa: E402
from sandbox.policy.model import Policy, Resource  # noqa: E402

AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    import sandbox
    n = int(sys.argv[1])
    root = sys.argv[2]
    parent = sandbox.connect()

    def pct(lat, q):
        lat = sorted(lat)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6

    out = {}
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        assert len(parent.read("vault", "f.txt")) == 100
        lat.append(time.perf_counter() - t)
    out["sequential"] = [n / (time.perf_counter() - t0), pct(lat, 0.5), pct(lat, 0.99)]

    batch = 256
    lat = []
    t0 = time.perf_counter()
    done = 0
    while done < n:
        t = time.perf_counter()
        got = parent.read_many("vault", ["f.txt"] * batch)
        assert all(len(g) == 100 for g in got)
        lat.append((time.perf_counter() - t) / batch)
        done += batch
    out["pipelined"] = [done / (time.perf_counter() - t0), pct(lat, 0.5), pct(lat, 0.99)]

    path = os.path.join(root, "f.txt")
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        with open(path, "rb") as f:
            assert len(f.read()) == 100
        lat.append(time.perf_counter() - t)
    out["direct"] = [n / (time.perf_counter() - t0), pct(lat, 0.5), pct(lat, 0.99)]
    print(json.dumps(out))
    """
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="reads per mode")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        root = Path(tmp) / "vault"
        root.mkdir()
        (root / "f.txt").write_bytes(b"x" * 100)
        policy = Policy(
            name="bench",
            capabilities=frozenset({("vault", "read")}),
            resources=MappingProxyType({"vault": Resource("vault", "dir", path=str(root))}),
        )
        log = Path(tmp) / "audit.jsonl"
        audit = AuditLog(log, "bench")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        env = {"SANDBOX_BROKER_FD": "3", "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}
        proc = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{fd} {fd}<&-',
                sys.executable,
                "-c",
                AGENT,
                str(args.n),
                str(root),
            ],
            pass_fds=(fd,),
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        theirs.close()
        broker = Broker(ours, policy, audit, proc.pid, {})
        commits = [0]
        real_commit = audit.commit

        def counting_commit() -> None:
            commits[0] += 1
            real_commit()

        audit.commit = counting_commit  # type: ignore[method-assign]

        def loop() -> None:
            sel = selectors.DefaultSelector()
            sel.register(broker.fileno(), selectors.EVENT_READ)
            while not sel.select(timeout=60) or broker.on_readable():
                pass
            broker.close()

        t = threading.Thread(target=loop, daemon=True)
        started = time.perf_counter()
        t.start()
        stdout, _ = proc.communicate(timeout=600)
        t.join(60)
        audit.close()
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            print(f"agent failed with status {proc.returncode}", file=sys.stderr)
            return 1
        res = json.loads(stdout)
        check = verify(log)
        print(
            f"broker bench: {args.n} reads of a 100-byte file per mode, audit log on "
            f"{log.parent} (fdatasync per commit)"
        )
        print(f"{'mode':<12}{'ops/s':>12}{'p50 us':>10}{'p99 us':>10}")
        for mode in ("sequential", "pipelined", "direct"):
            ops, p50, p99 = res[mode]
            print(f"{mode:<12}{ops:>12,.0f}{p50:>10.1f}{p99:>10.1f}")
        print(
            f"(pipelined latency is per request, amortised over batches of 256 in windows "
            f"of {PIPELINE_WINDOW})\naudit: {check.records} records, {commits[0]} commits, "
            f"chain {'intact' if check.ok else 'BROKEN: ' + check.message}; "
            f"total {elapsed:.1f}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
