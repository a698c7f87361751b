"""Launch overhead of `sandbox run` (and of bubblewrap and firejail, when installed) over
running the command directly, and the per-syscall cost of the seccomp filter.

Prints numbers; asserts nothing. Medians over many runs, all measured in this one run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(os.environ.get("BENCH_RUNS", "40"))
LOOP = int(os.environ.get("BENCH_LOOP", "1000000"))
HERE = os.path.dirname(os.path.abspath(__file__))
SANDBOX = os.path.join(os.path.dirname(sys.executable), "sandbox")


def median_ms(argv: list[str], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _under_allow_all(prog: str) -> str:
    """The same loop under a filter that allows everything: the cost of having a seccomp
    filter at all (the kernel's seccomp entry path), which no filter can go below."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        import pyseccomp

        filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        filt.add_rule(pyseccomp.ERRNO(1), "kexec_load")
        filt.load()
        os.execv(prog, [prog, str(LOOP)])
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="sandbox-bench-")
    log = os.path.join(tmp, "audit.jsonl")
    true = shutil.which("true") or "/bin/true"
    base = median_ms([true])
    rows = [("direct", base)]
    rows.append(
        (
            "sandbox run",
            median_ms(
                [
                    SANDBOX,
                    "run",
                    "-p",
                    "stdio rpath",
                    "-v",
                    "/usr:rx",
                    "--audit-log",
                    log,
                    "--",
                    true,
                ]
            ),
        )
    )
    bwrap = shutil.which("bwrap")
    if bwrap:
        rows.append(
            (
                "bubblewrap",
                median_ms(
                    [
                        bwrap,
                        "--ro-bind",
                        "/usr",
                        "/usr",
                        "--symlink",
                        "usr/lib64",
                        "/lib64",
                        "--unshare-all",
                        "--die-with-parent",
                        true,
                    ]
                ),
            )
        )
    firejail = shutil.which("firejail")
    if firejail:
        rows.append(
            (
                "firejail",
                median_ms(
                    [firejail, "--quiet", "--noprofile", "--seccomp", true], max(5, RUNS // 4)
                ),
            )
        )
    print(f"== launch overhead (median of {RUNS} runs of {true})")
    for name, ms in rows:
        extra = "" if name == "direct" else f"  overhead {ms - base:7.1f} ms"
        print(f"{name:<14} {ms:7.1f} ms{extra}")

    prog = os.path.join(tmp, "syscall_loop")
    subprocess.run(["gcc", "-O2", "-o", prog, os.path.join(HERE, "syscall_loop.c")], check=True)
    direct = subprocess.run(
        [prog, str(LOOP)], capture_output=True, text=True, check=True
    ).stdout.split()
    sandboxed = subprocess.run(
        [
            SANDBOX,
            "run",
            "-p",
            "stdio rpath",
            "-v",
            "/usr:rx",
            "-v",
            f"{tmp}:rx",
            "--audit-log",
            log,
            "--",
            prog,
            str(LOOP),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    floor = _under_allow_all(prog).split()
    print(f"== per-syscall cost ({LOOP} calls each, timed inside the program)")
    for i, call in enumerate(("getppid", "stat")):
        d, s, f = float(direct[i]), float(sandboxed[i]), float(floor[i])
        print(
            f"{call:<8} direct {d:7.1f} ns  under filter {s:7.1f} ns  (+{(s - d) / d * 100:5.1f}%)"
            f"  any filter (allow-all) {f:7.1f} ns  (+{(f - d) / d * 100:5.1f}%)"
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
