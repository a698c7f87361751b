"""The typer app for every command but the fast path of `run` (see sandbox.cli.main).

Conventions: `--version`; shell completion (typer's `--install-completion` and
`--show-completion`); every command's --help ends with examples; usage errors exit 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sandbox.cli import examples as _examples
from sandbox.cli import quick
from sandbox.errors import UsageError


def _version(value: bool) -> None:
    if value:
        from sandbox.cli.main import version_text

        print(version_text())
        raise typer.Exit(0)


app = typer.Typer(
    no_args_is_help=True,
    help="outheis-sandbox: pledge, unveil and privilege separation for agents on Linux.",
    epilog=_examples(
        "sandbox run -v /usr:rx -- ls /usr",
        "sandbox learn --out ls.yaml --verify -- ls /usr",
        "sandbox run --preset readonly-tool --set WORK=. -- grep -r TODO .",
        "sandbox --install-completion        # bash, zsh, fish: completion for this shell",
    ),
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
audit_app = typer.Typer(
    no_args_is_help=True,
    help="Check and read audit logs.",
    epilog=_examples("sandbox audit verify audit.jsonl", "sandbox audit show audit.jsonl -f"),
    rich_markup_mode=None,
)
app.add_typer(audit_app, name="audit")

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="NAME=VALUE",
        help="a parameter of the policy (${NAME} in its paths); repeatable",
    ),
]


# Commands whose arguments their own hand-written parser reads (run, serve): passed as they
# are, --help included.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """outheis-sandbox: pledge, unveil and privilege separation for agents on Linux."""


def _load(policy: str | None, preset: str | None, sets: list[str] | None) -> object:
    """A policy file or a preset, with its parameters (see sandbox.cli.main)."""
    pol = quick.load(policy, preset, sets)
    if isinstance(pol, int):
        raise typer.Exit(pol)
    return pol


@app.command(
    context_settings=PASS_THROUGH,
    help="Run a command under a policy, a preset or inline flags; with a policy, flags only "
    "narrow it (see sandbox run --help).",
    epilog=_examples("sandbox run --help"),
)
def run(ctx: typer.Context) -> None:
    from sandbox.cli.main import run_command

    raise typer.Exit(run_command(list(ctx.args)))


@app.command(
    context_settings=PASS_THROUGH,
    help="Keep a warm launcher for this user, which `sandbox run` then uses (see sandbox "
    "serve --help).",
    epilog=_examples("sandbox serve --help"),
)
def serve(ctx: typer.Context) -> None:
    from sandbox.serve.server import main  # sandbox.cli.main runs it without typer

    raise typer.Exit(main(list(ctx.args)))


@app.command(
    help="Validate policy files; prints nothing but errors (FILE:LINE:COLUMN).",
    epilog=_examples("sandbox check agent.yaml", "sandbox check --set WORK=/srv policies/*.yaml"),
)
def check(
    policies: Annotated[list[str], typer.Argument(help="policy files")],
    sets: SetOption = None,
) -> None:
    raise typer.Exit(quick.check(policies, sets))  # sandbox.cli.main runs it without typer


@app.command(
    help="Show what a policy allows, as a table (or --json).",
    epilog=_examples("sandbox explain agent.yaml", "sandbox explain --preset readonly-tool"),
)
def explain(
    policy: Annotated[str | None, typer.Argument(help="policy file")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="a built-in preset")] = None,
    sets: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    raise typer.Exit(quick.explain(policy, preset, sets, as_json))  # as check


@app.command(
    help="Every promise and the system calls it allows (or --json).",
    epilog=_examples("sandbox promises", "sandbox promises --json | jq '.[0]'"),
)
def promises(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    raise typer.Exit(quick.promises(as_json))  # as check


@app.command(
    help="What this kernel can enforce. With a policy: what it would lose, and exit 1 if "
    "this machine cannot enforce it fully (it would be refused unless best_effort).",
    epilog=_examples("sandbox doctor", "sandbox doctor agent.yaml && sandbox run agent.yaml"),
)
def doctor(
    policy: Annotated[str | None, typer.Argument(help="policy file (optional)")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="a built-in preset")] = None,
    sets: SetOption = None,
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
    from sandbox.policy.model import Policy

    if enable_audit or disable_audit:
        if enable_audit and disable_audit:
            raise UsageError("give one of --enable-kernel-audit and --disable-kernel-audit")
        print(f"sandbox: {kernel_audit_switch(enable_audit)}")
        from sandbox.enforce.kernel import probe

        probe.cache_clear()
    pol = _load(policy, preset, sets) if (policy or preset) else None
    assert pol is None or isinstance(pol, Policy)
    data = doctor_json(pol)
    print(json.dumps(data, indent=2) if as_json else doctor_text(pol))
    raise typer.Exit(1 if data.get("lost_under_best_effort") else 0)


@app.command(
    help="The built-in presets (policy files shipped with sandbox), with their parameters.",
    epilog=_examples(
        "sandbox presets",
        "sandbox run --preset readonly-tool --set WORK=src -- grep -r TODO src",
    ),
)
def presets(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    from sandbox import presets as shipped
    from sandbox.plain import asdict

    infos = [shipped.info(name) for name in shipped.names()]
    if as_json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for i in infos:
        print(f"{i.name}: {i.summary}")
        print(f"    pledge: {i.pledge}")
        for p in i.params:
            default = f"default {p.default}" if p.default is not None else "required"
            print(f"    --set {p.name}=...  ({default}) {p.doc}")
        if i.usage:
            print(f"    use: {i.usage}")
    print("CWD (the current directory) and HOME are always known as ${CWD} and ${HOME}.")


@app.command(
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
    help="Run COMMAND once with every call allowed and recorded (LEARNING IS NOT A SANDBOX), "
    "then write the tightest policy that lets that run succeed, each line commented with "
    "the first call that needed it.",
    epilog=_examples(
        "sandbox learn -- ls /usr",
        "sandbox learn --out tar.yaml --verify -- tar czf out.tgz src",
        "sandbox learn --out git.yaml --trim -- git commit -qm 'a message'",
    ),
)
def learn(
    command: Annotated[list[str], typer.Argument(help="the command and its arguments")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="write the policy here (default: stdout)")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="run the command again under the policy and report"),
    ] = False,
    trim: Annotated[
        bool,
        typer.Option("--trim", help="run once without each line; mark lines the run does not need"),
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="the policy's name")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="NAME[=VALUE]", help="as `run --env`; repeatable"),
    ] = None,
    audit_log: Annotated[
        str | None, typer.Option("--audit-log", help="audit records of the runs")
    ] = None,
) -> None:
    import os

    from sandbox.cli.main import default_audit_log
    from sandbox.tools.learn import learn as do_learn

    log = audit_log or default_audit_log()
    if audit_log is None:
        os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    result = do_learn(
        command,
        audit_log=log,
        out=out,
        verify=verify,
        trim_lines=trim,
        name=name,
        env_flags=list(env or []),
    )
    if result.verified is False or result.status != 0:
        raise typer.Exit(1)


@app.command(
    context_settings={"allow_interspersed_args": True},
    help="Write the policy for another engine: an OCI seccomp profile (runc, crun, Docker, "
    "Podman), a systemd unit, or a Kubernetes Pod running it under sandbox run. What the "
    "target cannot express is listed in the output and on stderr.",
    epilog=_examples(
        "sandbox export agent.yaml --format oci > profile.json",
        "sandbox export agent.yaml --format systemd -- /usr/bin/agent > agent.service",
        "sandbox export agent.yaml --format k8s --image registry/agent:1 | kubectl apply -f -",
    ),
)
def export(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[POLICY] [-- COMMAND...]",
            help="the policy file (unless --preset), then the command (default: the policy's)",
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="oci, systemd or k8s", metavar="FORMAT")
    ] = "",
    preset: Annotated[str | None, typer.Option("--preset", help="a built-in preset")] = None,
    sets: SetOption = None,
    image: Annotated[
        str, typer.Option("--image", help="k8s: the container image (with outheis-sandbox)")
    ] = "outheis-sandbox:latest",
    out: Annotated[str | None, typer.Option("--out", "-o", help="write here")] = None,
) -> None:
    from sandbox.policy.model import Policy
    from sandbox.tools.export import FORMATS
    from sandbox.tools.export import export as do_export

    if fmt not in FORMATS:
        print(
            f"sandbox export: --format must be one of {', '.join(FORMATS)}"
            + (f", not '{fmt}'" if fmt else ""),
            file=sys.stderr,
        )
        raise typer.Exit(2)
    rest = list(args or [])
    policy = None if preset is not None or not rest else rest.pop(0)
    pol = _load(policy, preset, sets)
    assert isinstance(pol, Policy)
    result = do_export(pol, fmt, rest or None, image)
    for note in result.not_expressed:
        print(f"sandbox export: warning: {fmt} cannot express: {note}", file=sys.stderr)
    if out is None:
        sys.stdout.write(result.text)
    else:
        with open(out, "w", encoding="utf-8") as f:
            f.write(result.text)


@audit_app.command(
    "verify",
    help="Check the hash chain; exit 1 at the first bad record.",
    epilog=_examples("sandbox audit verify ~/.local/state/outheis-sandbox/audit.jsonl"),
)
def audit_verify(log: Annotated[str, typer.Argument(help="audit log file")]) -> None:
    from sandbox.parent.audit import verify_cli

    raise typer.Exit(verify_cli(log))


@audit_app.command(
    "show",
    help="Show an audit log as a table (or --json); --follow waits for new records as "
    "they are appended (like journalctl -f; ^C to stop).",
    epilog=_examples(
        "sandbox audit show audit.jsonl --kind violation",
        "sandbox audit show audit.jsonl --since 10m --agent data",
        "sandbox audit show audit.jsonl --since 2026-12-01T08:00:00Z --until 2026-12-01T09:00Z",
        "sandbox audit show audit.jsonl --follow --json | jq .syscall",
    ),
)
def audit_show(
    log: Annotated[str, typer.Argument(help="audit log file")],
    agent: Annotated[str | None, typer.Option("--agent", help="only this agent")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="only this kind of record")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="records at or after: RFC 3339, or relative (10m, 2h)"),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="records before: RFC 3339, or relative")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep showing records as they arrive")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    from sandbox.cli.auditview import Filter, show

    try:
        filt = Filter.make(agent, kind, since, until)
    except UsageError as e:
        print(f"sandbox: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(show(log, filt, as_json=as_json, follow=follow))


from sandbox.cli.system import system_commands  # noqa: E402  # up ps send stop restart reload down log

app.add_typer(system_commands)
