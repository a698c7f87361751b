"""The built-in presets: found by name from any directory and from an installed copy, with
parameters, programs from the system (never a shim first on PATH), -v narrowing per path;
each does what it says, and refuses what it says it refuses. Also the parameter parsers,
fuzzed."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from progs.snippets import audit_records, tcp_servers
from progs.snippets import sandbox_cli as sandbox

from sandbox import presets
from sandbox.errors import PolicyError, UsageError
from sandbox.policy import params
from sandbox.policy.loader import check_files, load_policy_text

REPO = Path(__file__).resolve().parents[1]
GUARD = 120.0


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory far from the repository, with the presets' default dirs."""
    d = tmp_path / "somewhere" / "else"
    (d / "work").mkdir(parents=True)
    (d / "downloads").mkdir()
    return d


def test_every_preset_is_valid_and_shipped(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = presets.names()
    assert {"readonly-tool", "python-no-network", "fetcher-443"} <= set(names)
    files = [presets.path_of(n) for n in names]
    assert all(Path(f).parent == Path(presets.__file__).parent for f in files)
    monkeypatch.chdir(elsewhere)
    assert check_files(files) == (0, [])
    # policies/presets is the same directory, for those who knew the old place.
    assert (REPO / "policies" / "presets").resolve() == Path(presets.PRESET_DIR)


def test_presets_name_no_relative_path_and_no_program_from_path() -> None:
    for name in presets.names():
        doc = yaml.safe_load(Path(presets.path_of(name)).read_text())
        for path in doc.get("unveil", {}):
            assert path.startswith(("/", "@", "${")), (name, path)
        command = doc.get("command") or []
        if command:
            assert command[0].startswith(("/", "${")), (name, command)
        # A program given on the command line is looked up in the system's directories.
        assert doc["env"]["set"]["PATH"] == "/usr/bin:/bin", name
        for p in doc.get("params", {}).values():
            assert p.get("doc") and p.get("default"), (name, p)


def test_sandbox_presets_lists_them_with_their_parameters(tmp_path: Path) -> None:
    p = sandbox("presets", cwd=tmp_path)
    assert p.returncode == 0, p
    for name in presets.names():
        assert p.stdout.count(f"{name}: ") == 1
    assert "--set WORK=...  (default ${CWD}) the tree the tool may read" in p.stdout
    as_json = json.loads(sandbox("presets", "--json", cwd=tmp_path).stdout)
    ro = next(x for x in as_json if x["name"] == "readonly-tool")
    assert ro["params"] == [
        {"name": "WORK", "default": "${CWD}", "doc": "the tree the tool may read"}
    ]
    assert ro["pledge"] == "stdio rpath" and "grep" in ro["usage"]


def _tree(root: Path) -> None:
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "deep" / "a.txt").write_text("find the needle\n")
    (root / "other").mkdir()
    (root / "other" / "b.txt").write_text("another needle\n")


def test_readonly_tool_by_name_from_another_directory(elsewhere: Path) -> None:
    _tree(elsewhere)
    secret = elsewhere.parent / "secret.txt"
    secret.write_text("needle outside WORK\n")
    log = elsewhere.parent / "a.jsonl"
    run = ["run", "--preset", "readonly-tool", "--audit-log", str(log)]
    # WORK defaults to the current directory; --set WORK=. says the same.
    for extra in ([], ["--set", "WORK=."]):
        p = sandbox(*run, *extra, "--", "grep", "-r", "needle", ".", cwd=elsewhere)
        assert p.returncode == 0, p
        assert sorted(p.stdout.splitlines()) == [
            "./other/b.txt:another needle",
            "./src/deep/a.txt:find the needle",
        ]
    # Outside WORK nothing is readable...
    p = sandbox(*run, "--", "grep", "needle", str(secret), cwd=elsewhere)
    assert p.returncode == 2 and "Permission denied" in p.stderr, p
    # ...which grep does read without the sandbox (the test could fail).
    assert subprocess.run(["grep", "-q", "needle", str(secret)]).returncode == 0
    # --set WORK=DIR moves what is readable, relative to the current directory.
    p = sandbox(
        *run, "--set", "WORK=src", "--", "grep", "-r", "needle", "src", "other", cwd=elsewhere
    )
    assert p.returncode == 2 and p.stdout == "src/deep/a.txt:find the needle\n", p
    assert "other: Permission denied" in p.stderr
    # Writing is refused, and recorded.
    p = sandbox(*run, "--", "touch", "new.txt", cwd=elsewhere)
    assert p.returncode == 159 and "needs 'wpath cpath'" in p.stderr, p
    assert not (elsewhere / "new.txt").exists()


