"""Helpers shared by the escape and unveil suites: run a program under `sandbox run` (a
real process) and the same program directly, and read what it printed.

Agent programs are Python source run with the venv interpreter; PRELUDE gives them
`attempt` (the errno name of a failure, or "ok"), `raw` (a bare system call), `report`
(a RESULT line of JSON) and `read`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.testing import Result, assert_denied, write_policy

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent.parent
PROGS_SRC = Path(__file__).resolve().parent
BASE_UNVEIL = ("@python:rx", "@system:rx")
VIOLATION_EXIT = 159
SECRET = "TOPSECRET-7f3a"
_counter = itertools.count()


def fresh() -> int:
    """A number unique in this test session (names of policies, logs, sockets)."""
    return next(_counter)


# What every agent program starts with: a way to try a call and print what it gave.
PRELUDE = r'''
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def attempt(fn, *a):
    """'ok' (or the value when it is a str/int/bytes) or the errno name of the failure."""
    try:
        r = fn(*a)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    if isinstance(r, bytes):
        return r.decode(errors="replace")
    return r if isinstance(r, (str, int)) and not isinstance(r, bool) else "ok"
def raw(nr, *a):
    """The system call itself: its value, or the errno name."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return errno.errorcode.get(ctypes.get_errno(), "?") if r == -1 else r
def report(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
def read(path):
    with open(path, "rb") as f:
        return f.read()
KEEP = []
def ptr(data):
    """The address of a C copy of `data`, kept alive (for raw calls that take pointers)."""
    buf = ctypes.create_string_buffer(data)
    KEEP.append(buf)
    return ctypes.addressof(buf)
'''


def agent(body: str) -> list[str]:
    return [PY, "-c", PRELUDE + textwrap.dedent(body)]


def results(stdout: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            out.update(json.loads(line[len("RESULT ") :]))
    return out


@dataclass
class Box:
    """A test's file layout: `x` is the unveiled tree, `secret` lies outside it."""

    root: Path
    run: Path  # cwd of `sandbox run`, its policies and audit logs (never unveiled)
    x: Path
    secret: Path


def make_box(tmp_path: Path) -> Box:
    run = tmp_path / "run"
    x = tmp_path / "x"
    run.mkdir()
    x.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return Box(tmp_path, run, x, secret)


def sandboxed(
    box: Box,
    command: Sequence[str],
    *,
    promises: str | None = "stdio rpath",
    unveil: Sequence[str] = (),
    policy: Mapping[str, Any] | None = None,
    pass_fds: Sequence[int] = (),
    env: Mapping[str, str] | None = None,
    stdin: Any = None,
) -> Result:
    """`sandbox run` of `command` (a real process), with the base unveils for Python."""
    n = next(_counter)
    log = box.run / f"audit-{n}.jsonl"
    argv = [PY, "-m", "sandbox", "run"]
    base: Sequence[str] = BASE_UNVEIL
    if policy is not None:
        # -v may only narrow a policy: the interpreter's paths go into the policy itself
        paths = {**{b.split(":")[0]: "rx" for b in BASE_UNVEIL}, **policy.get("unveil", {})}
        full = {"name": f"escape{n}", **policy, "unveil": paths}
        argv.append(write_policy(box.run, full, f"escape{n}"))
        base = ()
    if promises is not None:
        argv += ["-p", promises]
    for u in (*base, *unveil):
        argv += ["-v", u]
    argv += ["--audit-log", str(log), "--", *command]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PYTHONPATH", str(ROOT))
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
        cwd=box.run,
        pass_fds=pass_fds,
        stdin=stdin,
    )
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return Result(proc.returncode, proc.stdout, proc.stderr, records, str(log))


def direct(
    command: Sequence[str], *, pass_fds: Sequence[int] = (), env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The same program without the sandbox."""
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=60, pass_fds=pass_fds, env=env
    )


def assert_killed(r: Result, syscall: str, promise: str | None) -> dict[str, Any]:
    """The parent recorded the call and ended the agent: exit 159 and the stderr line."""
    rec = assert_denied(r, syscall=syscall, promise=promise, action="kill")
    assert r.status == VIOLATION_EXIT, show(r)
    why = "is never allowed" if promise is None else f"needs '{promise}'"
    assert f"pledge violation: {syscall}(" in r.stderr and why in r.stderr, show(r)
    assert r.of_kind("exit"), f"the launcher recorded no exit\n{r}"
    return rec


def show(r: Result) -> str:
    return f"{r}\nviolations: {r.violations}"


def assert_clean(r: Result) -> dict[str, Any]:
    """Exit 0, no violation: the refusal (if any) came from the kernel, as an errno."""
    assert r.status == 0 and not r.violations, f"{r}\nviolations: {r.violations}"
    return results(r.stdout)


def ok_direct(command: Sequence[str], **kw: Any) -> dict[str, Any]:
    p = direct(command, **kw)
    assert p.returncode == 0, f"unsandboxed run failed: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return results(p.stdout)


DENIED = {"EACCES", "EPERM"}


def compile_c(src: Path, out: Path) -> Path:
    """Compile a C helper (static when the C library allows; then it needs no libraries)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc) for the foreign-ABI and exec helpers")
    for extra in (["-static"], []):
        res = subprocess.run(
            [cc, "-O1", *extra, "-o", str(out), str(src)], capture_output=True, text=True
        )
        if res.returncode == 0:
            return out
    raise AssertionError(f"cannot compile {src}: {res.stderr}")
