#!/usr/bin/env python3
"""Audit log throughput: 1, 4 and 16 writer processes on one log, durable and batch mode,
beside what the disk itself allows (write + fdatasync in a loop, no log; the same under a
lock released before the sync, and held across it) and its fdatasync latency, measured
in the same run.

Every writer is a process with its own AuditLog (as `sandbox run`s sharing one
--audit-log are) doing record() (append + commit) of an op record in a loop. The setups
are alternated within each round; a round's figure for a setup is the best of BURSTS
short bursts; the table shows the median over ROUNDS rounds and the spread (min-max).

Usage: ci/bench_audit.py [--dir DIR] [--rounds 9] [--bursts 2] [--burst 0.2] [--json]
Prints numbers only; asserts nothing. The file system matters most (fdatasync cost):
the default directory is under /work (the disk), not /tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.parent.audit import verify  # noqa: E402

# A writer: waits for "MODE SECONDS" lines on stdin, runs a burst, prints its count.
# MODE: durable | batch (an AuditLog in that mode); raw (write + fdatasync, no log: what
# the disk allows); released (flock, write, unlock, fdatasync, no log: the log's protocol
# without its Python); held (flock, write, fdatasync, unlock: the lock held across the
# sync, as the log did before).
WRITER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    from sandbox.parent.audit import AuditLog
    path, raw_path = sys.argv[1], sys.argv[2]
    fields = dict(pid=4242, op="open", resource="vault", path="notes/2024/some-note.md",
                  decision="allow", reason="vault:read promised")
    line = b"x" * 255 + b"\\n"
    print("ready", flush=True)
    for command in sys.stdin:
        mode, seconds = command.split()
        n = 0
        if mode in ("raw", "released", "held"):
            fd = os.open(raw_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            end = time.perf_counter() + float(seconds)
            while time.perf_counter() < end:
                if mode != "raw":
                    fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line)
                if mode == "released":
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.fdatasync(fd)
                if mode == "held":
                    fcntl.flock(fd, fcntl.LOCK_UN)
                n += 1
            os.close(fd)
        else:
            with AuditLog(path, "bench", sync=mode, window=0.002) as log:
                end = time.perf_counter() + float(seconds)
                while time.perf_counter() < end:
                    log.record("op", **fields)
                    n += 1
        print(n, flush=True)
    """
)

WRITERS = (1, 4, 16)
MODES = ("durable", "batch", "raw", "released", "held")


def mount_of(path: str) -> str:
    """'DEVICE on MOUNTPOINT type FSTYPE' for the mount holding `path`."""
    best = ("?", "?", "?")
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype)
    return f"{best[0]} on {best[1]} type {best[2]}"


def fdatasync_latency(directory: str, n: int = 200) -> list[float]:
    """Seconds of write(256 bytes) + fdatasync, n times, on a file in `directory`."""
    path = os.path.join(directory, "latency.bin")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    out = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"y" * 256)
            os.fdatasync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return out


class Pool:
    """Writer processes, started once, driven burst by burst."""

    def __init__(self, n: int, log: str, raw: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, log, raw],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(n)
        ]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"

    def burst(self, mode: str, seconds: float) -> float:
        t = time.perf_counter()
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"{mode} {seconds}\n")
            p.stdin.flush()
        total = 0
        for p in self.procs:
            assert p.stdout is not None
            total += int(p.stdout.readline())
        # Rate over the wall time of the whole burst (the slowest writer's end).
        return total / max(time.perf_counter() - t, seconds)

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def latency_us(latency: list[float]) -> dict[str, float]:
    """The disk's fdatasync latency, as both benches print it beside their rows."""
    return {f"p{p}": pct(latency, p) * 1e6 for p in (50, 90, 99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/work" if os.path.isdir("/work") else None)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--bursts", type=int, default=2, help="bursts per setup and round (best)")
    ap.add_argument("--burst", type=float, default=0.2, help="seconds per burst")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-audit-") as tmp:
        log, raw = os.path.join(tmp, "audit.jsonl"), os.path.join(tmp, "raw.bin")
        pools = {n: Pool(n, log, raw) for n in WRITERS}
        rates: dict[str, list[float]] = {f"{m} x{n}": [] for n in WRITERS for m in MODES}
        latency: list[float] = []
        try:
            for r in range(args.rounds):
                latency += fdatasync_latency(tmp, 50)
                setups = [(n, m) for n in WRITERS for m in MODES]
                # Alternate: every round in another order, so drift hits all setups alike.
                setups = setups[r % len(setups) :] + setups[: r % len(setups)]
                for n, m in setups:
                    best = max(pools[n].burst(m, args.burst) for _ in range(args.bursts))
                    rates[f"{m} x{n}"].append(best)
        finally:
            for pool in pools.values():
                pool.close()
        check = verify(log)
        where = f"{tmp} ({mount_of(tmp)})"
    result = {
        "directory": where,
        "rounds": args.rounds,
        "fdatasync_us": latency_us(latency),
        "records_per_s": {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for k, v in rates.items()
        },
        "log": {"records": check.records, "intact": check.ok},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    lat = result["fdatasync_us"]
    print(f"directory: {where}; {args.rounds} rounds, best of {args.bursts} x {args.burst}s")
    print(
        f"fdatasync latency of this disk (write 256 B + fdatasync): p50 {lat['p50']:.0f} us, "
        f"p90 {lat['p90']:.0f} us, p99 {lat['p99']:.0f} us"
    )
    print(f"{'records/s, median (min-max)':<30}" + "".join(f"{m:>21}" for m in MODES))
    for n in WRITERS:
        cells = []
        for m in MODES:
            s = result["records_per_s"][f"{m} x{n}"]
            cells.append(f"{s['median']:>9,.0f} ({s['min']:,.0f}-{s['max']:,.0f})")
        name = f"{n:>2} writer process{'es' if n > 1 else ''}"
        print(f"{name:<30}" + "".join(f"{c:>21}" for c in cells))
    print("raw: write + fdatasync of 256 bytes in a loop, no log (what the disk allows)")
    print("released: the same, the write under an exclusive flock released before the sync")
    print("held: the same, the flock held across the fdatasync (the old protocol)")
    print(f"log: {check.records} records, chain {'intact' if check.ok else 'BROKEN'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
