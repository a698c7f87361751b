#!/usr/bin/env python3
"""Audit log throughput: record() (one fdatasync per record) vs group commit (64 per sync).

Usage: .venv/bin/python ci/bench_audit.py [DIR]   (default: a temp dir under /work)
Prints numbers only; no assertions. The file system matters most (fdatasync cost).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox.parent.audit import AuditLog, verify

RECORDS = 4096
BATCH = 64
FIELDS = {
    "pid": 4242,
    "op": "open",
    "resource": "vault",
    "path": "notes/2024/some-note.md",
    "decision": "allow",
    "reason": "vault:read",
}


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


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(path: Path, batch: int) -> tuple[float, list[float]]:
    """(records per second, commit latencies in seconds)."""
    latencies: list[float] = []
    with AuditLog(path, "bench") as log:
        t0 = time.perf_counter()
        for _ in range(RECORDS // batch):
            for _ in range(batch):
                log.append("op", **FIELDS)
            t = time.perf_counter()
            log.commit()
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
    return RECORDS / elapsed, latencies


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "/work"
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-audit-") as tmp:
        print(f"directory: {tmp} ({mount_of(tmp)})")
        print(f"{RECORDS} op records each run")
        print(
            f"{'mode':<28} {'records/s':>10} {'commits':>8} {'p50 commit':>11} {'p99 commit':>11}"
        )
        for name, batch in (
            ("record() (commit each)", 1),
            (f"append() x{BATCH} + commit()", BATCH),
        ):
            path = Path(tmp) / f"b{batch}.log"
            rate, lat = run(path, batch)
            print(
                f"{name:<28} {rate:>10.0f} {len(lat):>8} "
                f"{pct(lat, 50) * 1e3:>9.3f}ms {pct(lat, 99) * 1e3:>9.3f}ms"
                f"  (verify: {verify(path).message})"
            )
        print(f"mean record size: {os.path.getsize(path) / RECORDS:.0f} bytes")


if __name__ == "__main__":
    main()
