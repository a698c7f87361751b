"""System files (SPEC section 9) are validated like policy files: every problem with
FILE:LINE:COLUMN, exit 2, nothing started; `check` and `explain` accept them. Plus
seeded, bounded fuzzing of the system-file loader and of the message parser."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.errors import PolicyError
from sandbox.system import message
from sandbox.system.loader import load_system

REPO = Path(__file__).resolve().parents[1]
SANDBOX = [sys.executable, "-m", "sandbox"]
POLICY = "version: 1\ncommand: [python3, x.py]\nlock: agent\npledge: stdio\n"


def site(tmp_path: Path, system: str, policies: dict[str, str] | None = None) -> Path:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(POLICY)
    for name, text in (policies or {}).items():
        (tmp_path / f"{name}.yaml").write_text(text)
    path = tmp_path / "sys.yaml"
    path.write_text(system)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_system(path)
    return [str(p).replace(str(path.parent) + "/", "") for p in e.value.problems]


AGENTS = "agents:\n  a: {policy: a.yaml}\n  b: {policy: b.yaml}\n  c: {policy: c.yaml}\n"


def test_a_valid_system_is_plain_data(tmp_path: Path) -> None:
    path = site(
        tmp_path,
        "version: 1\nname: t\n"
        + AGENTS
        + "supervision:\n  strategy: rest_for_one\n  intensity: 2\n  period: 10s\n"
        "  children: [a, {strategy: one_for_all, children: [b, c]}]\nroute: b\n",
    )
    s = load_system(path)
    assert s.name == "t" and s.route == "b" and s.state_dir == str(tmp_path / "state")
    assert s.tree.strategy == "rest_for_one" and s.tree.intensity == 2 and s.tree.period == 10
    inner = s.tree.children[1]
    assert not isinstance(inner, str) and inner.strategy == "one_for_all"
    assert list(s.tree.agents()) == ["a", "b", "c"]
    assert s.agents["a"].policy.name == "a" and s.agents["a"].restart == "permanent"


def test_every_problem_with_its_location(tmp_path: Path) -> None:
    path = site(
        tmp_path,
        "version: 1\n"
        "agents:\n"
        "  a: {policy: a.yaml, qos: fast, restart: sometimes, shutdown: 5 parsecs}\n"
        "  b: {policy: b.yaml, inbox: 0}\n"
        "  c: {policy: c.yaml, colour: red}\n"
        "supervision:\n"
        "  period: soon\n"
        "  strategy: one_for_some\n"
        "  children: [a, b, ghost, a, {children: [b]}]\n"
        "route: nobody\n"
        "extra: 1\n",
    )
    unit = "expected a number of seconds or a number with a unit (ms, s, m, h, d), e.g. 10s"
    assert problems(path) == [
        "sys.yaml:3:28: qos of agent 'a' must be one of interactive, initiated, utility, "
        "background, not 'fast'",
        "sys.yaml:3:43: restart of agent 'a' must be one of permanent, transient, temporary, "
        "not 'sometimes'",
        f"sys.yaml:3:64: shutdown of agent 'a': '5 parsecs' has an unknown duration unit "
        f"'parsecs': {unit}, 5m, 1h30m",
        "sys.yaml:4:30: inbox of agent 'b' must be between 1 and 1000000, not 0",
        "sys.yaml:5:23: unknown key 'colour' in agent 'c'; allowed: policy, qos, restart, "
        "shutdown, inbox",
        f"sys.yaml:7:11: period of supervision: 'soon' is not a duration: {unit}, 5m, 1h30m",
        "sys.yaml:8:13: strategy of supervision must be one of one_for_one, one_for_all, "
        "rest_for_one, not 'one_for_some' (did you mean 'one_for_one'?)",
        "sys.yaml:9:20: child 'ghost' is neither an agent nor a supervisor",
        "sys.yaml:9:27: duplicate child 'a' (already supervised, line 9)",
        "sys.yaml:9:42: duplicate child 'b' (already supervised, line 9)",
        "sys.yaml:10:8: route names agent 'nobody', which is not in agents",
        "sys.yaml:11:1: unknown key 'extra' in the system file; allowed: version, name, state, "
        "agents, supervision, supervisors, route, send_timeout, audit",
    ]


def test_send_capability_must_name_an_agent_of_the_system(tmp_path: Path) -> None:
    pol = (
        "version: 1\ncommand: [python3, x.py]\nlock: agent\npledge: stdio b:send dta:send\n"
        "resources:\n  b: {type: agent}\n  dta: {type: agent}\n"
    )
    path = site(tmp_path, "version: 1\n" + AGENTS, {"a": pol})
    assert problems(path) == [
        "a.yaml:7:3: resource 'dta' (type agent) names no agent of system sys.yaml; "
        "its 'dta:send' could reach nobody",
    ]
    # And in the policy itself: NAME:send needs the resource, and agents know only send.
    bad = "version: 1\npledge: stdio b:send c:read\nresources:\n  c: {type: agent}\n"
    path = site(tmp_path, "version: 1\n" + AGENTS, {"a": bad})
    got = problems(path)
    assert got[0].endswith(
        "a.yaml:2:15: capability 'b:send' names resource 'b', which is not "
        "declared under 'resources'"
    )
    assert got[1].endswith("a.yaml:2:22: 'read' is not a right of agent resource 'c'; rights: send")
    assert got[2] == "sys.yaml:3:15: policy 'a.yaml' of agent 'a' is not valid (problems above)"


def test_cycles_of_named_supervisors(tmp_path: Path) -> None:
    path = site(
        tmp_path,
        "version: 1\n" + AGENTS + "supervisors:\n"
        "  one: {children: [a, two]}\n"
        "  two: {children: [b, one]}\n"
        "supervision: {children: [one, c]}\n",
    )
    assert problems(path) == ["sys.yaml:8:23: supervisors form a cycle: one -> two -> one"]


def test_unsupervised_agents_and_empty_files(tmp_path: Path) -> None:
    path = site(tmp_path, "version: 1\n" + AGENTS + "supervision: {children: [a]}\n")
    assert problems(path) == [
        "sys.yaml:4:3: agent 'b' is in no supervisor's children",
        "sys.yaml:5:3: agent 'c' is in no supervisor's children",
    ]
    path = site(tmp_path, "")
    assert problems(path) == [
        "sys.yaml:1:1: the system file is empty; it needs 'version: 1' and 'agents'"
    ]
    path = site(tmp_path, "version: 2\nagents: {}\n")
    assert problems(path) == [
        "sys.yaml:1:10: version 2 is not supported; this sandbox reads version 1",
        "sys.yaml:2:9: agents is empty; a system needs at least one agent",
    ]


def test_check_and_explain_accept_system_files(tmp_path: Path) -> None:
    r = subprocess.run(
        [*SANDBOX, "check", str(REPO / "policies/outheis.yaml"), str(REPO / "policies/data.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    bad = site(tmp_path, "version: 1\n" + AGENTS + "route: d\n")
    r = subprocess.run([*SANDBOX, "check", str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert r.stderr == f"{bad}:6:8: route names agent 'd', which is not in agents\n"
    r = subprocess.run(
        [*SANDBOX, "explain", str(REPO / "policies/outheis.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if "|" in line}
    cells = {k: [c.strip() for c in v.split("|")[2:-1]] for k, v in rows.items()}
    assert cells["agent"][:2] == ["vault", "insights"]
    assert cells["relay"][:3] == ["-", "-", "-"] and "data" in cells["relay"][4]
    assert cells["data"][:2] == ["read, write", "-"]
    assert cells["agenda"][:2] == ["read", "-"]
    assert cells["pattern"][:2] == ["read", "read, write"]
    assert cells["action"][3].startswith("yes")
    r = subprocess.run(
        [*SANDBOX, "explain", str(REPO / "policies/outheis.yaml"), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    data = json.loads(r.stdout)
    assert data["agents"]["relay"]["sends_to"] == ["action", "agenda", "data", "pattern"]
    assert data["agents"]["data"]["receives_from"] == ["relay"]


def test_up_with_a_bad_system_starts_nothing(tmp_path: Path) -> None:
    bad = site(tmp_path, "version: 1\n" + AGENTS + "route: d\n")
    r = subprocess.run([*SANDBOX, "up", str(bad)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "route names agent 'd'" in r.stderr
    assert not (tmp_path / "state").exists()


# ------------------------------------------------------------------ fuzz


def test_fuzz_the_system_loader(tmp_path: Path) -> None:
    """Mutated system files: a PolicyError with locations, or a System; nothing else."""
    rng = random.Random(20261201)
    base = (
        "version: 1\nname: t\n" + AGENTS + "supervision:\n  strategy: one_for_all\n"
        "  intensity: 2\n  period: 10s\n  children: [a, {children: [b, c]}]\nroute: b\n"
    )
    alphabet = [*list(" :{}[],-#&*!|>'\"\n\tabc0129sxyz@%\\"), "\u2028", "\x00", "\ufeff"]
    site(tmp_path, base)
    for _ in range(300):
        text = list(base)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text[i] = rng.choice(alphabet)
            elif op < 0.7:
                del text[i]
            else:
                text.insert(i, rng.choice(alphabet))
        path = tmp_path / "sys.yaml"
        path.write_text("".join(text))
        try:
            load_system(path)
        except PolicyError as e:
            assert e.problems
            for p in e.problems:
                assert p.line >= 1 and p.column >= 1 and p.message


def _random_json(rng: random.Random, depth: int = 0) -> object:
    pick = rng.random()
    if depth > 10 or pick < 0.3:
        return rng.choice(
            [
                None,
                True,
                0,
                -1,
                2**70,
                1.5,
                float("inf"),
                "",
                "x" * rng.randint(0, 5000),
                "\u2028",
                "\ud800",
            ]
        )
    if pick < 0.65:
        return {
            rng.choice(["to", "payload", "type", "from", "reply_to", "k", "id", "v"]): _random_json(
                rng, depth + 1
            )
            for _ in range(rng.randint(0, 4))
        }
    return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def test_fuzz_the_message_parser() -> None:
    """Random requests: parse_send/parse_reply return fields or raise MessageError only,
    and whatever they accept builds into a message within the size bound, or is refused."""
    rng = random.Random(7)
    accepted = 0
    for _ in range(3000):
        req = _random_json(rng)
        if not isinstance(req, dict):
            req = {"payload": req}
        req.setdefault("to", rng.choice(["b", "B", "", "b" * 70, 3]))
        req["id"], req["op"] = 1, "send"
        for parse in (message.parse_send, message.parse_reply):
            try:
                fields = parse(req)
            except message.MessageError:
                continue
            accepted += 1
            try:
                msg, size = message.build(
                    "1" * 19,
                    {"agent": "a"},
                    fields.get("to", "a"),
                    fields["type"],
                    fields["payload"],
                    fields.get("conversation_id"),
                    fields.get("reply_to"),
                )
            except message.MessageError as e:
                assert "larger than" in str(e)
                continue
            assert msg["from"] == {"agent": "a"} and msg["type"] in message.TYPES
            assert size == len(
                json.dumps(msg, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()
            )
    assert accepted > 50


def test_ids_are_time_ordered_and_unique() -> None:
    clock = message.IdClock(machine=5)
    ids = [clock.next() for _ in range(10000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 19 and i.isdigit() for i in ids)
    assert (int(ids[0]) >> 12) & 1023 == 5
    later = message.IdClock(machine=5)
    later.advance_past(ids[-1])
    assert later.next() > ids[-1]
