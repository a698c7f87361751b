"""Launch cost for every user: root, an ordinary user (user namespace, holder process, the
probe's throwaway child), and --trace-unveil; bubblewrap beside them as the peer.

Setups alternate within each round; each round takes the best of a short burst per setup;
the figure is the median over rounds. Prints numbers, asserts nothing. Run as root (the
ordinary user is the test user, through setpriv); as an ordinary user, the root rows are
left out.
"""

from __future__ import annotations

import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
BURST = int(os.environ.get("BENCH_BURST", "5"))
PY = sys.executable
USER = os.environ.get("SANDBOX_TEST_USER", "sandboxtest")


def as_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    pw = pwd.getpwnam(USER)
    return [
        "setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--clear-groups",
        "--",
        *argv,
    ]


def best_of_burst(argv: list[str], env: dict[str, str]) -> float:
    best = float("inf")
    for _ in range(BURST):
        t0 = time.perf_counter()
        subprocess.run(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False
        )
        best = min(best, (time.perf_counter() - t0) * 1000)
    return best


def main() -> None:
    work = tempfile.mkdtemp(prefix="sandbox-bench-users-")
    os.chmod(work, 0o777)
    log = os.path.join(work, "audit-{}.jsonl")
    true = shutil.which("true") or "/bin/true"
    env = {"PATH": f"{os.path.dirname(PY)}:/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
    run = [PY, "-m", "sandbox", "run", "-p", "stdio rpath", "-v", "/usr:rx"]
    setups: dict[str, list[str]] = {}
    if os.geteuid() == 0:
        setups["direct (root)"] = [true]
        setups["sandbox run, root"] = [*run, "--audit-log", log.format("root"), "--", true]
    setups["direct (user)"] = as_user([true])
    setups["sandbox run, ordinary user"] = as_user(
        [*run, "--audit-log", log.format("user"), "--", true]
    )
    setups["  + --trace-unveil"] = as_user(
        [*run, "--trace-unveil", "--audit-log", log.format("trace"), "--", true]
    )
    bwrap = shutil.which("bwrap")
    if bwrap:
        setups["bubblewrap --unshare-all (user)"] = as_user(
            [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib64", "/lib64",
             "--unshare-all", "--die-with-parent", true]
        )  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(ROUNDS):
        for name, argv in setups.items():
            results[name].append(best_of_burst(argv, env))
    print(f"== launch by user (median over {ROUNDS} rounds of the best of {BURST}, alternated)")
    for name, values in results.items():
        print(f"{name:<34} {statistics.median(values):7.1f} ms")
    # The user-namespace probe alone: what an ordinary user's launch pays to ask the kernel.
    probe = as_user([PY, "-c", "from sandbox.enforce import kernel; kernel.probe_userns()"])
    bare = as_user([PY, "-c", "import sandbox.enforce.kernel"])
    diffs = [best_of_burst(probe, env) - best_of_burst(bare, env) for _ in range(ROUNDS)]
    print(f"{'user-namespace probe (child)':<34} {statistics.median(diffs):7.1f} ms")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
