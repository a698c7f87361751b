"""Launch overhead of `sandbox run`, cold and warm, beside its peers, and the per-syscall
cost of the seccomp filter. Prints numbers (or --json); asserts nothing.

Method (the machine is shared and noisy): the setups are alternated within each round (the
order rotates from round to round), each gets a short burst of runs of which the best
counts (the least disturbed), and the figures are medians over the rounds with their
spread (min-max of the rounds' bests). Overhead is a setup's median minus the direct
run's, measured in the same rounds. Spawning is posix_spawn from this process for all.

Rows: the command itself; `sandbox run` cold through the compiled client (which execs
the Python entry point) and through the Python entry point alone; warm through the
compiled client and through the Python client, both served by one `sandbox serve` this
script starts; bubblewrap; firejail; Landlock alone (ci/landlock_only.c: no_new_privs, a
ruleset, restrict_self, exec), the kernel's share of an unveil.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

ROUNDS = max(9, int(os.environ.get("BENCH_ROUNDS", "11")))
BURST = int(os.environ.get("BENCH_BURST", "5"))
LOOP = int(os.environ.get("BENCH_LOOP", "500000"))
HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
COMPILED = os.path.join(BIN, "sandbox")
PYTHON_ENTRY = os.path.join(BIN, "sandbox-py")


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def spawn_ms(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """One run, stdio on /dev/null: milliseconds from spawn to reaped."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - t0) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed (wait status {status})")
    return elapsed


class Setup:
    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], burst: int) -> None:
        self.name, self.argv, self.env, self.burst = name, argv, env, burst
        self.bests: list[float] = []

    def round(self) -> None:
        self.bests.append(min(spawn_ms(self.argv, self.env) for _ in range(self.burst)))

    def summary(self, base: float | None) -> dict[str, float]:
        med = statistics.median(self.bests)
        out = {"median_ms": med, "min_ms": min(self.bests), "max_ms": max(self.bests)}
        if base is not None:
            out["overhead_ms"] = med - base
        return out


def alternate(setups: Sequence[Setup], rounds: int) -> None:
    for r in range(rounds):
        k = r % len(setups)
        for s in (*setups[k:], *setups[:k]):
            s.round()


class WarmServer:
    def __init__(self, directory: str, env: Mapping[str, str]) -> None:
        self.path = os.path.join(directory, "serve.sock")
        self.log = open(os.path.join(directory, "serve.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "serve", "--socket", self.path],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=dict(env),
        )
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline().startswith(b"listening"):
            raise SystemExit("bench: sandbox serve did not start")

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            lines = [x for x in f.read().splitlines() if "stopped after" in x]
        return lines[-1] if lines else ""


def build(tmp: str, name: str) -> str | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    out = os.path.join(tmp, name)
    subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, f"{name}.c")], check=True)
    return out


def launch_rows(tmp: str) -> tuple[dict[str, dict[str, float]], str]:
    true = shutil.which("true") or "/bin/true"
    log = os.path.join(tmp, "audit.jsonl")
    env = dict(os.environ)
    cold_env = dict(env, SANDBOX_SERVER="off")
    run_args = ["run", "-p", "stdio rpath", "-v", "/usr:rx", "--audit-log", log, "--", true]
    server = WarmServer(tmp, env)
    warm_env = dict(env, SANDBOX_SERVER=server.path)
    compiled = _is_elf(COMPILED)
    python_entry = PYTHON_ENTRY if compiled else COMPILED
    bwrap, firejail = shutil.which("bwrap"), shutil.which("firejail")
    landlock = build(tmp, "landlock_only")
    # (name, argv, environment, burst); None argv: not available here
    table: list[tuple[str, list[str] | None, Mapping[str, str], int]] = [
        ("true", [true], env, BURST),
        ("sandbox run, cold (compiled entry)", [COMPILED, *run_args] if compiled else None,
         cold_env, 3),
        ("sandbox run, cold (Python entry)", [python_entry, *run_args], cold_env, 3),
        ("sandbox run, warm (compiled client)", [COMPILED, *run_args] if compiled else None,
         warm_env, BURST),
        ("sandbox run, warm (Python client)", [python_entry, *run_args], warm_env, BURST),
        ("bubblewrap", [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib64", "/lib64",
                        "--symlink", "usr/lib", "/lib", "--unshare-all", "--die-with-parent",
                        true] if bwrap else None, env, BURST),
        ("firejail", [firejail, "--quiet", "--noprofile", "--seccomp", true] if firejail else None,
         env, 3),
        ("Landlock only", [landlock, "/usr:rx", "--", true] if landlock else None, env, BURST),
    ]  # fmt: skip
    setups = [Setup(name, argv, e, b) for name, argv, e, b in table if argv is not None]
    try:
        for s in setups:  # warm-up: page cache, bytecode, the filter cache, the server
            s.round()
            s.bests.clear()
        alternate(setups, ROUNDS)
    finally:
        served = server.stop()
    base = statistics.median(setups[0].bests)
    rows = {s.name: s.summary(None if s is setups[0] else base) for s in setups}
    return rows, served


