"""Cost of sandbox.unveil() + sandbox.pledge() in a running Python process (time to lock),
with the compiled-filter cache and without it, and the import of the agent's API apart.

Each sample forks a child of this process (which has not imported sandbox) that imports
sandbox.agent.pledge (timed: it belongs to the agent's init), then times unveil, unveil()
and pledge() (or unveil and a pledge() that locks the view itself) and reports both
through a pipe. The two setups are alternated in rounds;
the figures are medians over the rounds of the best of a short burst, with the spread.
Prints numbers (or --json); asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

ROUNDS = max(9, int(os.environ.get("BENCH_ROUNDS", "11")))
BURST = int(os.environ.get("BENCH_BURST", "5"))


def sample(cache: bool, explicit_lock: bool = True) -> tuple[float, float]:
    """(import ms, unveil+pledge ms) in a fresh child; with `explicit_lock` the view is
    locked by unveil() before pledge() (else pledge() locks it)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if not cache:
            os.environ["SANDBOX_FILTER_CACHE"] = "off"
        t0 = time.perf_counter()
        import sandbox.agent.pledge as api

        t1 = time.perf_counter()
        api.unveil(sys.prefix, "rx")
        api.unveil("/usr", "rx")
        if explicit_lock:
            api.unveil()
        api.pledge("stdio rpath")
        t2 = time.perf_counter()
        os.write(w, f"{(t1 - t0) * 1000:.3f} {(t2 - t1) * 1000:.3f}".encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    imp, lock = data.split()
    return float(imp), float(lock)


def main() -> None:
    # A cache of this run's own, warmed by one sample, so "with the cache" means a hit.
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sandbox-bench-cache-")
    sample(True, explicit_lock=False)  # stores the entry (a pledge that locks the view can)
    setups = {
        "with the cache": (True, True),
        "with the cache, pledge locks": (True, False),
        "without the cache": (False, True),
    }
    lock: dict[str, list[float]] = {name: [] for name in setups}
    imports: list[float] = []
    names = list(setups)
    for r in range(ROUNDS):
        k = r % len(names)
        for name in (*names[k:], *names[:k]):
            burst = [sample(*setups[name]) for _ in range(BURST)]
            lock[name].append(min(b[1] for b in burst))
            imports.append(min(b[0] for b in burst))
    rows = {
        name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
        for name, v in lock.items()
    }
    rows["import sandbox.agent (init)"] = {
        "median_ms": statistics.median(imports),
        "min_ms": min(imports),
        "max_ms": max(imports),
    }
    if "--json" in sys.argv[1:]:
        print(json.dumps({"rounds": ROUNDS, "burst": BURST, "pledge": rows}, indent=2))
        return
    print(
        f"== pledge()+unveil() in a running Python process (median over {ROUNDS} alternated "
        f"rounds of the best of {BURST}; target with the cache: under 2 ms)"
    )
    for name, row in rows.items():
        print(f"{name:<30} {row['median_ms']:7.2f} ms  ({row['min_ms']:.2f}-{row['max_ms']:.2f})")


if __name__ == "__main__":
    main()
