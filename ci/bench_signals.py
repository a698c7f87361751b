"""Signals to oneself: direct, and under the filter (where the filter decides them: kill,
raise; and where the parent does: a thread's tkill of its own thread id).

Setups alternate within each round; each round takes the best of short bursts; the table
gives the median over the rounds and the spread (min-max of the rounds' values).
Prints numbers; asserts nothing. `--json` prints them as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SANDBOX = os.path.join(os.path.dirname(sys.executable), "sandbox")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
BURSTS = 3
N = int(os.environ.get("BENCH_SIGNALS", "20000"))
LABELS = ("kill(getpid(), 0)", "raise(SIGUSR1)", "tkill(own thread) [parent decides]")


def build(tmp: str) -> str:
    out = os.path.join(tmp, "signal_loop")
    subprocess.run(
        ["gcc", "-O1", "-pthread", "-o", out, os.path.join(HERE, "signal_loop.c")], check=True
    )
    return out


def burst(argv: list[str]) -> list[float]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return [float(x) for x in out[:3]]


def main() -> None:
    as_json = "--json" in sys.argv
    tmp = tempfile.mkdtemp(prefix="sandbox-bench-sig-")
    prog = build(tmp)
    log = os.path.join(tmp, "audit.jsonl")
    setups = {
        "direct": [prog, str(N)],
        "sandboxed": [
            SANDBOX, "run", "-p", "stdio rpath thread", "-v", f"{tmp}:rx", "-v", "@system:rx",
            "--audit-log", log, "--", prog, str(N),
        ],
    }  # fmt: skip
    per_round: dict[str, list[list[float]]] = {name: [] for name in setups}
    for _ in range(ROUNDS):
        for name, argv in setups.items():  # alternated within the round
            bursts = [burst(argv) for _ in range(BURSTS)]
            per_round[name].append([min(b[i] for b in bursts) for i in range(3)])
    result = {
        name: {
            label: {
                "median_ns": statistics.median(r[i] for r in rounds),
                "min_ns": min(r[i] for r in rounds),
                "max_ns": max(r[i] for r in rounds),
            }
            for i, label in enumerate(LABELS)
        }
        for name, rounds in per_round.items()
    }
    shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        print(json.dumps({"signals": result, "rounds": ROUNDS, "calls": N}, indent=2))
        return
    print(f"signals to oneself ({N} calls a burst, best of {BURSTS}, median of {ROUNDS} rounds)")
    for label in LABELS:
        d, s = result["direct"][label], result["sandboxed"][label]
        print(
            f"  {label:<36} direct {d['median_ns']:9.1f} ns  sandboxed {s['median_ns']:9.1f} ns"
            f"  (spread {s['min_ns']:.1f}-{s['max_ns']:.1f})"
        )


if __name__ == "__main__":
    main()
