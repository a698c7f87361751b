#!/usr/bin/env python3
"""What learning costs: a command alone, under its learned policy, and learned.

For each command (tar czf, a Python script, grep -r): the setups alternate within each
round (plain, `sandbox run LEARNED`, `sandbox learn`), each timed as the best of a short
burst; the medians over the rounds are printed with their spread. The learned policy is
learned once beforehand, in the same directory.

    .venv/bin/python ci/bench_learn.py [--rounds 7] [--burst 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = [sys.executable, "-m", "sandbox"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH="/usr/bin:/bin", LANG="C.UTF-8")


def setup(d: Path) -> None:
    (d / "src" / "sub").mkdir(parents=True)
    for i in range(50):
        (d / "src" / f"f{i}.txt").write_text(f"line {i} needle\n" * 50)
    (d / "s.py").write_text("import json, os\nprint(json.dumps(sorted(os.listdir('src'))))\n")


COMMANDS = {
    "tar czf": ["tar", "czf", "/dev/null", "src"],
    "python3 script": ["/usr/bin/python3", "s.py"],
    "grep -r": ["grep", "-rc", "needle", "src"],
}


def once(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL, check=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--burst", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-learn-") as tmp:
        d = Path(tmp)
        setup(d)
        log = str(d / "audit.jsonl")
        for name, command in COMMANDS.items():
            policy = d / f"{name.split()[0]}.yaml"
            learn = [*SANDBOX, "learn", "--audit-log", log, "--out", str(policy), "--", *command]
            subprocess.run(learn, cwd=d, env=ENV, check=True, capture_output=True)
            setups = {
                "plain": command,
                "run learned": [*SANDBOX, "run", str(policy), "--audit-log", log, "--", *command],
                "learn": learn,
            }
            times: dict[str, list[float]] = {k: [] for k in setups}
            for _ in range(opts.rounds):
                for key, argv in setups.items():
                    times[key].append(min(once(argv, d) for _ in range(opts.burst)))
            out[name] = {
                k: {
                    "median_ms": statistics.median(v) * 1000,
                    "min_ms": min(v) * 1000,
                    "max_ms": max(v) * 1000,
                }
                for k, v in times.items()
            }
    if opts.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'command':<16} {'setup':<12} {'median ms':>10} {'min':>8} {'max':>8}")
    for name, rows in out.items():
        for key, r in rows.items():
            print(
                f"{name:<16} {key:<12} {r['median_ms']:>10.1f} {r['min_ms']:>8.1f} "
                f"{r['max_ms']:>8.1f}"
            )


if __name__ == "__main__":
    main()
