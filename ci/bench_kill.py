"""Kill the launcher with SIGKILL in the middle of brokered operations, then verify the log,
in both durability modes (`audit: {sync: durable}` and `{sync: batch, window: 2ms}`).

The agent reads a file through the parent in a loop and prints how many reads the parent
acknowledged. After the kill, every acknowledged read must have its op record: durable
mode syncs it before the reply leaves; batch mode writes it before the reply leaves, and a
SIGKILL of the writer loses nothing written (the bytes are in the page cache). The chain
must verify up to at most a partial last line (whose operation never took effect).

Usage: ci/bench_kill.py [--kills 3] [--seconds 1.5]. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from sandbox.parent.audit import verify
from sandbox.testing import write_policy

AGENT = """
import sandbox, sys
parent = sandbox.connect()
sandbox.pledge("stdio files:read")
n = 0
while True:
    parent.read("files", "f.txt")
    n += 1
    if n % 100 == 0:
        print(n, flush=True)
"""


def kill_once(tmp: str, sync: str, seconds: float) -> tuple[int, int, str]:
    """(reads acknowledged, op records in the log, verify's verdict) of one killed run."""
    files = os.path.join(tmp, "files")
    os.makedirs(files, exist_ok=True)
    with open(os.path.join(files, "f.txt"), "w") as f:
        f.write("x" * 100)
    audit = {"sync": sync, "window": "2ms"} if sync == "batch" else {"sync": sync}
    pol = write_policy(
        tmp,
        {
            "version": 1,
            "name": "killed",
            "lock": "agent",
            "pledge": "stdio files:read",
            "resources": {"files": {"type": "dir", "path": files}},
            "audit": audit,
        },
    )
    log = os.path.join(tmp, f"audit-{sync}.jsonl")
    if os.path.exists(log):
        os.unlink(log)
    argv = [
        sys.executable,
        "-m",
        "sandbox",
        "run",
        pol,
        "--audit-log",
        log,
        "--",
        sys.executable,
        "-c",
        AGENT,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    acked = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = verify(log)
    ops = 0
    with open(log, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a partial last line
            ops += rec.get("kind") == "op"
    verdict = "chain intact" if result.ok else result.message
    return acked, ops, f"{verdict}; {result.records} good records"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=3, help="killed runs per mode")
    ap.add_argument("--seconds", type=float, default=1.5, help="run time before the kill")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sandbox-kill-", dir="/work" if os.path.isdir("/work") else None)
    print("== SIGKILL of the launcher mid-run (alternating modes)")
    print(f"{'mode':<8} {'acknowledged':>12} {'op records':>11}  all recorded  verify")
    lost = 0
    for _ in range(args.kills):
        for sync in ("durable", "batch"):
            acked, ops, verdict = kill_once(tmp, sync, args.seconds)
            lost += ops < acked
            ok = "yes" if ops >= acked else "NO"
            print(f"{sync:<8} {acked:>12} {ops:>11}  {ok:<12}  {verdict}")
    print(f"every acknowledged read recorded in every run: {'yes' if not lost else 'NO'}")


if __name__ == "__main__":
    main()
