"""The command line: a thin layer over the library.

`sandbox run` is parsed here by hand, without importing typer: typer (with click and rich)
costs about 60 ms to import, more than the whole launch overhead the project allows. Every
other command goes through the typer app, which is imported only for them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from sandbox.errors import PolicyError, SandboxError, UsageError

RUN_USAGE = """usage: sandbox run [POLICY] [-p PROMISES] [-v PATH:PERMS]... [--audit-log FILE]
                   [--] [COMMAND ARG...]

Run COMMAND under POLICY (a YAML file), or under the promises and unveiled paths given
with -p and -v alone. With a POLICY, -p and -v can only narrow it.

  -p, --promises PROMISES   space-separated promises, e.g. 'stdio rpath'
  -v, --unveil PATH:PERMS   unveil PATH with permissions from r w x c (repeatable)
  --audit-log FILE          append the audit records to FILE
                            (default: $SANDBOX_AUDIT_LOG, else
                            $XDG_STATE_HOME/outheis-sandbox/audit.jsonl)
  --trace-unveil            name the paths Landlock refuses, read by the parent from
                            every path-taking call (slower; for whoever cannot have
                            the kernel's audit records: see sandbox doctor)
"""

POLICY_SUFFIXES = (".yaml", ".yml")


def default_audit_log() -> str:
    env = os.environ.get("SANDBOX_AUDIT_LOG")
    if env:
        return env
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "outheis-sandbox", "audit.jsonl")


def parse_run_args(
    args: Sequence[str],
) -> tuple[str | None, str | None, list[str], str | None, list[str]]:
    """(policy, promises, unveils, audit_log, command) from `sandbox run` arguments."""
    policy, promises, unveils, audit_log, command, _ = _parse_run_args(args)
    return policy, promises, unveils, audit_log, command


def _parse_run_args(
    args: Sequence[str],
) -> tuple[str | None, str | None, list[str], str | None, list[str], bool]:
    """parse_run_args, and whether --trace-unveil was given."""
    trace = False
    policy: str | None = None
    promises: str | None = None
    unveils: list[str] = []
    audit_log: str | None = None
    rest = list(args)
    i = 0
    takes_value = {"-p": "p", "--promises": "p", "-v": "v", "--unveil": "v", "--audit-log": "a"}
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            return policy, promises, unveils, audit_log, rest[i + 1 :], trace
        if arg == "--trace-unveil":
            trace = True
            i += 1
            continue
        if arg in ("-h", "--help"):
            print(RUN_USAGE, end="")
            raise SystemExit(0)
        name, eq, inline = arg.partition("=")
        if name in takes_value:
            if eq:
                value = inline
            else:
                if i + 1 >= len(rest):
                    raise UsageError(f"{arg} needs a value")
                i += 1
                value = rest[i]
            kind = takes_value[name]
            if kind == "p":
                promises = value if promises is None else f"{promises} {value}"
            elif kind == "v":
                unveils.append(value)
            else:
                audit_log = value
            i += 1
            continue
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option {arg} (see sandbox run --help)")
        if policy is None and not unveils and promises is None and arg.endswith(POLICY_SUFFIXES):
            policy = arg
            i += 1
            continue
        return policy, promises, unveils, audit_log, rest[i:], trace
    return policy, promises, unveils, audit_log, [], trace


def run_command(args: Sequence[str]) -> int:
    from sandbox.parent.launcher import run
    from sandbox.policy.loader import load_policy
    from sandbox.policy.narrow import narrow

    policy_path, promises, unveils, audit_log, command, trace = _parse_run_args(args)
    base = load_policy(policy_path) if policy_path else None
    if base is None and promises is None:
        raise UsageError("give a POLICY file or promises with -p (see sandbox run --help)")
    policy = (
        narrow(base, promises, unveils)
        if (base is None or promises is not None or unveils)
        else base
    )
    log = audit_log or default_audit_log()
    if audit_log is None:
        os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    result = run(policy, command or None, log, trace_unveil=trace)
    return result.status


def _fail(e: SandboxError) -> NoReturn:
    if isinstance(e, PolicyError):
        # Each problem already starts with FILE:LINE:COLUMN.
        for problem in e.problems:
            print(problem, file=sys.stderr)
    else:
        print(f"sandbox: {e}", file=sys.stderr)
    raise SystemExit(e.exit_status)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "run":
            status = run_command(args[1:])
            # Interpreter teardown (module finalisers, GC) costs ~20 ms the launch budget
            # cannot spare; everything is flushed and closed by now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        from sandbox.cli.commands import app

        app(args=args, prog_name="sandbox")
    except SandboxError as e:
        _fail(e)
    raise SystemExit(0)
