"""The agent system's commands (SPEC section 9): up, ps, send, stop, restart, reload, down, log.

Each names the system file, as `docker compose -f` does. `up` runs the dispatcher in the
foreground; the others talk to it through the control socket in the system's state/
(log show|verify|replay read the message log itself, with or without a dispatcher).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from sandbox.cli import examples as _examples
from sandbox.errors import PolicyError, SandboxError

system_commands = typer.Typer()
log_app = typer.Typer(
    no_args_is_help=True,
    help="Show, verify and replay a system's message log.",
    epilog=_examples("sandbox log show policies/outheis.yaml --json"),
)
system_commands.add_typer(log_app, name="log")

SystemArg = Annotated[str, typer.Argument(help="system file (e.g. policies/outheis.yaml)")]
AgentArg = Annotated[str, typer.Argument(help="agent name")]


def _load(path: str) -> Any:
    from sandbox.system.loader import load_system

    try:
        return load_system(path)
    except PolicyError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        raise typer.Exit(2) from None


def _call(path: str, request: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    from sandbox.system import control

    system = _load(path)
    try:
        reply = control.call(system.control_socket, request, timeout)
    except control.ControlError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if not reply.get("ok"):
        print(f"sandbox: {reply.get('error', 'refused')}", file=sys.stderr)
        raise typer.Exit(1)
    return reply


def explain_system(path: str, as_json: bool) -> int:
    """`sandbox explain SYSTEM`: the capability matrix (sandbox.system.matrix)."""
    from sandbox.system.matrix import format_matrix, matrix

    spec = _load(path)
    print(json.dumps(matrix(spec), indent=2) if as_json else format_matrix(spec))
    return 0


@system_commands.command(
    help="Run a system's agents under one supervising dispatcher.",
    epilog=_examples(
        "sandbox up policies/outheis.yaml",
        "sandbox up policies/outheis.yaml &  sandbox ps policies/outheis.yaml",
    ),
)
def up(system: SystemArg) -> None:
    from sandbox.system.dispatcher import Dispatcher

    spec = _load(system)
    try:
        status = Dispatcher(spec).run()
    except SandboxError as e:
        print(f"sandbox up: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_status) from None
    raise typer.Exit(status)


@system_commands.command(
    help="The agents of a running system: state, pid, restarts, inbox.",
    epilog=_examples("sandbox ps policies/outheis.yaml", "sandbox ps policies/outheis.yaml --json"),
)
def ps(system: SystemArg, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    agents = _call(system, {"op": "ps"})["agents"]
    if as_json:
        print(json.dumps(agents, indent=2))
        return
    cols = ("agent", "state", "pid", "restarts", "inbox", "qos", "restart", "supervisor")
    rows = [[("-" if a[c] is None else str(a[c])) for c in cols] for a in agents]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@system_commands.command(
    help="Send a user message (routed by @name, --to or the system's route).",
    epilog=_examples(
        "sandbox send policies/outheis.yaml --wait 'search sandbox'",
        "sandbox send policies/outheis.yaml --to data 'find notes'",
    ),
)
def send(
    system: SystemArg,
    text: Annotated[str, typer.Argument(help="the message text")],
    to: Annotated[str | None, typer.Option("--to", help="the agent to send to")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="print the reply's text")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits")] = 30.0,
) -> None:
    request: dict[str, Any] = {"op": "send", "text": text, "to": to}
    if wait:
        request["wait"] = timeout
    reply = _call(system, request, timeout + 5 if wait else 30.0)
    if wait:
        payload = reply["reply"].get("payload") or {}
        print(payload.get("text", json.dumps(payload)))
    else:
        print(f"{reply['message_id']} -> {reply['to']}")


@system_commands.command(
    help="Stop one agent (it stays stopped until restart).",
    epilog=_examples("sandbox stop policies/outheis.yaml pattern"),
)
def stop(system: SystemArg, agent: AgentArg) -> None:
    _call(system, {"op": "stop", "agent": agent})


@system_commands.command(
    help="Stop and start one agent.",
    epilog=_examples("sandbox restart policies/outheis.yaml data"),
)
def restart(system: SystemArg, agent: AgentArg) -> None:
    _call(system, {"op": "restart", "agent": agent})


@system_commands.command(
    help="Start an agent's new code or policy; its inbox carries over.",
    epilog=_examples("sandbox reload policies/outheis.yaml data"),
)
def reload(system: SystemArg, agent: AgentArg) -> None:
    _call(system, {"op": "reload", "agent": agent})


@system_commands.command(
    help="Stop every agent in reverse order; `sandbox up` exits 0.",
    epilog=_examples("sandbox down policies/outheis.yaml"),
)
def down(system: SystemArg) -> None:
    _call(system, {"op": "down"})


@log_app.command(
    "show",
    help="Show the message log as a table (or --json).",
    epilog=_examples(
        "sandbox log show policies/outheis.yaml", "sandbox log show policies/outheis.yaml --json"
    ),
)
def log_show(
    system: SystemArg,
    agent: Annotated[str | None, typer.Option("--agent")] = None,
    kind: Annotated[str | None, typer.Option("--kind")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from sandbox.system import msglog

    raise typer.Exit(msglog.show_cli(_load(system).message_log, agent, kind, as_json))


@log_app.command(
    "verify",
    help="Check the message log's hash chain.",
    epilog=_examples("sandbox log verify policies/outheis.yaml"),
)
def log_verify(system: SystemArg) -> None:
    from sandbox.system import msglog

    raise typer.Exit(msglog.verify_cli(_load(system).message_log))


@log_app.command(
    "replay",
    help="Every inbox, conversation and agent state at a time.",
    epilog=_examples("sandbox log replay policies/outheis.yaml --at 2026-12-01T20:15:00Z"),
)
def log_replay(
    system: SystemArg,
    at: Annotated[str | None, typer.Option("--at", help="RFC 3339 time; default: the end")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from sandbox.parent.audit import AuditError
    from sandbox.system import msglog

    spec = _load(system)
    try:
        when = None if at is None else msglog.parse_time(at)
        state = msglog.replay(spec.message_log, list(spec.tree.agents()), when)
    except (ValueError, AuditError) as e:
        print(f"sandbox: {e}", file=sys.stderr)
        raise typer.Exit(2 if isinstance(e, ValueError) else 1) from None
    print(
        json.dumps(state, indent=2, ensure_ascii=False) if as_json else msglog.format_replay(state)
    )
