"""Supervision (SPEC section 9, Erlang/OTP semantics) with real agents under real policies:
which children restart, in which order, when a supervisor gives up, and what the root's
giving up does to `sandbox up`."""

from __future__ import annotations

from pathlib import Path

import pytest
from progs.syskit import System, make, systems_fixture  # noqa: F401  # the fixture

from sandbox.enforce import landlock

pytestmark = pytest.mark.skipif(landlock.abi_version() < 1, reason="kernel lacks Landlock")

ABC = {"a": {}, "b": {}, "c": {}}


def exits_after(s: System, seq: int) -> list[str]:
    return [r["agent"] for r in s.audit("exit") if r["seq"] > seq]


def starts_after(s: System, seq: int) -> list[str]:
    return [r["agent"] for r in s.audit("start") if r["seq"] > seq]


def crash(s: System, agent: str) -> int:
    """Make `agent` crash (exit 3); the audit seq before it."""
    seq = s.audit()[-1]["seq"]
    s.send("crash", to=agent, wait=False)
    return seq


def restarted(s: System, agent: str, n: int = 1) -> None:
    s.wait_for(
        lambda ps: (
            {a["agent"]: a for a in ps}[agent]["restarts"] >= n
            and all(a["state"] in ("running", "exited", "stopped") for a in ps)
            and {a["agent"]: a for a in ps}[agent]["state"] == "running"
        )
    )


def test_one_for_one_restarts_only_the_child(systems: list[System], tmp_path: Path) -> None:
    s = make(systems, tmp_path, ABC, {"strategy": "one_for_one", "children": ["a", "b", "c"]})
    s.up()
    assert s.starts() == ["a", "b", "c"]  # ordered start
    before = s.by_name()
    seq = crash(s, "b")
    restarted(s, "b")
    after = s.by_name()
    assert after["b"]["pid"] != before["b"]["pid"] and after["b"]["restarts"] == 1
    for other in ("a", "c"):
        assert after[other]["pid"] == before[other]["pid"] and after[other]["restarts"] == 0
    assert exits_after(s, seq) == ["b"] and starts_after(s, seq) == ["b"]
    assert s.send("echo still here", to="b") == "still here"
    assert s.down() == 0
    # Reverse-ordered shutdown.
    assert exits_after(s, s.audit("system")[-1]["seq"]) == ["c", "b", "a"]


def test_one_for_all_restarts_every_child_in_order(systems: list[System], tmp_path: Path) -> None:
    s = make(systems, tmp_path, ABC, {"strategy": "one_for_all", "children": ["a", "b", "c"]})
    s.up()
    before = s.by_name()
    seq = crash(s, "b")
    s.wait_for(lambda ps: all(a["restarts"] == 1 and a["state"] == "running" for a in ps))
    after = s.by_name()
    assert all(after[n]["pid"] != before[n]["pid"] for n in "abc")
    # b died; its siblings are stopped in reverse start order, then all start in order.
    assert exits_after(s, seq) == ["b", "c", "a"]
    assert starts_after(s, seq) == ["a", "b", "c"]
    assert s.down() == 0


def test_rest_for_one_restarts_the_child_and_those_after(
    systems: list[System], tmp_path: Path
) -> None:
    s = make(systems, tmp_path, ABC, {"strategy": "rest_for_one", "children": ["a", "b", "c"]})
    s.up()
    before = s.by_name()
    seq = crash(s, "b")
    s.wait_for(
        lambda ps: (
            {a["agent"]: a for a in ps}["c"]["restarts"] == 1
            and all(a["state"] == "running" for a in ps)
        )
    )
    after = s.by_name()
    assert after["a"]["pid"] == before["a"]["pid"] and after["a"]["restarts"] == 0
    assert after["b"]["pid"] != before["b"]["pid"] and after["c"]["pid"] != before["c"]["pid"]
    assert exits_after(s, seq) == ["b", "c"]
    assert starts_after(s, seq) == ["b", "c"]
    assert s.down() == 0


