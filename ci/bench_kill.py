"""Kill the launcher with SIGKILL in the middle of brokered operations, then verify the log.

The agent reads a file through the parent in a loop and prints how many reads the parent
acknowledged. After the kill, every acknowledged read must have its op record (write-ahead:
the record is durable before the reply leaves), and the chain must verify up to at most a
partial last line (whose operation never took effect). Prints numbers; asserts nothing.
"""

from __future__ import annotations

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


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="sandbox-kill-", dir="/work" if os.path.isdir("/work") else None)
    files = os.path.join(tmp, "files")
    os.mkdir(files)
    with open(os.path.join(files, "f.txt"), "w") as f:
        f.write("x" * 100)
    pol = write_policy(
        tmp,
        {
            "version": 1,
            "name": "killed",
            "lock": "agent",
            "pledge": "stdio files:read",
            "resources": {"files": {"type": "dir", "path": files}},
        },
    )
    log = os.path.join(tmp, "audit.jsonl")
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
    deadline = time.monotonic() + 1.5
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
    print("== SIGKILL of the launcher mid-run")
    print(f"reads acknowledged to the agent (at least) {acked}")
    print(f"op records in the log                     {ops}")
    print(
        f"verify: {'chain intact' if result.ok else result.message}; {result.records} good records"
    )
    print(f"every acknowledged read recorded: {'yes' if ops >= acked else 'NO'}")


if __name__ == "__main__":
    main()
