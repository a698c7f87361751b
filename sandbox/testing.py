"""Testing support for people who write agents and policies (and for this project's tests).

`run_sandboxed` runs a command, or a Python function, under a policy in a real `sandbox run`
process and returns its exit status, output and audit records; `assert_denied` and
`assert_allowed` read those records. The pytest plugin (sandbox.pytest_plugin) wraps this
in the fixture `sandbox_run`.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SANDBOX = [sys.executable, "-m", "sandbox"]


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str
    records: list[dict[str, Any]] = field(default_factory=list)
    log: str = ""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def violations(self) -> list[dict[str, Any]]:
        return self.of_kind("violation")

    @property
    def ops(self) -> list[dict[str, Any]]:
        return self.of_kind("op")

    def __str__(self) -> str:
        return f"status={self.status}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _read_log(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def write_policy(
    directory: str | os.PathLike[str], policy: Mapping[str, Any], name: str = "policy"
) -> str:
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(dict(policy), f, sort_keys=False)
    return path


def python_command(func: Callable[..., Any] | str, *args: Any) -> list[str]:
    """A command running `func(*args)` in a fresh interpreter (source of a top-level
    function, or a string of code). Its return value is printed as JSON on stdout."""
    if isinstance(func, str):
        code = textwrap.dedent(func)
    else:
        src = textwrap.dedent(inspect.getsource(func))
        code = f"{src}\nimport json as _j\nprint(_j.dumps({func.__name__}(*{args!r})))\n"
    return [sys.executable, "-c", code]


def run_sandboxed(
    command: Sequence[str] | Callable[..., Any] | None = None,
    *,
    policy: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    promises: str | None = None,
    unveil: Sequence[str] = (),
    workdir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> Result:
    """Run `command` under a policy (a dict, which is written to a file, or a path) and/or
    -p/-v flags, in a real `sandbox run`, and collect what happened."""
    workdir = str(workdir) if workdir is not None else tempfile.mkdtemp(prefix="sandbox-test-")
    log = os.path.join(workdir, f"audit-{os.getpid()}-{len(os.listdir(workdir))}.jsonl")
    argv = [*SANDBOX, "run"]
    if isinstance(policy, Mapping):
        argv.append(write_policy(workdir, policy, str(policy.get("name", "policy"))))
    elif policy is not None:
        argv.append(os.fspath(policy))
    if promises is not None:
        argv += ["-p", promises]
    for u in unveil:
        argv += ["-v", u]
    argv += ["--audit-log", log, *extra_args]
    if command is not None:
        argv += ["--", *(python_command(command) if callable(command) else command)]
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=run_env, cwd=workdir
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, _read_log(log), log)


def assert_denied(
    result: Result,
    *,
    syscall: str | None = None,
    promise: str | None = "",
    action: str | None = None,
    op: str | None = None,
) -> dict[str, Any]:
    """The run recorded a refusal matching the given fields; returns that record.

    promise="" means "any"; promise=None means "never allowed" (the record says null).
    For brokered operations give op= (and the record is an op with decision deny).
    """
    if op is not None:
        for r in result.ops:
            if r.get("op") == op and r.get("decision") == "deny":
                return r
        raise AssertionError(f"no denied op {op!r} recorded\n{result}\nops: {result.ops}")
    for r in result.violations:
        if syscall is not None and r.get("syscall") != syscall:
            continue
        if promise != "" and r.get("promise") != promise:
            continue
        if action is not None and r.get("action") != action:
            continue
        return r
    raise AssertionError(
        f"no violation syscall={syscall} promise={promise!r} action={action} recorded\n{result}\n"
        f"violations: {result.violations}"
    )


def assert_allowed(result: Result, status: int = 0) -> None:
    """The run ended with `status` and recorded no violation and no denied op."""
    denied = result.violations + [r for r in result.ops if r.get("decision") == "deny"]
    if result.status != status or denied:
        raise AssertionError(
            f"expected a clean run with status {status}\n{result}\nrefusals: {denied}"
        )
