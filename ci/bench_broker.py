#!/usr/bin/env python3
"""Broker throughput: audited reads of a 100-byte file, durable and batch audit log, beside
reading it directly, with this disk's fdatasync latency measured in the same run.

Two agent processes (sandbox.agent.client on fd 3), each served by a Broker in this
process whose audit log is in one mode (durable: fdatasync before every reply; batch:
`audit: {sync: batch, window: 2ms}`), on the disk (a directory under /work):

- one in flight: parent.read() in a loop (open + read); every request is one commit.
- pipelined:     parent.read_many() of 256 paths, up to 128 requests in flight; the broker
                 records each batch it reads with one commit (group commit).
- direct:        open + read + close of the same file in the agent, no broker.

The setups are alternated within each round (the order rotates from round to round); a
round's figure for a setup is the best of BURSTS bursts of BURST seconds; the table shows
the median over ROUNDS rounds and the spread (min-max). Prints numbers; asserts nothing.

Usage: ci/bench_broker.py [--rounds 9] [--bursts 2] [--burst 0.25] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ci"))

from bench_audit import fdatasync_latency, latency_us, mount_of  # noqa: E402

from sandbox.agent.client import PIPELINE_WINDOW  # noqa: E402
from sandbox.parent.audit import AuditLog, verify  # noqa: E402
from sandbox.parent.broker import Broker  # noqa: E402
from sandbox.policy.model import Policy, Resource  # noqa: E402

# An agent: "MODE SECONDS" on stdin runs a burst; prints [ops/s, p50 us, p99 us].
AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    import sandbox
    root = sys.argv[1]
    parent = sandbox.connect()
    path = os.path.join(root, "f.txt")
    paths = ["f.txt"] * 256

    def one():
        assert len(parent.read("vault", "f.txt")) == 100
        return 1

    def many():
        got = parent.read_many("vault", paths)
        assert len(got) == 256 and len(got[0]) == 100
        return 256

    def direct():
        with open(path, "rb") as f:
            assert len(f.read()) == 100
        return 1

    modes = {"one": one, "pipelined": many, "direct": direct}
    print("ready", flush=True)
    for command in sys.stdin:
        mode, seconds = command.split()
        step = modes[mode]
        lat, done = [], 0
        t0 = time.perf_counter()
        end = t0 + float(seconds)
        while (t := time.perf_counter()) < end:
            n = step()
            lat.append((time.perf_counter() - t) / n)
            done += n
        rate = done / (time.perf_counter() - t0)
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6
        print(json.dumps([rate, q(0.5), q(0.99)]), flush=True)
    """
)

SETUPS = (
    ("one", "durable"),
    ("one", "batch"),
    ("pipelined", "durable"),
    ("pipelined", "batch"),
    ("direct", "-"),
)


class Served:
    """One agent process and the Broker serving it, with an audit log in one mode."""

    def __init__(self, tmp: str, root: Path, sync: str) -> None:
        policy = Policy(
            name="bench",
            capabilities=frozenset({("vault", "read")}),
            resources=MappingProxyType({"vault": Resource("vault", "dir", path=str(root))}),
        )
        self.log = Path(tmp) / f"audit-{sync}.jsonl"
        self.audit = AuditLog(self.log, "bench", sync=sync, window=0.002)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        env = {"SANDBOX_BROKER_FD": "3", "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}
        self.proc = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{fd} {fd}<&-',
                sys.executable,
                "-c",
                AGENT,
                str(root),
            ],
            pass_fds=(fd,),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        theirs.close()
        self.broker = Broker(ours, policy, self.audit, self.proc.pid, {})
        self.commits = 0
        real_commit = self.audit.commit

        def counting_commit() -> None:
            self.commits += 1
            real_commit()

        self.audit.commit = counting_commit  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.broker.fileno(), selectors.EVENT_READ)
        while not sel.select(timeout=600) or self.broker.on_readable():
            pass
        self.broker.close()

    def burst(self, mode: str, seconds: float) -> list[float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{mode} {seconds}\n")
        self.proc.stdin.flush()
        result: list[float] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)
        self.thread.join(60)
        self.audit.close()


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--bursts", type=int, default=2, help="bursts per setup and round (best)")
    ap.add_argument("--burst", type=float, default=0.25, help="seconds per burst")
    ap.add_argument("--dir", default="/work" if os.path.isdir("/work") else None)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-broker-") as tmp:
        root = Path(tmp) / "vault"
        root.mkdir()
        (root / "f.txt").write_bytes(b"x" * 100)
        served = {sync: Served(tmp, root, sync) for sync in ("durable", "batch")}
        rates: dict[str, list[float]] = {f"{m} {s}": [] for m, s in SETUPS}
        p50s: dict[str, list[float]] = {f"{m} {s}": [] for m, s in SETUPS}
        latency: list[float] = []
        try:
            for r in range(args.rounds):
                latency += fdatasync_latency(tmp, 50)
                order = SETUPS[r % len(SETUPS) :] + SETUPS[: r % len(SETUPS)]
                for mode, sync in order:
                    who = served["durable" if sync == "-" else sync]
                    best = max(
                        (who.burst(mode, args.burst) for _ in range(args.bursts)),
                        key=lambda b: b[0],
                    )
                    rates[f"{mode} {sync}"].append(best[0])
                    p50s[f"{mode} {sync}"].append(best[1])
        finally:
            for s in served.values():
                s.close()
        checks = {sync: verify(s.log) for sync, s in served.items()}
        records = {sync: c.records for sync, c in checks.items()}
        commits = {sync: s.commits for sync, s in served.items()}
        where = f"{tmp} ({mount_of(tmp)})"
    result: dict[str, Any] = {
        "directory": where,
        "rounds": args.rounds,
        "fdatasync_us": latency_us(latency),
        "ops_per_s": {k: summary(v) for k, v in rates.items()},
        "p50_us": {k: statistics.median(v) for k, v in p50s.items()},
        "audit": {
            sync: {"records": records[sync], "commits": commits[sync], "intact": c.ok}
            for sync, c in checks.items()
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    lat = result["fdatasync_us"]
    print(f"broker bench: reads of a 100-byte file; audit logs in {where}")
    print(f"{args.rounds} rounds, setups alternated, best of {args.bursts} x {args.burst}s each")
    print(
        f"fdatasync latency of this disk (write 256 B + fdatasync): p50 {lat['p50']:.0f} us, "
        f"p90 {lat['p90']:.0f} us, p99 {lat['p99']:.0f} us (the durable ceiling with one "
        f"request in flight: {1e6 / lat['p50']:,.0f}/s)"
    )
    print(f"{'setup':<22}{'ops/s median':>14}{'(min-max)':>22}{'p50 us':>9}")
    names = {"one": "one in flight", "pipelined": "pipelined", "direct": "direct reads"}
    for mode, sync in SETUPS:
        key = f"{mode} {sync}"
        s = result["ops_per_s"][key]
        label = f"{names[mode]}{'' if sync == '-' else ', ' + sync}"
        spread = f"({s['min']:,.0f}-{s['max']:,.0f})"
        print(f"{label:<22}{s['median']:>14,.0f}{spread:>22}{result['p50_us'][key]:>9.1f}")
    print(
        f"(pipelined: batches of 256, {PIPELINE_WINDOW} in flight; latency per request)\n"
        + "; ".join(
            f"{sync} log: {a['records']} records, {a['commits']} commits, chain "
            f"{'intact' if a['intact'] else 'BROKEN'}"
            for sync, a in result["audit"].items()
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
