"""The cold path stays lean (issue 11): what a plain `sandbox run` and the fast commands
import, checked by structure (the modules loaded), never by time; the fast parser of
check/explain/promises agrees with the typer app; @plain behaves as the dataclass it
replaced.

Each guard shows its other side: the same detector sees the heavy modules where they are
expected (a policy file brings PyYAML, the typer path brings typer).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.plain import FrozenInstanceError, asdict, field, field_names, plain, replace

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
GUARD = 120

# Never on the way to a plain inline launch: the policy file's parser and what it needs,
# the typer CLI, the dataclass machinery, the parent's optional services.
NOT_FOR_A_LAUNCH = {
    "yaml", "typer", "click", "pydantic", "rich", "decimal", "datetime", "hashlib",
    "_hashlib", "urllib", "urllib.parse", "inspect", "dataclasses", "ast", "dis",
    "tokenize", "pathlib", "argparse", "sandbox.policy.loader", "sandbox.policy.nodes",
    "sandbox.policy.units", "sandbox.parent.denials", "sandbox.parent.httpres",
    "sandbox.parent.dnsrelay", "sandbox.parent.dnsproxy", "sandbox.cli.commands",
    "sandbox.system", "sandbox.tools", "sandbox.agent", "sandbox.serve.server",
}  # fmt: skip
NOT_FOR_THE_FAST_COMMANDS = {"typer", "click", "pydantic", "rich", "sandbox.cli.commands"}


def imported(argv: list[str], env: dict[str, str] | None = None) -> tuple[set[str], int]:
    """The modules a `python -X importtime -m sandbox ARGV` imports, and its exit status."""
    run_env = dict(os.environ, SANDBOX_SERVER="off", **(env or {}))
    p = subprocess.run(
        [PY, "-X", "importtime", "-m", "sandbox", *argv],
        capture_output=True, text=True, timeout=GUARD, env=run_env, cwd=REPO,
    )  # fmt: skip
    names = {
        line.rsplit("|", 1)[1].strip()
        for line in p.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return names - {"imported package"}, p.returncode


def test_a_plain_launch_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    log = str(tmp_path / "audit.jsonl")
    names, status = imported(
        ["run", "-p", "stdio rpath", "-v", "/usr:rx", "--audit-log", log, "--", "/bin/true"]
    )
    assert status == 0
    assert "sandbox.parent.launcher" in names  # the detector sees the launch
    heavy = {n for n in names if n in NOT_FOR_A_LAUNCH or n.split(".")[0] in NOT_FOR_A_LAUNCH}
    heavy |= {n for n in names for m in NOT_FOR_A_LAUNCH if n.startswith(m + ".")}
    assert not heavy, f"a plain `sandbox run` imports {sorted(heavy)}: import them lazily"


def test_the_detector_sees_a_policy_files_parser(tmp_path: Path) -> None:
    """The other side: with a policy file the same launch does load PyYAML (so the test
    above would fail if a launch imported it)."""
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\npledge: stdio rpath\nunveil: {/usr: rx}\n")
    log = str(tmp_path / "audit.jsonl")
    names, status = imported(["run", str(pol), "--audit-log", log, "--", "/bin/true"])
    assert status == 0
    assert {"yaml", "sandbox.policy.loader"} <= names


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "policies/relay.yaml"],
        ["explain", "policies/relay.yaml"],
        ["explain", "--json", "--preset", "readonly-tool", "--set", "WORK=."],
        ["promises"],
        ["promises", "--json"],
    ],
)
def test_fast_commands_skip_typer_and_answer_as_typer_does(argv: list[str]) -> None:
    names, status = imported(argv)
    assert not names & NOT_FOR_THE_FAST_COMMANDS, sorted(names & NOT_FOR_THE_FAST_COMMANDS)
    fast = subprocess.run(
        [PY, "-m", "sandbox", *argv], capture_output=True, text=True, timeout=GUARD, cwd=REPO
    )
    via_typer = subprocess.run(
        [PY, "-c", "from sandbox.cli.commands import app; app(prog_name='sandbox')", *argv],
        capture_output=True, text=True, timeout=GUARD, cwd=REPO,
    )  # fmt: skip
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        via_typer.returncode,
        via_typer.stdout,
        via_typer.stderr,
    )
    assert status == fast.returncode == 0
    assert fast.stdout or argv[0] == "check"  # check prints nothing but errors


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],  # a missing argument: typer's usage error
        ["check", "--help"],
        ["promises", "--bogus"],
        ["promises", "--json=1"],
        ["explain", "a.yaml", "b.yaml"],
    ],
)
def test_what_the_fast_parser_cannot_read_goes_to_typer(argv: list[str]) -> None:
    names, status = imported(argv)
    assert "typer" in names
    p = subprocess.run(
        [PY, "-m", "sandbox", *argv], capture_output=True, text=True, timeout=GUARD, cwd=REPO
    )
    assert p.returncode == status
    assert "Usage:" in p.stdout + p.stderr or "Error:" in p.stderr  # click's words
    if argv[-1] != "--help":
        assert p.returncode == 2


def test_policy_errors_are_reported_the_same_way_by_both_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npledge: stdio nosuchpromise\n")
    for argv in (["check", str(bad)], ["explain", str(bad)]):
        fast = subprocess.run(
            [PY, "-m", "sandbox", *argv], capture_output=True, text=True, timeout=GUARD
        )
        via_typer = subprocess.run(
            [PY, "-c", "from sandbox.cli.commands import app; app(prog_name='sandbox')", *argv],
            capture_output=True, text=True, timeout=GUARD,
        )  # fmt: skip
        assert fast.returncode == via_typer.returncode == 2
        assert fast.stderr == via_typer.stderr and "nosuchpromise" in fast.stderr


def test_fast_parser_declares_what_the_typer_app_declares() -> None:
    """sandbox.cli.quick.OPTIONS and the typer commands name the same options, each taking
    a value or not, repeatable or not, and the same positional arguments."""
    import typer.main

    from sandbox.cli.commands import app
    from sandbox.cli.quick import KEYWORD, OPTIONS

    group: Any = typer.main.get_command(app)
    for name, (options, positional) in OPTIONS.items():
        cmd = group.commands[name]
        declared: dict[str, str] = {}
        args = []
        for param in cmd.params:
            if param.param_type_name == "argument":
                args.append(param)
                continue
            if "--help" in param.opts:
                continue
            kind = "flag" if param.is_flag else ("many" if param.multiple else "one")
            for opt in param.opts:
                declared[opt] = kind
                assert KEYWORD[opt] == param.name, (name, opt)
        assert declared == options, name
        if positional == "":
            assert not args, name
        else:
            (arg,) = args
            assert (arg.nargs, arg.required) == (
                (-1, True) if positional == "many" else (1, False)
            ), name


# ------------------------------------------------------------------------- @plain classes


@plain(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


@plain(frozen=True, slots=True)
class Pair:
    a: int
    b: int = 1


@plain
class Counter:
    n: int = 0

    def __post_init__(self) -> None:
        self.seen = [self.n]  # an attribute that is not a field: a mutable record keeps it


def test_plain_behaves_as_the_dataclass_it_replaced() -> None:
    p, d = Point(1, tags=["a"]), DPoint(1, tags=["a"])
    assert repr(p).replace("Point", "") == repr(d).replace("DPoint", "")
    assert p == Point(1, 0, ["a"]) and p != Point(2) and p != d
    assert Point(1).tags is not Point(1).tags  # a fresh default each time
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, ()))  # type: ignore[arg-type]
    assert replace(p, y=5) == Point(1, 5, ["a"]) and p.y == 0
    assert replace(d, y=5) == DPoint(1, 5, ["a"])  # a dataclass goes to dataclasses.replace
    assert asdict(p) == dataclasses.asdict(d) == {"x": 1, "y": 0, "tags": ["a"]}
    assert field_names(Point) == tuple(f.name for f in dataclasses.fields(DPoint))
    assert Point.__match_args__ == DPoint.__match_args__
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.x = 2  # type: ignore[misc]
    assert isinstance(FrozenInstanceError(), AttributeError)
    assert Point.y == DPoint.y == 0  # a default stays a class attribute (code reads them)
    assert not hasattr(Pair(1), "__dict__") and Pair(1) == Pair(1, 1)  # slots when asked
    assert pickle.loads(pickle.dumps(p)) == p and copy.deepcopy(p) == p
    for cls in (Point, DPoint):  # the same refusals as the dataclass's
        with pytest.raises(TypeError):
            cls()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            cls(1, x=1)  # type: ignore[misc]
        with pytest.raises(TypeError):
            cls(1, z=2)  # type: ignore[call-arg]
    c = Counter(3)
    c.n = 4
    assert (c.n, c.seen, c) == (4, [3], Counter(4))
    with pytest.raises(TypeError):
        hash(c)  # mutable and compared by value: unhashable, as a dataclass


def test_the_library_has_no_dataclass_on_the_launch_path() -> None:
    """The library's own modules (outside the agent system and the tools, which a launch
    never imports) use @plain; a @dataclass there would bring dataclasses back."""
    found = []
    for path in (REPO / "sandbox").rglob("*.py"):
        rel = path.relative_to(REPO / "sandbox").as_posix()
        if rel.startswith(("system/", "tools/")) or rel in ("testing.py", "plain.py"):
            continue
        text = path.read_text()
        if "import dataclasses" in text or "from dataclasses import" in text:
            found.append(rel)
    assert not found, found


# --------------------------------------------------------------- the fast parser, fuzzed

_TOKENS = [
    "--set",
    "--set=A=1",
    "--preset",
    "--preset=python",
    "--json",
    "--json=1",
    "--",
    "-",
    "--help",
    "-h",
    "--nope",
    "-x",
    "a.yaml",
    "b.yaml",
    "K=V",
    "=",
    "",
    "--set=",
    "\ud800",
    "é.yaml",
    "-- ",
    "---",
    "--jso",
    "--sets",
]


def test_the_fast_parser_reads_argv_as_click_does_fuzzed() -> None:
    """Seeded, bounded differential fuzzing: for random argument lists, whatever the fast
    parser accepts, click (typer's own copy, under the typer app) parses to the same
    values; what it refuses goes to typer, so it may refuse more, never read differently."""
    import typer.main
    from typer.exceptions import TyperException  # typer 0.2x carries its own click

    from sandbox.cli.commands import app
    from sandbox.cli.quick import OPTIONS, parse

    group: Any = typer.main.get_command(app)
    seed = int(os.environ.get("SANDBOX_FUZZ_SEED", "20261202"))
    rng = random.Random(seed)
    accepted = 0
    for case in range(3000):
        command = rng.choice(sorted(OPTIONS))
        args = [rng.choice(_TOKENS) for _ in range(rng.randrange(0, 7))]
        ours = parse(command, args)
        if ours is None:
            continue
        accepted += 1
        cmd = group.commands[command]
        try:
            ctx = cmd.make_context(command, list(args), resilient_parsing=False)
        except TyperException as e:
            where = f"seed {seed} case {case}: {command} {args!r}"
            raise AssertionError(f"{where}: {ours} vs {e}") from None
        theirs = {k: v for k, v in ctx.params.items() if v not in (None, False, (), [])}
        ours_set = {k: v for k, v in ours.items() if v not in (None, False, (), [])}
        theirs = {k: list(v) if isinstance(v, tuple) else v for k, v in theirs.items()}
        assert ours_set == theirs, (seed, case, command, args)
    assert accepted > 300  # the fuzzing reaches the parser's accepting paths
