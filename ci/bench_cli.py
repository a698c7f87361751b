"""Wall time of `sandbox check`, `sandbox explain` and `sandbox promises` (target: under
100 ms each), beside the same commands through the typer app (the path they took before
the fast parser of sandbox.cli.quick) and the interpreter's own start (`python -c pass`,
what no Python command can go below). Prints numbers (or --json); asserts nothing.

Method as ci/bench_launch.py (whose Setup and alternate it uses): the setups alternate
within each round, each round keeps the best of a short burst, the figures are medians
over the rounds with their spread (min-max of the rounds' bests).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_launch import BIN, BURST, ROUNDS, Setup, alternate  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(BIN, "sandbox-py")
if not os.path.exists(ENTRY):  # no compiled client: the Python entry point is `sandbox`
    ENTRY = os.path.join(BIN, "sandbox")
TYPER = [sys.executable, "-c", "from sandbox.cli.commands import app; app(prog_name='sandbox')"]
POLICY = os.path.join(REPO, "policies", "relay.yaml")
COMMANDS = {
    "check": ["check", POLICY],
    "explain": ["explain", POLICY],
    "promises": ["promises"],
}


def main() -> None:
    as_json = "--json" in sys.argv[1:]
    env = dict(os.environ, SANDBOX_SERVER="off")
    setups = [Setup("python -c pass", [sys.executable, "-c", "pass"], env, BURST)]
    for name, args in COMMANDS.items():
        setups.append(Setup(f"sandbox {name}", [ENTRY, *args], env, BURST))
        setups.append(Setup(f"sandbox {name} (typer app)", [*TYPER, *args], env, BURST))
    load_before = os.getloadavg()
    for s in setups:  # warm-up: page cache, bytecode
        s.round()
        s.bests.clear()
    alternate(setups, ROUNDS)
    load_after = os.getloadavg()
    base = statistics.median(setups[0].bests)
    rows = {s.name: s.summary(None if s is setups[0] else base) for s in setups}
    if as_json:
        print(json.dumps({
            "rounds": ROUNDS, "burst": BURST, "target_ms": 100,
            "loadavg": {"before": load_before, "after": load_after}, "commands": rows,
        }, indent=2))  # fmt: skip
        return
    print(
        f"== check / explain / promises (median over {ROUNDS} alternated rounds of the best "
        f"of {BURST}; spread = min-max of the rounds; target: under 100 ms; load "
        f"{load_before[0]:.2f} -> {load_after[0]:.2f})"
    )
    for name, row in rows.items():
        extra = (
            f"  over python -c pass {row['overhead_ms']:6.2f} ms" if "overhead_ms" in row else ""
        )
        print(
            f"{name:<32} {row['median_ms']:7.2f} ms  ({row['min_ms']:.2f}-{row['max_ms']:.2f})"
            f"{extra}"
        )


if __name__ == "__main__":
    main()
