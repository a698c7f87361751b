"""The typer app for every command but the fast path of `run` (see sandbox.cli.main)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sandbox.errors import PolicyError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="outheis-sandbox: pledge, unveil and privilege separation for agents on Linux.",
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(no_args_is_help=True, help="Check and read audit logs.")
app.add_typer(audit_app, name="audit")


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
    help="Run a command under a policy: sandbox run [POLICY] [-p PROMISES] [-v PATH:PERMS]... "
    "[--audit-log FILE] [--] [COMMAND ARG...] (see sandbox run --help).",
)
def run(ctx: typer.Context) -> None:
    from sandbox.cli.main import run_command

    raise typer.Exit(run_command(list(ctx.args)))


@app.command(help="Validate policy files; prints nothing but errors.")
def check(policies: Annotated[list[str], typer.Argument(help="policy files")]) -> None:
    from sandbox.system.loader import check_files  # policy and system files

    status, lines = check_files(policies)
    for line in lines:
        print(line, file=sys.stderr)
    raise typer.Exit(status)


@app.command(help="Show what a policy allows, as a table (or --json).")
def explain(
    policy: Annotated[str, typer.Argument(help="policy file")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    from sandbox.cli.explain import explain_json, explain_text
    from sandbox.policy.loader import load_policy
    from sandbox.system.loader import is_system_file

    if is_system_file(policy):  # the system's capability matrix
        from sandbox.cli.system import explain_system

        raise typer.Exit(explain_system(policy, as_json))
    try:
        pol = load_policy(policy)
    except PolicyError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise typer.Exit(2) from None
    print(json.dumps(explain_json(pol), indent=2) if as_json else explain_text(pol))


@app.command(help="Every promise and the system calls it allows (or --json).")
def promises(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from sandbox.enforce.promises import format_json, format_table

    print(format_json() if as_json else format_table())


@app.command(
    help="What this kernel can enforce; with a policy, what it would lose under best_effort."
)
def doctor(
    policy: Annotated[str | None, typer.Argument(help="policy file (optional)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    enable_audit: Annotated[
        bool,
        typer.Option(
            "--enable-kernel-audit",
            help="turn the kernel's audit on, host-wide (root), so that Landlock's refusals "
            "are reported with their path and fix",
        ),
    ] = False,
    disable_audit: Annotated[
        bool, typer.Option("--disable-kernel-audit", help="turn the kernel's audit off (root)")
    ] = False,
) -> None:
    from sandbox.cli.explain import doctor_json, doctor_text, kernel_audit_switch
    from sandbox.policy.loader import load_policy

    if enable_audit or disable_audit:
        if enable_audit and disable_audit:
            raise UsageError("give one of --enable-kernel-audit and --disable-kernel-audit")
        print(f"sandbox: {kernel_audit_switch(enable_audit)}")
        from sandbox.enforce.kernel import probe

        probe.cache_clear()
    pol = load_policy(policy) if policy else None
    print(json.dumps(doctor_json(pol), indent=2) if as_json else doctor_text(pol))


@audit_app.command("verify", help="Check the hash chain; exit 1 at the first bad record.")
def audit_verify(log: Annotated[str, typer.Argument(help="audit log file")]) -> None:
    from sandbox.parent.audit import verify_cli

    raise typer.Exit(verify_cli(log))


@audit_app.command("show", help="Show an audit log as a table (or --json).")
def audit_show(
    log: Annotated[str, typer.Argument(help="audit log file")],
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="only this kind of record")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from sandbox.parent.audit import show_cli

    raise typer.Exit(show_cli(log, agent, kind, as_json))


from sandbox.cli.system import system_commands  # noqa: E402  # up ps send stop restart reload down log

app.add_typer(system_commands)
