"""check, explain and promises: their bodies, and a parser that runs them without typer.

Importing typer (with click, and pydantic, which typer 0.2x uses to coerce every parameter)
costs ~200 ms, more than the whole budget of these commands (100 ms). So, as for `run`,
sandbox.cli.main parses them itself, from OPTIONS below, and hands everything else to the
typer app: `--help`, an unknown option, a missing argument, a flag given a value. The
fast path never reports a usage error of its own: whatever it cannot parse, typer reads
and answers as it always did. The typer commands (sandbox.cli.commands) call the same
bodies, and tests/test_cli.py checks that OPTIONS says what the typer app declares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sandbox.errors import PolicyError, UsageError

if TYPE_CHECKING:
    from sandbox.policy.model import Policy

# command -> (its options: name -> "flag" | "many" (repeatable, with a value) | "one";
#             its positional arguments: "many" (at least one) | "optional" (at most one) | "")
OPTIONS: dict[str, tuple[dict[str, str], str]] = {
    "check": ({"--set": "many"}, "many"),
    "explain": ({"--preset": "one", "--set": "many", "--json": "flag"}, "optional"),
    "promises": ({"--json": "flag"}, ""),
}
# The keyword each option reaches its body as.
KEYWORD = {"--set": "sets", "--preset": "preset", "--json": "as_json"}


def parse(command: str, args: Sequence[str]) -> dict[str, object] | None:
    """The keyword arguments of the command's body, or None where typer must read args."""
    options, positional = OPTIONS[command]
    values: dict[str, object] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            rest.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        kind = options.get(name)
        if kind is None:
            return None  # --help, an unknown option, a short one: typer's answer
        key = KEYWORD[name]
        if kind == "flag":
            if eq:
                return None
            values[key] = True
            continue
        if eq:
            value = inline
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            return None
        if kind == "many":
            values.setdefault(key, [])
            values[key].append(value)  # type: ignore[attr-defined]
        else:
            values[key] = value  # a repeated option: the last one, as click does
    if positional == "many":
        if not rest:
            return None
        values["policies"] = rest
    elif positional == "optional":
        if len(rest) > 1:
            return None
        values["policy"] = rest[0] if rest else None
    elif rest:
        return None
    return values


def run(args: Sequence[str]) -> int | None:
    """`sandbox COMMAND ...` for the commands in OPTIONS: the exit status, or None when
    typer must parse the arguments."""
    values = parse(args[0], args[1:])
    if values is None:
        return None
    return BODIES[args[0]](**values)


def load(policy: str | None, preset: str | None, sets: list[str] | None) -> Policy | int:
    """A policy file or a preset, with its parameters (see sandbox.cli.main); an exit
    status where it cannot be loaded (the problems printed)."""
    from sandbox.cli.main import RunArgs, load_run_policy

    if policy is None and preset is None:
        print("sandbox: give a POLICY file or --preset NAME", file=sys.stderr)
        return 2
    try:
        return load_run_policy(RunArgs(policy=policy, preset=preset, sets=list(sets or [])))
    except PolicyError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 2


def check(policies: list[str], sets: list[str] | None = None) -> int:
    from sandbox.policy.params import parse_sets
    from sandbox.system.loader import check_files  # policy and system files

    try:
        values = parse_sets(list(sets or []))
    except UsageError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 2
    status, lines = check_files(policies, values)
    for line in lines:
        print(line, file=sys.stderr)
    return status


def explain(
    policy: str | None = None,
    preset: str | None = None,
    sets: list[str] | None = None,
    as_json: bool = False,
) -> int:
    from sandbox.cli.explain import explain_json, explain_text
    from sandbox.system.loader import is_system_file

    if policy is not None and is_system_file(policy):  # the system's capability matrix
        from sandbox.cli.system import explain_system

        return explain_system(policy, as_json)
    pol = load(policy, preset, sets)
    if isinstance(pol, int):
        return pol
    if as_json:
        import json

        print(json.dumps(explain_json(pol), indent=2))
    else:
        print(explain_text(pol))
    return 0


def promises(as_json: bool = False) -> int:
    from sandbox.enforce.promises import format_json, format_table

    print(format_json() if as_json else format_table())
    return 0


BODIES: dict[str, Callable[..., int]] = {"check": check, "explain": explain, "promises": promises}