def _under_allow_all(prog: str, n: int) -> str:
    """The loop under a filter that allows everything: the cost of having a seccomp filter
    at all (the kernel's seccomp entry path), which no filter can go below."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        import pyseccomp

        filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        filt.add_rule(pyseccomp.ERRNO(1), "kexec_load")
        filt.load()
        os.execv(prog, [prog, str(n)])
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def syscall_rows(tmp: str) -> dict[str, dict[str, float]]:
    prog = build(tmp, "syscall_loop")
    if prog is None:
        return {}
    log = os.path.join(tmp, "audit-loop.jsonl")
    sandboxed = [
        COMPILED if os.path.exists(COMPILED) else sys.executable, "run", "-p", "stdio rpath",
        "-v", "/usr:rx", "-v", f"{tmp}:rx", "--audit-log", log, "--", prog, str(LOOP),
    ]  # fmt: skip
    env = dict(os.environ, SANDBOX_SERVER="off")

    def output(argv: list[str], run_env: Mapping[str, str] | None = None) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True, env=run_env).stdout

    kinds: dict[str, Callable[[], str]] = {
        "direct": lambda: output([prog, str(LOOP)]),
        "under the filter": lambda: output(sandboxed, env),
        "allow-all filter": lambda: _under_allow_all(prog, LOOP),
    }
    samples: dict[str, list[list[float]]] = {k: [] for k in kinds}
    names = list(kinds)
    for r in range(ROUNDS):
        k = r % len(names)
        for name in (*names[k:], *names[:k]):
            samples[name].append([float(x) for x in kinds[name]().split()])
    out: dict[str, dict[str, float]] = {}
    for i, call in enumerate(("getppid", "stat")):
        row = {}
        for name in names:
            values = [s[i] for s in samples[name]]
            row[f"{name} ns"] = statistics.median(values)
            row[f"{name} spread ns"] = max(values) - min(values)
        d = row["direct ns"]
        row["filter %"] = (row["under the filter ns"] - d) / d * 100
        row["allow-all %"] = (row["allow-all filter ns"] - d) / d * 100
        out[call] = row
    return out


def main() -> None:
    as_json = "--json" in sys.argv[1:]
    tmp = tempfile.mkdtemp(prefix="sandbox-bench-")
    try:
        load_before = os.getloadavg()
        launch, served = launch_rows(tmp)
        calls = syscall_rows(tmp)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if as_json:
        print(json.dumps({
            "rounds": ROUNDS, "burst": BURST, "loop": LOOP,
            "loadavg": {"before": load_before, "after": load_after},
            "launch": launch, "syscalls": calls, "server": served,
        }, indent=2))  # fmt: skip
        return
    print(
        f"== launch of `true` (median over {ROUNDS} alternated rounds of the best of "
        f"{BURST}; spread = min-max of the rounds; load {load_before[0]:.2f} -> "
        f"{load_after[0]:.2f})"
    )
    for name, row in launch.items():
        extra = f"  overhead {row['overhead_ms']:6.2f} ms" if "overhead_ms" in row else ""
        print(
            f"{name:<38} {row['median_ms']:7.2f} ms  "
            f"({row['min_ms']:.2f}-{row['max_ms']:.2f}){extra}"
        )
    bw = launch.get("bubblewrap", {}).get("overhead_ms")
    warm = launch.get("sandbox run, warm (compiled client)", {}).get("overhead_ms")
    if bw and warm:
        print(f"warm (compiled) / bubblewrap overhead: {warm / bw:.1f}x (target: at most 2x)")
    print(f"== per-syscall cost ({LOOP} calls each, timed inside the program; medians of {ROUNDS})")
    for call, row in calls.items():
        print(
            f"{call:<8} direct {row['direct ns']:6.1f} ns  under filter "
            f"{row['under the filter ns']:6.1f} ns ({row['filter %']:+5.1f}%)  allow-all "
            f"{row['allow-all filter ns']:6.1f} ns ({row['allow-all %']:+5.1f}%)"
        )


if __name__ == "__main__":
    main()
