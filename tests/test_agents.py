"""The example agents (agents/) under their policies (policies/), as an operator runs them:
`sandbox run policies/NAME.yaml` from a directory holding both (a copy in tmp_path, since
the agents write into policies/data), `python3` resolving to the venv. Each test shows what
the agent's role allows working, and what a tricked agent tries refused and recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.enforce import landlock
from sandbox.testing import Result, assert_allowed, assert_denied

pytestmark = pytest.mark.skipif(landlock.abi_version() < 1, reason="kernel lacks Landlock")

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
VIOLATION_EXIT = 128 + signal.SIGSYS

Runner = Callable[..., Result]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    shutil.copytree(REPO / "agents", tmp_path / "agents")
    return tmp_path


@pytest.fixture
def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}:{e.get('PATH', os.defpath)}"
    return e


def run_agent(
    sandbox_run: Runner, env: dict[str, str], name: str, stdin: str | None = None
) -> Result:
    # workdir defaults to tmp_path (the fixture), i.e. `site`: the policies' commands are
    # relative to it.
    return sandbox_run(None, policy=f"policies/{name}.yaml", env=env, stdin=stdin)


def single_lock(r: Result) -> dict[str, object]:
    locks = r.of_kind("lock")
    assert len(locks) == 1 and locks[0].get("decision") != "deny", r
    return locks[0]


# --------------------------------------------------------------------------- data


def test_data_agent_uses_the_vault_through_the_parent(
    sandbox_run: Runner, env: dict[str, str], site: Path
) -> None:
    r = run_agent(
        sandbox_run, env, "data", "list\nread today.md\nwrite new.md through the parent\n"
    )
    assert_allowed(r)
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == ["ideas.md", "today.md"], r
    assert "# Today" in r.stdout
    assert "wrote notes/new.md" in r.stdout
    assert (site / "policies/data/vault/notes/new.md").read_text() == "through the parent\n"
    lock = single_lock(r)
    assert lock["pledge"] == "stdio vault:create vault:list vault:read vault:write"
    ops = [(o["op"], o["path"], o["decision"], o["reason"]) for o in r.ops]
    assert ops == [
        ("list", "notes", "allow", "vault:list promised"),
        ("open", "notes/today.md", "allow", "vault:read promised"),
        ("open", "notes/new.md", "allow", "vault:write promised"),
    ], ops


def test_data_agent_cannot_delete_nor_open_files_itself(
    sandbox_run: Runner, env: dict[str, str], site: Path
) -> None:
    r = run_agent(sandbox_run, env, "data", "delete today.md\nopen-directly /etc/passwd\nlist\n")
    assert "refused: vault:delete is not promised" in r.stdout, r
    assert (site / "policies/data/vault/notes/today.md").exists()
    denied = assert_denied(r, op="remove")
    assert denied["reason"] == "vault:delete is not promised" and denied["path"] == "notes/today.md"
    assert "root:" not in r.stdout
    assert r.status == VIOLATION_EXIT, r
    # /etc/passwd is the file 'getpw' brings: the message names it beside rpath (issue 9)
    v = assert_denied(r, syscall="openat", promise="rpath getpw", action="kill")
    assert "/etc/passwd" in v["args"]
    assert "pledge violation: openat(" in r.stderr and "needs 'rpath getpw'" in r.stderr
    assert not [o for o in r.ops if o["op"] == "list"], "the agent went on after the violation"


# --------------------------------------------------------------------------- pattern


def test_pattern_agent_writes_insights_only(
    sandbox_run: Runner, env: dict[str, str], site: Path
) -> None:
    summary = site / "policies/data/insights/summary.md"
    summary.unlink()  # the copy holds the demo's output; this run must make its own
    note = site / "policies/data/vault/notes/today.md"
    before = note.read_text()
    r = run_agent(sandbox_run, env, "pattern")
    assert_allowed(r)
    assert f"wrote {summary}" in r.stdout, r
    text = summary.read_text()
    assert text.startswith("# Most frequent words\n") and "- sandbox: 2\n" in text, text
    assert "overwrite a note: refused (Permission denied)" in r.stdout  # Landlock: vault is 'r'
    assert "read a secret: refused (Permission denied)" in r.stdout  # /etc/shadow not unveiled
    assert "allowed?!" not in r.stdout
    assert note.read_text() == before
    lock = single_lock(r)
    assert lock["unveil"] == {
        str(site / "policies/data/vault"): "r",
        str(site / "policies/data/insights"): "crw",
    }


# --------------------------------------------------------------------------- action


def test_action_agent_runs_its_tool_and_nothing_else(
    sandbox_run: Runner, env: dict[str, str], site: Path
) -> None:
    r = run_agent(sandbox_run, env, "action")
    assert_allowed(r)
    notes = site / "policies/data/vault/notes"
    for name in ("ideas.md", "today.md"):
        n = len((notes / name).read_text().splitlines())
        assert f"{n} {notes / name}" in r.stdout, r
    assert "total" in r.stdout
    assert "run /bin/sh: refused (Permission denied)" in r.stdout
    assert "run /usr/bin/curl: refused" in r.stdout
    assert "allowed?!" not in r.stdout
    lock = single_lock(r)
    assert lock["pledge"] == "exec proc rpath stdio" and lock["execpromises"] == "rpath stdio"


# --------------------------------------------------------------------------- relay


def test_relay_agent_relays_and_cannot_phone_home(
    sandbox_run: Runner, env: dict[str, str], site: Path
) -> None:
    r = run_agent(sandbox_run, env, "relay", "hello from the user\nphone-home\nbye\n")
    assert r.status == 0, r
    assert r.stdout.splitlines() == [
        "relay: HELLO FROM THE USER",
        "connect: refused (Operation not permitted)",
        "relay: BYE",
    ], r
    v = assert_denied(r, syscall="socket", promise="inet", action="errno")
    assert v["args"].startswith("AF_INET")
    assert single_lock(r)["pledge"] == "stdio"


def test_relay_agent_without_tricks_is_clean(
    sandbox_run: Runner, env: dict[str, str], site: Path
) -> None:
    r = run_agent(sandbox_run, env, "relay", "just a message\n")
    assert_allowed(r)
    assert r.stdout == "relay: JUST A MESSAGE\n"