def test_v_narrows_the_entry_of_its_path_and_keeps_the_others(elsewhere: Path) -> None:
    _tree(elsewhere)
    log = elsewhere.parent / "a.jsonl"
    # The issue's own command: -v DIR:r with a policy narrows WORK to DIR, and grep still
    # runs from /usr (before, -v replaced the whole unveil: "cannot execute /usr/bin/grep").
    p = sandbox(
        "run",
        "--preset",
        "readonly-tool",
        "-v",
        "src:r",
        "--audit-log",
        str(log),
        "--",
        "grep",
        "-r",
        "needle",
        "src",
        "other",
        cwd=elsewhere,
    )
    assert p.returncode == 2, p
    assert p.stdout == "src/deep/a.txt:find the needle\n"
    assert "other: Permission denied" in p.stderr
    lock = [r for r in audit_records(log) if r["kind"] == "lock"][-1]
    unveil = lock["unveil"]
    assert isinstance(unveil, dict)
    assert str(elsewhere / "src") in unveil and str(elsewhere) not in unveil
    assert "/usr" in unveil
    # Wider than the preset: refused before anything runs.
    p = sandbox("run", "--preset", "readonly-tool", "-v", "src:rw", "--", "true", cwd=elsewhere)
    assert p.returncode == 2 and "can only narrow it" in p.stderr, p
    p = sandbox("run", "--preset", "readonly-tool", "-v", "/etc:r", "--", "true", cwd=elsewhere)
    assert p.returncode == 2 and "outside what policy 'readonly-tool' unveils" in p.stderr, p


SCRIPT = """
import os, socket, sys
with open("work/out.txt", "w") as f:
    f.write("written")
print(open("work/out.txt").read(), sys.executable, flush=True)
try:
    open("script.py", "a")
except OSError as e:
    print("outside work:", e.errno, flush=True)
socket.socket()
"""


