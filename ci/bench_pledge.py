"""Cost of sandbox.unveil() + sandbox.pledge() in a running Python process (time to lock).

Each sample forks a child that imports sandbox first (as an agent would during init), then
times unveil+unveil()+pledge() and reports it through a pipe. Prints the median.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

RUNS = int(os.environ.get("BENCH_RUNS", "40"))


def sample() -> float:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        import sandbox
        from sandbox.enforce import seccomp

        seccomp.preload()
        t0 = time.perf_counter()
        sandbox.unveil(sys.prefix, "rx")
        sandbox.unveil("/usr", "rx")
        sandbox.unveil()
        sandbox.pledge("stdio rpath")
        os.write(w, f"{(time.perf_counter() - t0) * 1000:.3f}".encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(data)


def main() -> None:
    times = [sample() for _ in range(RUNS)]
    print(f"== pledge()+unveil() in a running Python process (median of {RUNS})")
    print(
        f"time to lock   {statistics.median(times):7.2f} ms  "
        f"(p90 {sorted(times)[int(RUNS * 0.9)]:.2f} ms)"
    )


if __name__ == "__main__":
    main()