def test_restart_types(systems: list[System], tmp_path: Path) -> None:
    agents = {
        "perm": {"restart": "permanent"},
        "trans": {"restart": "transient"},
        "temp": {"restart": "temporary"},
    }
    s = make(systems, tmp_path, agents, {"intensity": 10, "children": list(agents)})
    s.up()
    # A normal exit (status 0): only the permanent child comes back.
    for name in agents:
        s.send("exit", to=name, wait=False)
    s.wait_for(
        lambda ps: (
            [(a["agent"], a["state"], a["restarts"]) for a in ps]
            == [("perm", "running", 1), ("trans", "exited", 0), ("temp", "exited", 0)]
        )
    )
    # A crash: the permanent child comes back again; transient would (see below).
    s.cli("restart", str(s.file), "trans")
    s.wait_for(lambda ps: {a["agent"]: a for a in ps}["trans"]["state"] == "running")
    crash(s, "trans")
    s.wait_for(
        lambda ps: (
            {a["agent"]: a for a in ps}["trans"]["restarts"] == 2
            and {a["agent"]: a for a in ps}["trans"]["state"] == "running"
        )
    )
    not_restarted = [r for r in s.audit("system") if r["event"] == "not-restarted"]
    assert sorted(r["agent"] for r in not_restarted) == ["temp", "trans"]
    assert s.down() == 0


def test_intensity_exceeded_nested_supervisor_fails_to_its_parent(
    systems: list[System], tmp_path: Path
) -> None:
    sup = {
        "strategy": "one_for_one",
        "intensity": 5,
        "period": "60s",
        "children": [
            "a",
            {"name": "inner", "intensity": 1, "period": "60s", "children": ["b", "c"]},
        ],
    }
    s = make(systems, tmp_path, ABC, sup)
    s.up()
    a_pid = s.pid("a")
    crash(s, "b")  # the inner supervisor's first restart: within its intensity
    restarted(s, "b", 1)
    c_pid = s.pid("c")
    seq = crash(s, "b")  # the second within 60s: inner gives up, stops c, fails to root
    s.wait_for(
        lambda ps: (
            {a["agent"]: a for a in ps}["b"]["restarts"] == 2
            and all(a["state"] == "running" for a in ps)
        )
    )
    gave_up = [r for r in s.audit("system") if r["event"] == "give-up"]
    assert [r["supervisor"] for r in gave_up] == ["inner"], gave_up
    assert "2 restarts within 60s (intensity 1)" in gave_up[0]["reason"]
    # root (one_for_one) restarts the inner supervisor as one child: b and c, in order.
    assert exits_after(s, seq) == ["b", "c"] and starts_after(s, seq) == ["b", "c"]
    assert s.pid("c") != c_pid and s.pid("a") == a_pid
    assert s.down() == 0


def test_root_giving_up_ends_sandbox_up(systems: list[System], tmp_path: Path) -> None:
    s = make(systems, tmp_path, ABC, {"intensity": 1, "period": "60s", "children": ["a", "b", "c"]})
    s.up()
    crash(s, "b")
    restarted(s, "b", 1)
    crash(s, "c")
    assert s.proc is not None
    status = s.proc.wait(timeout=60)
    assert status == 1
    out = s.output()
    assert "the root supervisor gave up (2 restarts within 60s (intensity 1))" in out, out
    assert "the system stops" in out
    # Every agent was stopped, in reverse order, and it is all in the audit log.
    assert [r["event"] for r in s.audit("system")][-2:] == ["give-up", "down"]
    assert s.cli("audit", "verify", str(s.state / "audit.jsonl")).returncode == 0


def test_violation_kill_is_an_abnormal_exit(systems: list[System], tmp_path: Path) -> None:
    """An agent the parent kills for a pledge violation is restarted like a crash."""
    s = make(systems, tmp_path, {"a": {}, "b": {"restart": "transient"}})
    s.up()
    pid = s.pid("b")
    s.send("violate", to="b", wait=False)  # open() without rpath: killed, exit 159
    s.wait_for(
        lambda ps: (
            {a["agent"]: a for a in ps}["b"]["restarts"] == 1
            and {a["agent"]: a for a in ps}["b"]["state"] == "running"
        )
    )
    assert s.pid("b") != pid
    assert f"b[{pid}] exited (killed for a violation)" in s.output()
    violations = s.audit("violation")
    assert violations and violations[0]["agent"] == "b" and violations[0]["promise"] == "rpath"
    assert s.down() == 0