def test_python_no_network_runs_the_system_python_not_a_shim(elsewhere: Path) -> None:
    (elsewhere / "script.py").write_text(SCRIPT)
    shims = elsewhere.parent / "shims"
    shims.mkdir()
    marker = elsewhere.parent / "shim-ran"
    shim = shims / "python3"
    shim.write_text(f'#!/bin/sh\ntouch {marker}\nexec /usr/bin/python3 "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}")
    log = elsewhere.parent / "a.jsonl"
    for command in ([], ["--", "python3", "script.py"]):  # the preset's command, and the user's
        p = sandbox(
            "run",
            "--preset",
            "python-no-network",
            "--audit-log",
            str(log),
            *command,
            cwd=elsewhere,
            env=env,
        )
        assert "written /usr/bin/python3" in p.stdout and "outside work: 13" in p.stdout, p
        assert p.returncode == 159 and "needs 'inet'" in p.stderr, p
    assert (elsewhere / "work" / "out.txt").read_text() == "written"
    assert not marker.exists(), "the shim first on PATH must not run"
    # The other side: without the preset, PATH's python3 is the shim.
    subprocess.run(["python3", "-c", "pass"], env=env, check=True)
    assert marker.exists()


def test_fetcher_443_connects_to_443_only(elsewhere: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding port 443 for the test server needs root")

    def curl(port: int, sandboxed: bool) -> int:
        url = f"http://127.0.0.1:{port}/"
        cmd = ["curl", "-s", "-o", "/dev/null", "--max-time", "20", url]
        if sandboxed:
            return sandbox("run", "--preset", "fetcher-443", "--", *cmd, cwd=elsewhere).returncode
        return subprocess.run(cmd, timeout=GUARD).returncode

    try:
        servers = tcp_servers([443, 0])
        _, other = servers.__enter__()
    except OSError as e:
        pytest.skip(f"cannot bind 127.0.0.1:443 for the test server: {e}")
    try:
        # curl's 52/56: connected, but the test server answers nothing; 7: could not connect.
        connected = {52, 56}
        assert curl(443, sandboxed=True) in connected
        assert curl(other, sandboxed=True) == 7  # Landlock refused the TCP connect
        assert curl(other, sandboxed=False) in connected  # open without the sandbox
    finally:
        servers.__exit__(None, None, None)


def test_preset_from_an_installed_copy(tmp_path: Path, elsewhere: Path) -> None:
    """The presets are package data: an installed copy (not this checkout) finds them."""
    target = tmp_path / "site"
    # Built from a copy of what a source distribution holds, so nothing is left in the tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "sandbox", source / "sandbox", ignore=shutil.ignore_patterns("__pycache__")
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build
    shipped = target / "sandbox" / "presets" / "readonly-tool.yaml"
    assert shipped.exists(), sorted(p.name for p in (target / "sandbox").iterdir())
    _tree(elsewhere)
    p = sandbox(
        "run",
        "--preset",
        "readonly-tool",
        "--",
        "grep",
        "-r",
        "needle",
        "src",
        cwd=elsewhere,
        pythonpath=str(target),
    )
    assert (p.returncode, p.stdout) == (0, "src/deep/a.txt:find the needle\n"), p
    where = subprocess.run(
        [sys.executable, "-c", "import sandbox.presets as p; print(p.PRESET_DIR)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(target)),
        cwd=elsewhere,
    )
    assert where.stdout.strip() == str(target / "sandbox" / "presets"), where


# --------------------------------------------------------------------------- parameters


def test_parameters_in_paths_and_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    text = (
        "version: 1\n"
        "params:\n"
        '  DATA: {default: "${CWD}/data", doc: the data}\n'
        "  OUT: the output (required)\n"
        'command: [/usr/bin/ls, "${DATA}"]\n'
        "pledge: stdio rpath\n"
        "unveil:\n"
        '  "${DATA}": r\n'
        '  "${OUT}/x": {perms: r, optional: true}\n'
        '  "${HOME}": {perms: r, optional: true}\n'
    )
    with pytest.raises(PolicyError, match="parameter OUT has no default: give it with --set OUT="):
        load_policy_text(text, "p.yaml", str(tmp_path))
    p = load_policy_text(text, "p.yaml", str(tmp_path), {"OUT": "/srv"})
    assert p.command == ("/usr/bin/ls", str(data))
    home = os.path.normpath(os.environ["HOME"])
    assert [u.path for u in p.unveil] == [str(data), "/srv/x", home]
    assert [(q.name, q.value) for q in p.params] == [("DATA", str(data)), ("OUT", "/srv")]
    bad = {
        "${NOPE}": "unknown parameter NOPE",
        "${DATA": "without a closing '}'",
        "${lower}": "is not a parameter name",
    }
    for ref, message in bad.items():
        broken = text.replace('"${DATA}": r', f'"{ref}": r')
        with pytest.raises(PolicyError) as info:
            load_policy_text(broken, "p.yaml", str(tmp_path), {"OUT": "/srv"})
        assert message in str(info.value) and "p.yaml:8:3:" in str(info.value), str(info.value)
    for decl, message in (
        ("  CWD: x\n", "CWD is built in"),
        ("  bad: x\n", "not a parameter name"),
    ):
        with pytest.raises(PolicyError, match=message):
            load_policy_text(
                text.replace("params:\n", "params:\n" + decl),
                "p.yaml",
                str(tmp_path),
                {"OUT": "/srv"},
            )
    with pytest.raises(PolicyError, match="declares no parameter EXTRA"):
        load_policy_text(text, "p.yaml", str(tmp_path), {"OUT": "/srv", "EXTRA": "/x"})


def test_set_on_the_command_line(tmp_path: Path) -> None:
    for args, message in (
        (["--set", "WORK"], "expected NAME=VALUE"),
        (["--set", "work=."], "not a parameter name"),
        (["--set", "CWD=/"], "CWD is built in"),
        (["--set", "WORK="], "empty value"),
        (["--set", "WORK=.", "--set", "WORK=/"], "given twice"),
        (["--set", "NOPE=."], "declares no parameter NOPE"),
    ):
        p = sandbox("run", "--preset", "readonly-tool", *args, "--", "true", cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr, (args, p)
    p = sandbox("run", "-v", "/usr:rx", "--set", "WORK=.", "--", "/usr/bin/true", cwd=tmp_path)
    assert p.returncode == 2 and "--set gives parameters of a policy" in p.stderr, p
    p = sandbox("run", "--preset", "nope", "--", "true", cwd=tmp_path)
    assert p.returncode == 2 and "presets: fetcher-443, python-no-network" in p.stderr, p


def test_fuzz_set_values_and_references() -> None:
    rng = random.Random(20261201)
    alphabet = string.ascii_letters + string.digits + "_=${}/.\\: \0\n-"
    for _ in range(3000):
        spec = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        try:
            name, value = params.parse_set(spec, "/base")
        except UsageError as e:
            assert str(e).startswith("--set") and e.exit_status == 2
            continue
        assert params.NAME_RE.fullmatch(name) and name not in params.BUILTINS
        assert value.startswith("/") and "\0" not in value
        assert os.path.normpath(value) == value
    values = {"A": "/a", "B_2": "/b${A}"}
    for _ in range(3000):
        text = "".join(
            rng.choice(["${A}", "${B_2}", "${", "}", "$", "x", "/", "${a}", "${C}"])
            for _ in range(rng.randint(0, 8))
        )
        try:
            out = params.expand(text, values)
        except params.ParamError as e:
            assert str(e)
            continue
        # One pass: a value's own ${...} is not expanded again; nothing else changes.
        assert "${A}" not in out.replace("/b${A}", "")
        assert out.count("/b${A}") == text.count("${B_2}")


def test_fuzz_params_sections(tmp_path: Path) -> None:
    rng = random.Random(7)
    pieces = [
        "WORK",
        "lower",
        "CWD",
        "A1",
        "{default: x}",
        '{default: "${CWD}"}',
        "{doc: d}",
        "[1, 2]",
        '""',
        '{default: "${NOPE}"}',
        "{bogus: 1}",
        "null",
        '{default: "\\0"}',
    ]
    for _ in range(400):
        entries = [
            f"  {rng.choice(pieces[:4])}: {rng.choice(pieces[4:])}\n"
            for _ in range(rng.randint(0, 4))
        ]
        text = "version: 1\npledge: stdio\nparams:\n" + "".join(entries)
        try:
            p = load_policy_text(text, "f.yaml", str(tmp_path), rng.choice([{}, {"WORK": "/w"}]))
        except PolicyError as e:
            assert all(str(x).startswith("f.yaml:") for x in e.problems), e.problems
            continue
        for q in p.params:
            assert params.NAME_RE.fullmatch(q.name) and q.value


def test_readonly_tool_as_the_unprivileged_user(tmp_path: Path) -> None:
    from progs.asuser import PY as VENV_PY
    from progs.asuser import as_user

    u = as_user(tmp_path)
    u.write("src/deep/a.txt", "find the needle\n")
    argv = [VENV_PY, "-m", "sandbox", "run", "--preset", "readonly-tool", "--audit-log",
            "a.jsonl", "--"]  # fmt: skip
    r = u.run([*argv, "grep", "-r", "needle", "src"])
    assert (r.returncode, r.stdout) == (0, "src/deep/a.txt:find the needle\n"), r
    r = u.run([*argv, "touch", "new.txt"])
    assert r.returncode == 159 and not u.path("new.txt").exists(), r
    assert u.run(["touch", "new.txt"]).returncode == 0  # the user may, without the preset
