"""The policy loader (SPEC section 4) and the -p/-v narrowing of `sandbox run` (section 3).

Every problem is checked with its exact FILE:LINE:COLUMN. Valid and invalid forms sit
side by side so that each test shows what is accepted and what is refused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import PolicyError, UsageError
from sandbox.policy import loader as pol
from sandbox.policy import model, narrow, schema, units
from sandbox.policy.model import DEFAULT_ENV_KEEP, Policy, Unveil

DATA = Path(__file__).parent / "data" / "policies"
SCHEMA_FILE = Path(pol.__file__).with_name("schema.json")


def load(tmp_path: Path, text: str, filename: str = "p.yaml") -> Policy:
    return pol.load_policy_text(text, filename, str(tmp_path))


def problems(tmp_path: Path, text: str, filename: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load(tmp_path, text, filename)
    lines = [str(p) for p in info.value.problems]
    assert str(info.value) == "\n".join(lines)
    return lines


# --- units -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1024", 1024),
        (4096, 4096),
        ("100B", 100),
        ("64k", 64 * 1024),
        ("64K", 64 * 1024),
        ("512MiB", 512 * 2**20),
        ("512 mib", 512 * 2**20),
        ("1GiB", 2**30),
        ("1.5GiB", 3 * 2**29),
        ("2TiB", 2 * 2**40),
        ("1kB", 1000),
        ("5MB", 5_000_000),
        ("1GB", 10**9),
        ("512m", 512 * 2**20),
    ],
)
def test_size_valid(text: str | int, expected: int) -> None:
    assert units.parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a size"),
        ("MiB", "is not a size"),
        ("-1", "is not a size"),
        ("5x", "unknown size unit 'x'"),
        ("1.2.3", "is not a size"),
        ("10 PiB", "unknown size unit 'PiB'"),
        ("99999999999TiB", "too large"),
        (True, "is not a size"),
    ],
)
def test_size_invalid(text: str | int, message: str) -> None:
    with pytest.raises(units.UnitError, match=message) as info:
        units.parse_size(text)
    assert "e.g. 512MiB" in str(info.value) or "too large" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", 10.0),
        (10, 10.0),
        (0.5, 0.5),
        ("2.5", 2.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("10m", 600.0),
        ("10min", 600.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        ("0s", 0.0),
    ],
)
def test_duration_valid(text: str | float, expected: float) -> None:
    assert units.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a duration"),
        ("soon", "is not a duration"),
        ("10 parsecs", "unknown duration unit 'parsecs'"),
        ("-5s", "is not a duration"),
        (-5, "is negative"),
        ("5s garbage", "is not a duration"),
        ("400d", "too long"),
        (float("inf"), "is not a duration"),
        (False, "is not a duration"),
    ],
)
def test_duration_invalid(text: str | float, message: str) -> None:
    with pytest.raises(units.UnitError, match=message):
        units.parse_duration(text)


# --- a complete policy ------------------------------------------------------------------


def test_complete_example_loads_with_every_key() -> None:
    path = DATA / "data.yaml"
    p = pol.load_policy(path)
    assert p.name == "data"
    assert p.version == 1
    assert p.command == ("python3", "agents/data_agent.py")
    assert p.lock == "agent"
    assert p.init_timeout == 10.0
    assert p.init_pledge == {"stdio", "rpath", "wpath", "cpath", "inet", "exec", "unix"}  # type: ignore[comparison-overlap]
    assert p.pledge == {"stdio", "rpath", "wpath", "cpath", "inet", "exec"}
    assert p.capabilities == {("vault", "read"), ("vault", "write"), ("llm", "post")}
    assert p.execpromises == frozenset({"stdio", "rpath"})
    assert p.unveil == (
        Unveil("/usr", frozenset("rx")),
        Unveil(str(DATA / "vault"), frozenset("rwc")),
        Unveil("/etc/ssl", frozenset("r"), optional=True),
    )
    assert p.network is not None
    assert (p.network.connect, p.network.bind) == ((443,), ())
    vault, llm = p.resources["vault"], p.resources["llm"]
    assert (vault.type, vault.path) == ("dir", str(DATA / "vault"))
    assert (llm.type, llm.url, llm.timeout, llm.max_bytes) == (
        "http",
        "https://api.example.com/v1/",
        30.0,
        4 * 2**20,
    )
    assert dict(llm.headers) == {"Authorization": "env:LLM_API_KEY", "X-Client": "outheis"}
    assert (p.limits.memory, p.limits.cpu, p.limits.wall) == (512 * 2**20, 60, 600.0)
    assert (p.limits.processes, p.limits.files, p.limits.file_size) == (64, 256, 2**30)
    assert p.env.keep == ("PATH", "LANG")
    assert dict(p.env.set) == {"PYTHONDONTWRITEBYTECODE": "1"}
    assert (p.violation, p.qos, p.best_effort, p.user) == ("kill", "utility", False, "root")
    assert p.source == str(path.resolve())
    assert p.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_minimal_policy_gets_the_defaults(tmp_path: Path) -> None:
    p = load(tmp_path, "version: 1\n", "Web_Agent.yaml")
    assert p.name == "web-agent"  # the file's stem, made a valid name
    assert p.command == ()
    assert (p.lock, p.violation, p.qos, p.best_effort, p.user) == (
        "exec",
        "kill",
        None,
        False,
        None,
    )
    assert p.pledge == frozenset() and p.capabilities == frozenset()
    assert p.execpromises is None and p.init_pledge is None
    assert p.unveil == () and p.network is None and dict(p.resources) == {}
    assert p.env.keep == DEFAULT_ENV_KEEP
    assert p.sha256 == hashlib.sha256(b"version: 1\n").hexdigest()
    assert problems(tmp_path, "name: x\n") == [
        "p.yaml:1:1: the policy is missing the required key 'version'"
    ]


def test_sha256_of_the_file_bytes_changes_with_the_file(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("version: 1\n")
    first = pol.load_policy(a).sha256
    a.write_text("version: 1  # changed\n")
    assert pol.load_policy(a).sha256 != first
    assert pol.load_policy(a).source == str(a)


# --- keys, one at a time: accepted form, then refused forms with their location -------


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("name: web-2\n", lambda p: p.name == "web-2"),
        (
            "command: \"python3 -c 'print(1)'\"\n",
            lambda p: p.command == ("python3", "-c", "print(1)"),
        ),
        ("command: [sleep, 10]\n", lambda p: p.command == ("sleep", "10")),
        ("command: []\n", lambda p: p.command == ()),
        ("lock: agent\n", lambda p: p.lock == "agent"),
        ("pledge: [stdio, rpath]\n", lambda p: p.pledge == {"stdio", "rpath"}),
        ("pledge: ''\n", lambda p: p.pledge == frozenset()),
        ("violation: errno\n", lambda p: p.violation == "errno"),
        ("violation: log\n", lambda p: p.violation == "log"),
        ("qos: background\n", lambda p: p.qos == "background"),
        ("best_effort: true\n", lambda p: p.best_effort is True),
        ("user: '0'\n", lambda p: p.user == "0"),
        ("user: 0\n", lambda p: p.user == "0"),
        ("limits: {cpu: 500ms}\n", lambda p: p.limits.cpu == 1),  # RLIMIT_CPU: rounded up
        ("limits: {file_size: 0}\n", lambda p: p.limits.file_size == 0),
        ("env: {set: {A: x}}\n", lambda p: p.env.keep == DEFAULT_ENV_KEEP),
        ("env: {keep: []}\n", lambda p: p.env.keep == ()),
        ("env: {set: {N: 1, B: true}}\n", lambda p: dict(p.env.set) == {"N": "1", "B": "true"}),
    ],
)
def test_valid_values(tmp_path: Path, text: str, check: object) -> None:
    p = load(tmp_path, "version: 1\n" + text)
    assert callable(check) and check(p)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\n", "1:10: version 2 is not supported; this sandbox reads version 1"),
        ("version: one\n", "1:10: version must be a whole number in decimal, not a string"),
        ("name: Web\n", "2:7: name 'Web' must match [a-z][a-z0-9-]* (e.g. 'data-agent')"),
        ("name: 2web\n", "2:7: name '2web' must match [a-z][a-z0-9-]* (e.g. 'data-agent')"),
        ('command: "echo \'x"\n', "2:10: command cannot be split into words: No closing quotation"),
        ("command: {a: b}\n", "2:10: command must be a string, not a mapping"),
        ("command: [[a]]\n", "2:11: an argument of command must be a string, not a list"),
        ("lock: later\n", "2:7: lock must be one of exec, agent, not 'later'"),
        (
            "violation: kil\n",
            "2:12: violation must be one of kill, errno, log, not 'kil' (did you mean 'kill'?)",
        ),
        (
            "qos: fast\n",
            "2:6: qos must be one of interactive, initiated, utility, background, not 'fast'",
        ),
        ("best_effort: 'true'\n", "2:14: best_effort must be true or false, not a string"),
        ("best_effort: 1\n", "2:14: best_effort must be true or false, not an integer"),
        (
            "user: nosuchuser-xyz\n",
            "2:7: user 'nosuchuser-xyz' is not in the passwd database (see getent passwd)",
        ),
        (
            "user: 4000000000\n",
            "2:7: user '4000000000' is not in the passwd database (see getent passwd)",
        ),
        ("pledge: {stdio: 1}\n", "2:9: pledge must be a string, not a mapping"),
        ("pledge:\n", '2:8: pledge has no value (write "" for no promises)'),
        (
            "limits: {memory: 5x}\n",
            "2:18: limits.memory: '5x' has an unknown size unit 'x': expected a number of bytes "
            "with an optional unit (B, k, M, G, KiB, MiB, GiB, kB, MB, GB), e.g. 512MiB",
        ),
        ("limits: {memory: 0}\n", "2:18: limits.memory must be at least 1 bytes, not 0"),
        ("limits: {wall: 0}\n", "2:16: limits.wall must be more than 0 seconds, not 0"),
        (
            "limits: {processes: 0}\n",
            "2:21: limits.processes must be between 1 and 2147483647, not 0",
        ),
        (
            "limits: {files: 1.5}\n",
            "2:17: limits.files must be a whole number in decimal, not a number",
        ),
        (
            "limits: {files: 0x10}\n",
            "2:17: limits.files must be a whole number in decimal, not a number in another "
            "notation",
        ),
        (
            "limits: {wal: 1}\n",
            "2:10: unknown key 'wal' in limits (did you mean 'wall'?); allowed: memory, cpu, "
            "wall, processes, files, file_size",
        ),
        ("limits: 5\n", "2:9: limits must be a mapping (key: value), not an integer"),
        ("env: {keep: [PATH, 1X]}\n", "2:20: '1X' is not a valid environment variable name"),
        ("env: {set: {A-B: x}}\n", "2:13: 'A-B' is not a valid environment variable name"),
        ("env: {set: {A: }}\n", '2:16: env.set.A has no value (write "" for an empty string)'),
        ("env: {keep: PATH}\n", "2:13: env.keep must be a list, not a string"),
        (
            "init: {timeout: 5s}\n",
            "2:1: 'init' applies only with 'lock: agent' (with lock: exec the agent never runs "
            "unlocked)",
        ),
        (
            "bogus: 1\n",
            "2:1: unknown key 'bogus' in the policy; allowed: version, name, command, lock, "
            "init, pledge, execpromises, unveil, network, resources, limits, env, violation, "
            "qos, best_effort, user, params, audit",
        ),
        (
            "pledges: stdio\n",
            "2:1: unknown key 'pledges' in the policy (did you mean 'pledge'?); allowed: "
            "version, name, command, lock, init, pledge, execpromises, unveil, network, "
            "resources, limits, env, violation, qos, best_effort, user, params, audit",
        ),
        (
            "name: !!python/name:os.system x\n",
            "2:7: name: YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed in a "
            "policy",
        ),
    ],
)
def test_invalid_values(tmp_path: Path, text: str, expected: str) -> None:
    prefix = "" if text.startswith("version") else "version: 1\n"
    assert problems(tmp_path, prefix + text) == [f"p.yaml:{expected}"]


# --- promises --------------------------------------------------------------------------


def test_unknown_promise_points_at_the_word_and_suggests(tmp_path: Path) -> None:
    assert load(tmp_path, "version: 1\npledge: stdio rpath\n").pledge == {"stdio", "rpath"}
    assert problems(tmp_path, "version: 1\npledge: stdio rpth  inett\n") == [
        "p.yaml:2:15: unknown promise 'rpth' in pledge (did you mean 'rpath'?)",
        "p.yaml:2:21: unknown promise 'inett' in pledge (did you mean 'inet'?)",
    ]
    # Quoted, and in list form: each word still has its own column.
    assert problems(tmp_path, "version: 1\npledge: 'stdio xyzzy'\n") == [
        "p.yaml:2:16: unknown promise 'xyzzy' in pledge"
    ]
    assert problems(tmp_path, "version: 1\npledge:\n  - stdio\n  - rpat\n") == [
        "p.yaml:4:5: unknown promise 'rpat' in pledge (did you mean 'rpath'?)"
    ]
    # Non-ASCII before the word on the same line: columns count characters.
    assert problems(tmp_path, "version: 1\nname: é\npledge: [\"é\", 'x é']\n") == [
        "p.yaml:2:7: name 'é' must match [a-z][a-z0-9-]* (e.g. 'data-agent')",
        "p.yaml:3:11: unknown promise 'é' in pledge",
        "p.yaml:3:16: unknown promise 'x' in pledge",
        "p.yaml:3:18: unknown promise 'é' in pledge",
    ]


def test_promise_names_come_from_the_promise_table() -> None:
    names = schema.promise_names()
    assert {"stdio", "rpath", "inet", "exec", "prot_exec"} <= names
    assert "vault:read" not in names


VAULT = "resources: {vault: {type: dir, path: vault}, api: {type: http, url: 'https://x.org/'}}\n"


def test_capabilities_need_a_declared_resource_and_a_known_right(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir()
    p = load(tmp_path, "version: 1\npledge: stdio vault:read api:get\n" + VAULT)
    assert p.pledge == {"stdio"}
    assert p.capabilities == {("vault", "read"), ("api", "get")}
    assert problems(
        tmp_path, "version: 1\npledge: stdio vaul:read vault:get api:read\n" + VAULT
    ) == [
        "p.yaml:2:15: capability 'vaul:read' names resource 'vaul', which is not declared under "
        "'resources' (did you mean 'vault'?)",
        "p.yaml:2:25: 'get' is not a right of dir resource 'vault'; rights: create, delete, "
        "list, read, write",
        "p.yaml:2:35: 'read' is not a right of http resource 'api' (did you mean 'head'?); "
        "rights: delete, get, head, patch, post, put",
    ]
    assert problems(tmp_path, "version: 1\npledge: notes:read\n") == [
        "p.yaml:2:9: capability 'notes:read' names resource 'notes', which is not declared under "
        "'resources'"
    ]


def test_a_broken_resource_does_not_cascade_into_its_capabilities(tmp_path: Path) -> None:
    text = "version: 1\npledge: vault:read\nresources: {vault: {type: dir, path: missing}}\n"
    assert problems(tmp_path, text) == [
        f"p.yaml:3:38: path '{tmp_path}/missing' of resource 'vault' does not exist"
    ]


def test_execpromises_needs_exec_and_takes_no_capabilities(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir()
    # (execpromises wider than pledge are an error too: tests/test_hardening.py)
    p = load(tmp_path, "version: 1\npledge: stdio rpath exec\nexecpromises: stdio rpath\n")
    assert p.execpromises == frozenset({"stdio", "rpath"})
    assert problems(tmp_path, "version: 1\npledge: stdio\nexecpromises: stdio\n") == [
        "p.yaml:3:1: execpromises needs the promise 'exec' in pledge (without it nothing is "
        "executed)"
    ]
    text = "version: 1\npledge: stdio exec vault:read\nexecpromises: stdio vault:read\n" + VAULT
    assert problems(tmp_path, text) == [
        "p.yaml:3:21: capability promise 'vault:read' is not allowed in execpromises; "
        "capabilities belong in 'pledge'"
    ]


def test_network_needs_inet(tmp_path: Path) -> None:
    p = load(
        tmp_path, "version: 1\npledge: stdio inet\nnetwork: {connect: [443, 80, 443], bind: [0]}\n"
    )
    assert p.network is not None
    assert (p.network.connect, p.network.bind) == ((443, 80), (0,))
    assert problems(tmp_path, "version: 1\npledge: stdio\nnetwork: {connect: [443]}\n") == [
        "p.yaml:3:1: network rules need the promise 'inet' in pledge (add it, or remove 'network')"
    ]
    assert problems(
        tmp_path, "version: 1\npledge: inet\nnetwork: {connect: [65536, -1, http], listen: [1]}\n"
    ) == [
        "p.yaml:3:21: a port in network.connect must be between 0 and 65535, not 65536",
        "p.yaml:3:28: a port in network.connect must be between 0 and 65535, not -1",
        "p.yaml:3:32: a port in network.connect must be a whole number in decimal, not a string",
        "p.yaml:3:39: unknown key 'listen' in network; allowed: connect, bind",
    ]


def test_init_bounds_with_lock_agent(tmp_path: Path) -> None:
    text = "version: 1\nlock: agent\ninit: {timeout: 2m, pledge: stdio rpath}\npledge: stdio\n"
    p = load(tmp_path, text)
    assert (p.init_timeout, p.init_pledge, p.pledge) == (
        120.0,
        frozenset({"stdio", "rpath"}),
        frozenset({"stdio"}),
    )
    # The init filter stays under the lock filter: pledge can never exceed it.
    assert problems(tmp_path, text.replace("pledge: stdio\n", "pledge: stdio inet\n")) == [
        "p.yaml:3:29: init.pledge must include every promise of pledge; missing: inet"
    ]
    assert problems(
        tmp_path, "version: 1\nlock: agent\ninit: {timeout: never, pledge: stdio x:y, delay: 1}\n"
    ) == [
        "p.yaml:3:17: init.timeout: 'never' is not a duration: expected a number of seconds or a "
        "number with a unit (ms, s, m, h, d), e.g. 10s, 5m, 1h30m",
        "p.yaml:3:38: capability promise 'x:y' is not allowed in init.pledge; capabilities "
        "belong in 'pledge'",
        "p.yaml:3:43: unknown key 'delay' in init; allowed: timeout, pledge",
    ]


# --- unveil ----------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_policy_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_dir = tmp_path / "conf"
    (policy_dir / "data").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    path = policy_dir / "agent.yaml"
    path.write_text(
        "version: 1\nunveil: {data/: rw, ../shared: r}\n"
        "resources: {box: {type: dir, path: ./data}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the cwd must not matter
    p = pol.load_policy("../conf/agent.yaml")
    assert [u.path for u in p.unveil] == [str(policy_dir / "data"), str(tmp_path / "shared")]
    assert p.resources["box"].path == str(policy_dir / "data")
    assert p.source == str(path)
    # The same text in another directory resolves there, where 'data' does not exist;
    # problems name the file as it was given.
    (elsewhere / "p.yaml").write_text(path.read_text())
    with pytest.raises(PolicyError) as info:
        pol.load_policy("p.yaml")
    assert [str(x) for x in info.value.problems] == [
        f"p.yaml:2:10: unveil path '{elsewhere}/data' does not exist; create it, fix the path, "
        "or write {perms: ..., optional: true}",
        f"p.yaml:3:36: path '{elsewhere}/data' of resource 'box' does not exist",
    ]


def test_missing_paths_need_optional(tmp_path: Path) -> None:
    text = (
        "version: 1\nunveil:\n  /nonexistent/x: {perms: r, optional: true}\n  /usr: {perms: rx}\n"
    )
    p = load(tmp_path, text)
    assert p.unveil == (
        Unveil("/nonexistent/x", frozenset("r"), optional=True),
        Unveil("/usr", frozenset("rx")),
    )
    assert problems(tmp_path, "version: 1\nunveil:\n  /nonexistent/x: r\n") == [
        "p.yaml:3:3: unveil path '/nonexistent/x' does not exist; create it, fix the path, or "
        "write {perms: ..., optional: true}"
    ]
    assert problems(
        tmp_path, "version: 1\nunveil: {/nonexistent/x: {perms: r, optional: false}}\n"
    ) == [
        "p.yaml:2:10: unveil path '/nonexistent/x' does not exist; create it, fix the path, or "
        "write {perms: ..., optional: true}"
    ]


def test_unveil_permissions(tmp_path: Path) -> None:
    p = load(tmp_path, "version: 1\nunveil: {/usr: rx, /tmp: '', /etc: rwxc}\n")
    assert [u.perms for u in p.unveil] == [frozenset("rx"), frozenset(), frozenset("rwxc")]
    assert problems(
        tmp_path,
        "version: 1\nunveil:\n  /usr: rxz\n  /tmp:\n  /etc: {perms: rq, optionl: true}\n  /var: "
        "{optional: true}\n  /opt: [r]\n",
    ) == [
        "p.yaml:3:9: unknown permission 'z' for '/usr': use any of r (read) w (write) x "
        "(execute) c (create/remove)",
        "p.yaml:4:8: permissions of '/tmp' are missing (write \"\" for visible, no rights)",
        "p.yaml:5:17: unknown permission 'q' for '/etc': use any of r (read) w (write) x "
        "(execute) c (create/remove)",
        "p.yaml:5:21: unknown key 'optionl' in unveil '/etc' (did you mean 'optional'?); "
        "allowed: perms, optional",
        "p.yaml:6:9: unveil '/var' is missing the required key 'perms'",
        "p.yaml:7:9: permissions of '/opt' must be a string, not a list",
    ]


def test_unveil_duplicates_after_normalisation(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    p = load(tmp_path, "version: 1\nunveil: {d: r, /usr: rx}\n")
    assert [u.path for u in p.unveil] == [str(tmp_path / "d"), "/usr"]
    assert problems(
        tmp_path, f"version: 1\nunveil:\n  d: r\n  ./d/: rw\n  {tmp_path}/x/../d: c\n"
    ) == [
        f"p.yaml:4:3: duplicate unveil path '{tmp_path}/d' (also 'd' at line 3)",
        f"p.yaml:5:3: duplicate unveil path '{tmp_path}/d' (also 'd' at line 3)",
    ]
    assert problems(tmp_path, "version: 1\nunveil:\n  /usr: r\n  /usr: rx\n") == [
        "p.yaml:4:3: duplicate key '/usr' in unveil (first at line 3)"
    ]


def test_unveil_keeps_symlinks_unresolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    p = load(tmp_path, "version: 1\nunveil: {link: r}\n")
    assert p.unveil[0].path == str(tmp_path / "link")
    assert problems(tmp_path, "version: 1\nunveil: {dangling: r}\n") == [
        f"p.yaml:2:10: unveil path '{tmp_path}/dangling' does not exist; create it, fix the path, "
        "or write {perms: ..., optional: true}"
    ]


def test_unveil_path_forms_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "version: 1\nunveil: {~/x: r, '': r}\n") == [
        "p.yaml:2:10: an unveil path '~/x': '~' is not expanded; write the absolute path",
        "p.yaml:2:18: an unveil path is empty; write '.' for the policy's directory",
    ]
    assert load(tmp_path, "version: 1\nunveil: {.: r}\n").unveil[0].path == str(tmp_path)


# --- resources -------------------------------------------------------------------------


def test_resources(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    ok = (
        "version: 1\nresources:\n  d: {type: dir, path: dir}\n"
        "  h: {type: http, url: 'http://localhost:8080/api', headers: {X-Key: secret}}\n"
    )
    p = load(tmp_path, ok)
    assert p.resources["d"].path == str(tmp_path / "dir")
    assert p.resources["h"].url == "http://localhost:8080/api"
    assert dict(p.resources["h"].headers) == {"X-Key": "secret"}
    bad = (
        "version: 1\nresources:\n"
        "  a: {type: dir, path: file}\n"
        "  b: {type: dir}\n"
        "  c: {type: ftp}\n"
        "  d: {path: dir}\n"
        "  e: {type: http, url: 'https://user:pw@x.org/'}\n"
        "  f: {type: http, url: 'https:///nohost'}\n"
        "  g: {type: http, url: 'https://x.org/?q=1'}\n"
        "  h: {type: http, url: 'https://x.org:99999/'}\n"
        "  i: {type: http, url: 'https://x.org/', headers: {Bad Name: x, A: 'env:1X'}}\n"
        "  j: {type: http, url: 'https://x.org/', timeout: 0, max_bytes: 0}\n"
        "  k: {type: dir, path: dir, url: 'https://x.org/'}\n"
        "  Big: {type: dir, path: dir}\n"
    )
    assert problems(tmp_path, bad) == [
        f"p.yaml:3:24: path '{tmp_path}/file' of resource 'a' is not a directory",
        "p.yaml:4:6: resource 'b' is missing the required key 'path'",
        "p.yaml:5:13: type of resource 'c' must be one of dir, http, agent, not 'ftp'",
        "p.yaml:6:6: resource 'd' needs a 'type': one of dir, http, agent",
        "p.yaml:7:24: url 'https://user:pw@x.org/' of resource 'e' must not contain credentials; "
        "put them in 'headers' as env:NAME",
        "p.yaml:8:24: url 'https:///nohost' of resource 'f' has no host",
        "p.yaml:9:24: url 'https://x.org/?q=1' of resource 'g' must be a prefix without '?query' "
        "or '#fragment'",
        "p.yaml:10:24: url 'https://x.org:99999/' of resource 'h' is malformed: Port out of "
        "range 0-65535",
        "p.yaml:11:52: 'Bad Name' is not a valid HTTP header name",
        "p.yaml:11:68: header 'A': 'env:1X': after 'env:' write an environment variable name, "
        "e.g. env:API_KEY",
        "p.yaml:12:51: timeout of 'j' must be more than 0 seconds, not 0",
        "p.yaml:12:65: max_bytes of 'j' must be at least 1 bytes, not 0",
        "p.yaml:13:29: unknown key 'url' in resource 'k'; allowed: type, path",
        "p.yaml:14:3: resource name 'Big' must match [a-z][a-z0-9_-]*",
    ]


# --- YAML itself ------------------------------------------------------------------------


def test_yaml_syntax_error_is_one_problem_at_the_parser_mark(tmp_path: Path) -> None:
    assert problems(tmp_path, "version: 1\npledge: [stdio\n") == [
        "p.yaml:3:1: YAML syntax error: did not find expected ',' or ']' while parsing a flow "
        "sequence"
    ]
    assert problems(tmp_path, "version: 1\n  bad: indent\n") == [
        "p.yaml:2:6: YAML syntax error: mapping values are not allowed in this context"
    ]
    assert problems(tmp_path, "version: 1\n---\nversion: 1\n") == [
        "p.yaml:2:1: YAML syntax error: but found another document expected a single document in "
        "the stream"
    ]


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    assert problems(tmp_path, "") == [
        "p.yaml:1:1: the policy is empty; it needs at least 'version: 1'"
    ]
    assert problems(tmp_path, "# only a comment\n") == [
        "p.yaml:1:1: the policy is empty; it needs at least 'version: 1'"
    ]
    assert problems(tmp_path, "- version: 1\n") == [
        "p.yaml:1:1: the policy must be a mapping (key: value), not a list"
    ]
    assert problems(tmp_path, "\n\nversion 1\n") == [
        "p.yaml:3:1: the policy must be a mapping (key: value), not a string"
    ]


def test_aliases_and_anchors_are_refused(tmp_path: Path) -> None:
    laughs = (
        "version: 1\n"
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    )
    found = problems(tmp_path, laughs)
    assert found[:3] == [
        "p.yaml:2:4: YAML anchors (&name) are not allowed",
        "p.yaml:3:4: YAML anchors (&name) are not allowed",
        "p.yaml:3:8: YAML aliases (*name) are not allowed",
    ]
    assert len(found) == 2 + 9 + 9
    assert problems(tmp_path, "version: 1\npledge: &p stdio\n") == [
        "p.yaml:2:9: YAML anchors (&name) are not allowed"
    ]


def test_duplicate_keys_at_every_level(tmp_path: Path) -> None:
    assert problems(
        tmp_path,
        "version: 1\npledge: stdio\nlimits: {files: 1, files: 2}\npledge: rpath\n"
        "env: {set: {A: '1', A: '2'}}\n",
    ) == [
        "p.yaml:3:20: duplicate key 'files' in limits (first at line 3)",
        "p.yaml:4:1: duplicate key 'pledge' in the policy (first at line 2)",
        "p.yaml:5:21: duplicate key 'A' in env.set (first at line 5)",
    ]


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    filler = "# " + "x" * 1000 + "\n"
    path.write_text("version: 1\n" + filler * 1000)  # just under 1 MiB: accepted
    assert pol.load_policy(path).name == "huge"
    path.write_text("version: 1\n" + filler * 1100)
    with pytest.raises(PolicyError) as info:
        pol.load_policy(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:1:1: the file is larger than 1048576 bytes (1 MiB)"
    ]


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    assert problems(tmp_path, "version: 1\nx: " + "[" * 17 + "]" * 17 + "\n") == [
        "p.yaml:2:19: nesting deeper than 16 levels; a policy needs at most 4"
    ]


def test_not_utf8_and_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        pol.load_policy(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:2:10: the file is not UTF-8 text"]
    assert problems(tmp_path, "version: 1\nname: a\x07b\n") == [
        "p.yaml:2:8: YAML syntax error: control characters are not allowed"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        pol.load_policy(tmp_path / "none.yaml")
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path}/none.yaml:1:1: cannot read the policy: No such file or directory"
    ]


# --- many problems at once, and `sandbox check` -----------------------------------------


BROKEN = [
    "3:15: unknown promise 'rpth' in pledge (did you mean 'rpath'?)",
    "3:20: capability 'vaul:read' names resource 'vaul', which is not declared under 'resources'",
    "4:1: execpromises needs the promise 'exec' in pledge (without it nothing is executed)",
    "6:9: unknown permission 'z' for '/usr': use any of r (read) w (write) x (execute) c "
    "(create/remove)",
    f"7:3: unveil path '{DATA}/does-not-exist' does not exist; create it, fix the path, or write "
    "{perms: ..., optional: true}",
    "8:1: network rules need the promise 'inet' in pledge (add it, or remove 'network')",
    "9:30: limits.cpu: 'soon' is not a duration: expected a number of seconds or a number with a "
    "unit (ms, s, m, h, d), e.g. 10s, 5m, 1h30m",
    "10:12: violation must be one of kill, errno, log, not 'explode'",
]


def test_every_problem_is_reported_at_once() -> None:
    path = str(DATA / "broken.yaml")
    with pytest.raises(PolicyError) as info:
        pol.load_policy(path)
    assert [str(p) for p in info.value.problems] == [f"{path}:{line}" for line in BROKEN]
    assert info.value.exit_status == 2


def test_check_files() -> None:
    good, broken = str(DATA / "data.yaml"), str(DATA / "broken.yaml")
    assert pol.check_files([good]) == (0, [])
    status, lines = pol.check_files([broken, good, "/nonexistent.yaml"])
    assert status == 2
    assert lines == [f"{broken}:{line}" for line in BROKEN] + [
        "/nonexistent.yaml:1:1: cannot read the policy: No such file or directory"
    ]
    assert pol.check_files([]) == (2, ["sandbox check: give at least one policy file"])


# --- narrowing on the command line --------------------------------------------------------


def test_inline_policy_from_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a:b").mkdir()
    monkeypatch.chdir(tmp_path)
    p = narrow.narrow(None, "stdio rpath", ["/usr:rx", "a:b:rw", "/tmp:"])
    assert (p.name, p.command, p.pledge) == ("inline", (), frozenset({"stdio", "rpath"}))
    assert p.unveil == (
        Unveil("/usr", frozenset("rx")),
        Unveil(str(tmp_path / "a:b"), frozenset("rw")),  # split at the last ':', cwd-relative
        Unveil("/tmp", frozenset()),
    )
    refused = [
        ("stdio rpth", [], "-p: unknown promise 'rpth' (did you mean 'rpath'?)"),
        (
            "stdio vault:read",
            [],
            "-p: capability promise 'vault:read' needs a policy file declaring resource 'vault'",
        ),
        (
            None,
            [],
            "nothing is unveiled: give a POLICY file, or paths with -v (e.g. -v /usr:rx); "
            "without them the command cannot even be executed",
        ),
        ("stdio", [":r"], "-v ':r': expected PATH or PATH:PERMS, e.g. -v /usr:rx"),
        ("stdio", ["/usr:rz"], "-v '/usr:rz': unknown permission 'z'; use any of r w x c"),
        ("stdio", ["/nonexistent:r"], "-v '/nonexistent:r': '/nonexistent' does not exist"),
        ("stdio", ["/usr:r", "/usr/:x"], "-v: '/usr' is given twice"),
    ]
    for promises, unveils, message in refused:
        with pytest.raises(UsageError) as info:
            narrow.narrow(None, promises, unveils)
        assert str(info.value) == message
        assert info.value.exit_status == 2
    # SPEC section 3: without a policy and without -p the promises are 'stdio rpath', and
    # -v PATH without letters means r.
    default = narrow.narrow(None, None, ["/usr", "@devices"])
    assert default.pledge == frozenset({"stdio", "rpath"})
    assert default.unveil[0] == Unveil("/usr", frozenset("r"))
    assert all(u.perms == frozenset("r") for u in default.unveil)


@pytest.fixture
def base() -> Policy:
    return pol.load_policy(DATA / "data.yaml")


def test_narrowing_a_policy(base: Policy) -> None:
    vault = str(DATA / "vault")
    # Nothing given: the policy as it is.
    assert narrow.narrow(base, None, []) == base
    p = narrow.narrow(base, "stdio rpath vault:read", [f"{vault}/notes:r", "/usr/bin:x"])
    assert p.pledge == {"stdio", "rpath"}
    assert p.capabilities == {("vault", "read")}  # vault:write and llm:post dropped
    # -v narrows per path: each given path replaces the entry that decides it (the closest
    # enclosing one), in place; the others stay as they are (/etc/ssl).
    assert p.unveil == (
        Unveil("/usr/bin", frozenset("x")),
        Unveil(f"{vault}/notes", frozenset("r")),
        Unveil("/etc/ssl", frozenset("r"), True),
    )
    assert (p.name, p.command, p.resources, p.limits) == (
        base.name,
        base.command,
        base.resources,
        base.limits,
    )
    # -p without capabilities drops them all; -v alone keeps the pledge.
    assert narrow.narrow(base, "stdio", []).capabilities == frozenset()
    only_v = narrow.narrow(base, None, ["/usr:r"])
    assert (only_v.pledge, only_v.capabilities) == (base.pledge, base.capabilities)
    assert only_v.unveil == (Unveil("/usr", frozenset("r")), *base.unveil[1:])
    # Two paths within one entry both replace it.
    two = narrow.narrow(base, None, ["/usr/bin:rx", "/usr/lib:r"])
    assert [u.path for u in two.unveil] == ["/usr/bin", "/usr/lib", vault, "/etc/ssl"]


def test_widening_a_policy_is_refused(base: Policy) -> None:
    vault = str(DATA / "vault")
    refused = [
        (
            "stdio proc",
            [],
            "-p: promise 'proc' is not in the pledge of policy 'data'; -p can only narrow it "
            "(its pledge: cpath exec inet rpath stdio wpath llm:post vault:read vault:write)",
        ),
        (
            "stdio vault:delete",
            [],
            "-p: 'vault:delete' is not in the pledge of policy 'data'; -p can only narrow it "
            "(its pledge: cpath exec inet rpath stdio wpath llm:post vault:read vault:write)",
        ),
        (
            "stdio",
            ["/usr:rwx"],
            "-v '/usr' asks for 'w', but policy 'data' gives '/usr' only 'rx'; -v can only "
            "narrow it",
        ),
        (
            "stdio",
            [f"{vault}/notes:rx"],
            f"-v '{vault}/notes' asks for 'x', but policy 'data' gives '{vault}' only 'rwc'; -v "
            "can only narrow it",
        ),
        (
            "stdio",
            ["/etc:r"],
            f"-v '/etc' is outside what policy 'data' unveils (/usr, {vault}, /etc/ssl); -v can "
            "only narrow it",
        ),
        (
            "stdio",
            ["/:r"],
            f"-v '/' is outside what policy 'data' unveils (/usr, {vault}, /etc/ssl); -v can only "
            "narrow it",
        ),
    ]
    for promises, unveils, message in refused:
        with pytest.raises(UsageError) as info:
            narrow.narrow(base, promises, unveils)
        assert message in str(info.value)


def test_closest_unveil_decides(tmp_path: Path) -> None:
    (tmp_path / "pub" / "secret").mkdir(parents=True)
    (tmp_path / "pubx").mkdir()
    base = load(tmp_path, "version: 1\npledge: stdio rpath\nunveil: {pub: rw, pub/secret: ''}\n")
    assert narrow.narrow(base, None, [f"{tmp_path}/pub:rw"]).unveil[0].perms == frozenset("rw")
    with pytest.raises(UsageError, match="only 'no rights'"):
        narrow.narrow(base, None, [f"{tmp_path}/pub/secret:r"])
    # A common prefix is not containment: pub does not cover pubx.
    with pytest.raises(UsageError, match="is outside what policy 'p' unveils"):
        narrow.narrow(base, None, [f"{tmp_path}/pubx:r"])


# --- schema and JSON output -----------------------------------------------------------------


def test_shipped_schema_is_generated_from_the_tables() -> None:
    shipped = json.loads(SCHEMA_FILE.read_text())
    assert shipped == schema.schema(), (
        "sandbox/policy/schema.json is stale; regenerate it with: python -c 'import json,"
        "sandbox.policy.schema as s; print(json.dumps(s.schema(), indent=2))'"
        " > sandbox/policy/schema.json"
    )


def test_schema_matches_the_loader_tables() -> None:
    s = json.loads(SCHEMA_FILE.read_text())
    props = s["properties"]
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(props) == set(schema.TOP_LEVEL_KEYS)
    assert s["required"] == ["version"]
    assert s["additionalProperties"] is False
    nested = {
        "init": schema.INIT_KEYS,
        "network": schema.NETWORK_KEYS,
        "limits": schema.LIMIT_KEYS,
        "env": schema.ENV_KEYS,
    }
    for key, table in nested.items():
        assert set(props[key]["properties"]) == set(table), key
        assert props[key]["additionalProperties"] is False
    entry = props["unveil"]["additionalProperties"]["oneOf"][1]
    assert set(entry["properties"]) == set(schema.UNVEIL_ENTRY_KEYS)
    kinds = props["resources"]["additionalProperties"]["oneOf"]
    assert {k["properties"]["type"]["const"]: set(k["properties"]) for k in kinds} == {
        t: set(table) for t, table in schema.RESOURCE_KEYS.items()
    }
    assert props["lock"]["enum"] == ["exec", "agent"] == list(schema.LOCK_MODES)
    assert props["violation"]["enum"] == ["kill", "errno", "log"] == list(schema.VIOLATION_MODES)
    assert props["qos"]["enum"] == list(schema.QOS_LEVELS)
    assert s["$defs"]["perms"]["pattern"] == "^[rwxc]*$"
    # The promise pattern admits known promises and capabilities, and nothing else.
    import re

    word = re.compile(s["$defs"]["promises"]["oneOf"][1]["items"]["pattern"])
    line = re.compile(s["$defs"]["promises"]["oneOf"][0]["pattern"])
    assert word.match("rpath") and word.match("vault:read") and not word.match("rpth")
    assert line.match("stdio rpath vault:read") and not line.match("stdio rpth")


def test_unknown_key_in_any_table_is_refused(tmp_path: Path) -> None:
    # What the schema's additionalProperties: false says, the loader enforces, table by table.
    for section in ("init", "network", "limits", "env"):
        text = f"version: 1\nlock: agent\npledge: inet\n{section}: {{zzz: 1}}\n"
        assert f"unknown key 'zzz' in {section}" in problems(tmp_path, text)[-1]


def test_policy_to_dict_is_json_and_hides_literal_secrets(base: Policy) -> None:
    d = model.policy_to_dict(base)
    assert json.loads(json.dumps(d)) == d
    assert d["pledge"] == ["cpath", "exec", "inet", "rpath", "stdio", "wpath"]
    assert d["capabilities"] == ["llm:post", "vault:read", "vault:write"]
    assert d["unveil"][0] == {"path": "/usr", "perms": "rx", "optional": False}
    assert d["resources"]["llm"]["headers"] == {
        "Authorization": "env:LLM_API_KEY",
        "X-Client": "***",
    }
    assert d["limits"]["memory"] == 512 * 2**20
    assert d["sha256"] == base.sha256


def _schema_errors(value: Any, s: Any, root: Any) -> list[str]:
    """The subset of JSON Schema that schema.json uses, enough to show it accepts and refuses
    what the loader does (jsonschema is not a dependency)."""
    import re

    if "$ref" in s:
        name = str(s["$ref"]).rsplit("/", 1)[1]
        return _schema_errors(value, root["$defs"][name], root)
    if "oneOf" in s:
        matching = [o for o in s["oneOf"] if not _schema_errors(value, o, root)]
        return [] if len(matching) == 1 else [f"{value!r}: matches {len(matching)} of oneOf"]
    errors: list[str] = []
    types: dict[str, Any] = {"string": str, "integer": int, "number": (int, float),
                             "boolean": bool, "object": dict, "array": list}  # fmt: skip
    if "type" in s:
        names = s["type"] if isinstance(s["type"], list) else [s["type"]]
        ok = any(
            isinstance(value, types[n]) and not (n != "boolean" and isinstance(value, bool))
            for n in names
        )
        if not ok:
            return [f"{value!r} is not {names}"]
    if "const" in s and value != s["const"]:
        errors.append(f"{value!r} != {s['const']!r}")
    if "enum" in s and value not in s["enum"]:
        errors.append(f"{value!r} not in enum")
    if "pattern" in s and isinstance(value, str) and not re.search(str(s["pattern"]), value):
        errors.append(f"{value!r} does not match {s['pattern']}")
    if isinstance(value, int) and "minimum" in s and value < s["minimum"]:
        errors.append(f"{value} < minimum")
    if isinstance(value, int) and "maximum" in s and value > s["maximum"]:
        errors.append(f"{value} > maximum")
    if isinstance(value, list) and "items" in s:
        for item in value:
            errors += _schema_errors(item, s["items"], root)
    if isinstance(value, dict):
        props = s.get("properties", {})
        for key in s.get("required", []):
            if key not in value:
                errors.append(f"missing {key}")
        for key, item in value.items():
            if "propertyNames" in s:
                errors += _schema_errors(key, s["propertyNames"], root)
            if key in props:
                errors += _schema_errors(item, props[key], root)
            elif s.get("additionalProperties") is False:
                errors.append(f"unknown key {key}")
            elif isinstance(s.get("additionalProperties"), dict):
                errors += _schema_errors(item, s["additionalProperties"], root)
    return errors


def test_schema_accepts_the_valid_example_and_refuses_the_broken_one() -> None:
    import yaml

    s = json.loads(SCHEMA_FILE.read_text())
    good = yaml.safe_load((DATA / "data.yaml").read_text())
    assert _schema_errors(good, s, s) == []
    broken = yaml.safe_load((DATA / "broken.yaml").read_text())
    assert _schema_errors(broken, s, s) == [
        "'stdio rpth vaul:read': matches 0 of oneOf",  # the unknown promise 'rpth'
        "'rxz': matches 0 of oneOf",
        "'soon': matches 0 of oneOf",
        "'explode' not in enum",
    ]


def test_sandbox_check_command_exit_status() -> None:
    good, broken = str(DATA / "data.yaml"), str(DATA / "broken.yaml")
    ok = subprocess.run([sys.executable, "-m", "sandbox", "check", good], capture_output=True)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, b"", b"")
    bad = subprocess.run(
        [sys.executable, "-m", "sandbox", "check", good, broken], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [f"{broken}:{line}" for line in BROKEN]


def test_importing_the_loader_stays_cheap() -> None:
    code = (
        "import sys, sandbox.policy.loader; "
        "print(sorted({'typer', 'sandbox.enforce.promises'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # promise names are read lazily, on first use
