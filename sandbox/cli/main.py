"""The command line: a thin layer over the library.

`sandbox run` is parsed here by hand, without importing typer: typer (with click and rich)
costs about 60 ms to import, more than the whole launch overhead the project allows. Every
other command goes through the typer app, which is imported only for them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from sandbox.errors import PolicyError, SandboxError, UsageError
from sandbox.plain import field, plain
from sandbox.policy.narrow import Flags

if TYPE_CHECKING:
    from sandbox.policy.model import Policy

RUN_USAGE = """usage: sandbox run [POLICY | --preset NAME] [--set NAME=VALUE]... [-p PROMISES]
                   [-v PATH[:PERMS]]... [--violation kill|errno|log] [--best-effort]
                   [--limit KEY=VALUE]... [--env NAME[=VALUE]]... [--connect PORT]...
                   [--bind PORT]... [--user NAME] [--audit-log FILE] [--] [COMMAND ARG...]

Run COMMAND under POLICY (a YAML file) or a built-in preset (see sandbox presets), or
under the flags alone. Without a policy the promises are 'stdio rpath' unless -p says
otherwise, and only what -v unveils is visible.

With a policy, every flag can only narrow it (a wider value is a usage error, exit 2):
-p keeps a subset of its promises; -v DIR:r narrows the entry that decides DIR (the
closest enclosing one) to DIR with those letters and leaves every other entry as it is
(so `--preset readonly-tool -v src:r -- grep -r x src` still runs grep from /usr).

  --preset NAME             a built-in preset policy (sandbox presets lists them)
  --set NAME=VALUE          a parameter of the policy: ${NAME} in its paths; relative
                            VALUEs are relative to the current directory (repeatable)
  -p, --promises PROMISES   space-separated promises, e.g. 'stdio rpath'
  -v, --unveil PATH[:PERMS] unveil PATH with permissions from r w x c; no letters: r
                            (repeatable; PATH may be a set: @system, @python, @devices)
  --violation MODE          kill (default), errno (the call fails with EPERM) or log
                            (the call proceeds: learning, not a sandbox)
  --best-effort             run even where this kernel cannot enforce everything; the
                            start record says what is not enforced
  --limit KEY=VALUE         as `limits`: memory, cpu, wall, processes, files, file_size
                            (e.g. --limit memory=512MiB --limit wall=10m)
  --env NAME[=VALUE]        pass NAME from this environment, or set it (as `env`)
  --connect PORT            TCP port the agent may connect to (needs 'inet'; repeatable)
  --bind PORT               TCP port the agent may bind (needs 'inet'; repeatable)
  --user NAME               run the agent as this user (the launcher must be root)
  --audit-log FILE          append the audit records to FILE
                            (default: $SANDBOX_AUDIT_LOG, else
                            $XDG_STATE_HOME/outheis-sandbox/audit.jsonl)
  --trace-unveil            name the paths Landlock refuses, read by the parent from
                            every path-taking call (slower; for whoever cannot have
                            the kernel's audit records: see sandbox doctor)

Examples:
  sandbox run -v /usr:rx -- ls /usr
  sandbox run -p 'stdio rpath wpath cpath' -v /usr:rx -v /tmp:rwc -- touch /tmp/x
  sandbox run --preset readonly-tool --set WORK=. -- grep -r TODO .
  sandbox run agent.yaml --violation errno --limit wall=1m -- python3 agent.py
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


@plain
class RunArgs:
    policy: str | None = None
    preset: str | None = None
    sets: list[str] = field(default_factory=list)
    audit_log: str | None = None
    flags: Flags = field(default_factory=Flags)
    command: list[str] = field(default_factory=list)
    trace_unveil: bool = False


def _append(name: str) -> Callable[[RunArgs, str], None]:
    return lambda a, v: getattr(a.flags, name).append(v)


def _once(obj: str, name: str, flag: str) -> Callable[[RunArgs, str], None]:
    def store(a: RunArgs, v: str) -> None:
        target = a if obj == "args" else a.flags
        if getattr(target, name) is not None:
            raise UsageError(f"{flag} is given twice")
        setattr(target, name, v)

    return store


def _promises(a: RunArgs, v: str) -> None:
    a.flags.promises = v if a.flags.promises is None else f"{a.flags.promises} {v}"


# Options that take a value: where the value goes.
_VALUED: dict[str, Callable[[RunArgs, str], None]] = {
    "-p": _promises,
    "--promises": _promises,
    "-v": _append("unveils"),
    "--unveil": _append("unveils"),
    "--audit-log": _once("args", "audit_log", "--audit-log"),
    "--preset": _once("args", "preset", "--preset"),
    "--set": lambda a, v: a.sets.append(v),
    "--violation": _once("flags", "violation", "--violation"),
    "--limit": _append("limits"),
    "--env": _append("env"),
    "--connect": _append("connect"),
    "--bind": _append("bind"),
    "--user": _once("flags", "user", "--user"),
}


def parse_run_args(args: Sequence[str]) -> RunArgs:
    """`sandbox run` arguments, parsed by hand (see the module's docstring)."""
    out = RunArgs()
    rest = list(args)
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            out.command = rest[i + 1 :]
            return out
        if arg in ("-h", "--help"):
            print(RUN_USAGE, end="")
            raise SystemExit(0)
        if arg == "--best-effort":
            out.flags.best_effort = True
            i += 1
            continue
        if arg == "--trace-unveil":
            out.trace_unveil = True
            i += 1
            continue
        name, eq, inline = arg.partition("=")
        store = _VALUED.get(name)
        if store is not None:
            if eq:
                value = inline
            else:
                if i + 1 >= len(rest):
                    raise UsageError(f"{arg} needs a value")
                i += 1
                value = rest[i]
            store(out, value)
            i += 1
            continue
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option {arg} (see sandbox run --help)")
        if out.policy is None and not out.flags.any() and arg.endswith(POLICY_SUFFIXES):
            out.policy = arg
            i += 1
            continue
        out.command = rest[i:]
        return out
    return out


def load_run_policy(a: RunArgs) -> Policy:
    """The policy of a `sandbox run` (also `learn --verify`): file or preset, then flags."""
    from sandbox.policy.narrow import apply_flags

    if a.policy is not None and a.preset is not None:
        raise UsageError("give a POLICY file or --preset NAME, not both")
    path = a.policy
    if a.preset is not None:
        from sandbox.presets import path_of

        path = path_of(a.preset)
    if path is None and a.sets:
        raise UsageError("--set gives parameters of a policy: give a POLICY file or --preset")
    base = None
    if path is not None:
        from sandbox.policy.loader import load_policy
        from sandbox.policy.params import parse_sets

        base = load_policy(path, parse_sets(a.sets))
    if base is not None and not a.flags.any():
        return base
    return apply_flags(base, a.flags)


def run_command(args: Sequence[str]) -> int:
    from sandbox.parent.launcher import run

    a = parse_run_args(args)
    policy = load_run_policy(a)
    log = a.audit_log or default_audit_log()
    if a.audit_log is None:
        os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    result = run(policy, a.command or None, log, trace_unveil=a.trace_unveil)
    return result.status


def _fail(e: SandboxError) -> NoReturn:
    if isinstance(e, PolicyError):
        # Each problem already starts with FILE:LINE:COLUMN.
        for problem in e.problems:
            print(problem, file=sys.stderr)
    else:
        print(f"sandbox: {e}", file=sys.stderr)
    raise SystemExit(e.exit_status)


def _run_warm(args: Sequence[str]) -> int | None:
    """`run` through the warm launcher (sandbox serve) if one listens; None otherwise. The
    cold path pays an environment lookup and a stat for it, nothing more."""
    from sandbox.serve.protocol import socket_path

    path = socket_path(os.environ)
    if path is None or not os.path.exists(path):
        return None
    from sandbox.serve.client import run

    return run(args, path)


def version_text() -> str:
    from sandbox import __version__

    return f"sandbox (outheis-sandbox) {__version__}"


def main(
    argv: Sequence[str] | None = None,
    *,
    warm: bool = True,
    exit_with: Callable[[int], NoReturn] = os._exit,
) -> NoReturn:
    """The command line. `warm`: let `run` go through a warm launcher when one is reachable;
    the warm launcher's own launches pass False (they are the cold path) and an exit that
    reports the status before the process ends (`exit_with`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:  # without typer's import, as `run`
        print(version_text())
        raise SystemExit(0)
    try:
        if args and args[0] == "run":
            status = _run_warm(args[1:]) if warm else None
            if status is None:
                status = run_command(args[1:])
            # Interpreter teardown (module finalisers, GC) costs ~20 ms the launch budget
            # cannot spare; everything is flushed and closed by now.
            sys.stdout.flush()
            sys.stderr.flush()
            exit_with(status)
        if args and args[0] == "serve":
            from sandbox.serve.server import main as serve

            raise SystemExit(serve(args[1:]))
        if args and args[0] in ("check", "explain", "promises"):
            from sandbox.cli import quick  # without typer's import, as `run`

            status = quick.run(args)
            if status is not None:
                sys.stdout.flush()
                sys.stderr.flush()
                exit_with(status)
        from sandbox.cli.commands import app

        app(args=args, prog_name="sandbox")
    except SandboxError as e:
        _fail(e)
    raise SystemExit(0)
