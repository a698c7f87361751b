"""Cost of a call the parent performs: a brokered chmod (path form, decided and performed by
the parent and the agent's performer, with its durable op record) next to direct ones.

One agent under `sandbox run` alternates bursts of the brokered chmod(path) with bursts of
the direct fchmod(fd) (the descriptor form the filter allows outright); the same program
run without the sandbox gives chmod(path) with no sandbox at all. Per call: the best burst
of each round, the median over rounds. The audit log is on the same disk as the work
directory (every op record is committed with fdatasync before the agent gets its answer);
a second run puts it on /dev/shm to show what the record costs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
BURSTS = int(os.environ.get("BENCH_BURSTS", "3"))
CALLS = int(os.environ.get("BENCH_CALLS", "200"))
ROOT = Path(__file__).resolve().parent.parent

AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    path = sys.argv[1]
    rounds, bursts, calls = map(int, sys.argv[2:5])
    brokered = sys.argv[5] == "1"
    fd = os.open(path, os.O_RDONLY)

    def burst(fn):
        t0 = time.perf_counter_ns()
        for i in range(calls):
            fn(0o600 | (i & 0o44))
        return (time.perf_counter_ns() - t0) / calls / 1000  # microseconds per call

    setups = {"chmod_path": lambda m: os.chmod(path, m), "fchmod_fd": lambda m: os.fchmod(fd, m)}
    out = {name: [] for name in setups}
    for _ in range(rounds):
        for name, fn in setups.items():  # alternated within each round
            out[name].append(min(burst(fn) for _ in range(bursts)))
    print("BENCH " + json.dumps(out), flush=True)
    """
)


def _run(work: Path, log: Path | None) -> dict[str, list[float]]:
    target = work / "f"
    target.write_text("x")
    args = [str(target), str(ROUNDS), str(BURSTS), str(CALLS)]
    if log is None:
        cmd = [sys.executable, "-c", AGENT, *args, "0"]
    else:
        cmd = [sys.executable, "-m", "sandbox", "run", "-p", "stdio rpath fattr",
               "-v", "@python:rx", "-v", "@system:rx", "-v", f"{work}:rw",
               "--audit-log", str(log), "--", sys.executable, "-c", AGENT, *args, "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=work)
    for line in p.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])  # type: ignore[no-any-return]
    raise SystemExit(f"bench_perform: no result (exit {p.returncode})\n{p.stderr[-2000:]}")


def _med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-perform-", dir="/tmp") as tmp:
        work = Path(tmp)
        disk = _run(work, work / "audit.jsonl")
        shm_dir = Path("/dev/shm") if Path("/dev/shm").is_dir() else work
        shm_log = shm_dir / f"bench-perform-{os.getpid()}.jsonl"
        try:
            shm = _run(work, shm_log)
        finally:
            shm_log.unlink(missing_ok=True)
        plain = _run(work, None)
    n = ROUNDS * CALLS
    print(
        f"== calls the parent performs (median of {ROUNDS} rounds, "
        f"best of {BURSTS} bursts of {CALLS})"
    )
    print(f"brokered chmod(path), log on disk     {_med(disk['chmod_path']):8.1f} us per call")
    print(f"brokered chmod(path), log on /dev/shm {_med(shm['chmod_path']):8.1f} us per call")
    print(f"direct fchmod(fd) in the same agent   {_med(disk['fchmod_fd']):8.2f} us per call")
    print(f"direct chmod(path), no sandbox        {_med(plain['chmod_path']):8.2f} us per call")
    print(f"({n} brokered calls per run, each with a durable op record)")


if __name__ == "__main__":
    main()
