"""The command line of SPEC section 3, run as real processes: exit statuses of `run`, the
violation line and the three penalties, policy and usage errors (exit 2, nothing started),
-p/-v alone and as narrowing of a policy file, the audit records of a run, and the other
commands: check, explain, promises, doctor, audit verify, audit show.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from progs.snippets import py, python_policy

from sandbox.parent.audit import verify
from sandbox.testing import SANDBOX, Result, run_sandboxed, write_policy

GUARD = 60.0  # seconds: a guard against a hung command, never a timing assertion
REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "sandbox")
SPEC_PROMISES = [
    *("stdio", "rpath", "wpath", "cpath", "dpath", "tmppath", "flock", "fattr", "chown"),
    *("inet", "unix", "dns", "sendfd", "recvfd", "proc", "thread", "exec", "prot_exec"),
    *("id", "tty", "getpw", "settime", "vminfo", "ps"),
]
LOCATED = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): \S")


def policy(name: str = "cli", pledge: str = "stdio rpath", **extra: Any) -> dict[str, Any]:
    return python_policy(name, pledge, **extra)


def sandbox(
    *args: str, cwd: Path | None = None, exe: list[str] = SANDBOX
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=GUARD
    )


def kinds(r: Result) -> list[str]:
    return [rec["kind"] for rec in r.records]


# --------------------------------------------------------------------------- exit statuses


@pytest.mark.parametrize("code", [0, 7])
def test_exit_status_is_the_agents(tmp_path: Path, code: int) -> None:
    r = run_sandboxed(py(f"raise SystemExit({code})"), policy=policy(), workdir=tmp_path)
    assert (r.status, r.stderr) == (code, ""), r
    assert r.of_kind("exit")[0]["status"] == code


def test_exit_status_of_a_signal_is_128_plus_n(tmp_path: Path) -> None:
    # Without 'proc', a signal to oneself is still allowed (stdio: kill of one's own pid).
    code = "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('survived')"
    r = run_sandboxed(py(code), policy=policy(), workdir=tmp_path)
    assert r.status == 128 + signal.SIGTERM == 143, r
    assert r.stdout == "" and r.violations == [], r
    assert r.of_kind("exit")[0]["signal"] == signal.SIGTERM


# --------------------------------------------------------------------------- violations

# An inet socket (needs 'inet'), then something allowed, each reported on stdout.
SOCKET = """
import errno, socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    print("socket: ok", flush=True)
except OSError as e:
    print("socket:", errno.errorcode[e.errno], flush=True)
print("after:", open("/usr/lib/os-release").read() != "", flush=True)
"""
SOCKET_CALL = "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0)"


def test_violation_kill_exits_159_with_the_spec_line(tmp_path: Path) -> None:
    r = run_sandboxed(py(SOCKET), policy=policy("netless"), workdir=tmp_path)
    assert r.status == 159, r
    assert r.stdout == "", "the agent must not go on after a kill"
    pid = r.of_kind("start")[0]["pid"]
    assert r.stderr.splitlines() == [
        f"sandbox: netless[{pid}]: pledge violation: {SOCKET_CALL} needs 'inet'"
    ], r
    (v,) = r.violations
    assert (v["pid"], v["syscall"], v["promise"], v["action"]) == (pid, "socket", "inet", "kill")
    assert v["args"] == "AF_INET, SOCK_STREAM|SOCK_CLOEXEC, 0"
    assert kinds(r) == ["start", "lock", "violation", "exit"]


def test_the_same_call_is_allowed_when_promised(tmp_path: Path) -> None:
    r = run_sandboxed(py(SOCKET), policy=policy("net", "stdio rpath inet"), workdir=tmp_path)
    assert (r.status, r.stdout) == (0, "socket: ok\nafter: True\n"), r
    assert r.violations == []


def test_violation_errno_fails_the_call_and_the_agent_goes_on(tmp_path: Path) -> None:
    r = run_sandboxed(py(SOCKET), policy=policy("soft", violation="errno"), workdir=tmp_path)
    assert (r.status, r.stdout) == (0, "socket: EPERM\nafter: True\n"), r
    assert "pledge violation" not in r.stderr
    (v,) = r.violations
    assert (v["syscall"], v["promise"], v["action"]) == ("socket", "inet", "errno")


def test_violation_log_lets_the_call_proceed(tmp_path: Path) -> None:
    r = run_sandboxed(py(SOCKET), policy=policy("learn", violation="log"), workdir=tmp_path)
    assert (r.status, r.stdout) == (0, "socket: ok\nafter: True\n"), r
    (v,) = r.violations
    assert (v["syscall"], v["promise"], v["action"]) == ("socket", "inet", "log")


BPF = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("bpf returned", libc.syscall(321, 0, 0, 0), ctypes.get_errno(), flush=True)
"""


# Under errno and log a never-allowed call fails with EPERM instead (issue 9):
# tests/test_messages.py::test_never_allowed_fails_with_eperm_under_errno_and_log.
@pytest.mark.parametrize("mode", ["kill"])
def test_never_allowed_call_is_killed_under_kill(tmp_path: Path, mode: str) -> None:
    r = run_sandboxed(py(BPF), policy=policy("never", violation=mode), workdir=tmp_path)
    assert r.status == 159, r
    assert r.stdout == "", r
    pid = r.of_kind("start")[0]["pid"]
    line = re.compile(rf"^sandbox: never\[{pid}\]: pledge violation: bpf\(.*\) is never allowed$")
    assert [ln for ln in r.stderr.splitlines() if line.match(ln)], r
    (v,) = r.violations
    assert (v["syscall"], v["promise"], v["action"]) == ("bpf", None, "kill")


# --------------------------------------------------------------------------- policy errors

BROKEN = """\
version: 1
name: broken
pledge: stdio rpth
unveil:
  /usr: rxz
limits: {cpu: soon}
violation: explode
"""


def test_bad_policy_exits_2_with_every_error_located_and_starts_nothing(tmp_path: Path) -> None:
    pol = tmp_path / "broken.yaml"
    pol.write_text(BROKEN)
    marker = tmp_path / "ran"
    log = tmp_path / "audit.jsonl"
    p = sandbox("run", str(pol), "--audit-log", str(log), "--", "/usr/bin/touch", str(marker))
    assert p.returncode == 2, p
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    matches = [LOCATED.match(ln) for ln in lines]
    assert all(matches), lines
    assert {m["file"] for m in matches if m} == {str(pol)}
    assert sorted(int(m["line"]) for m in matches if m) == [3, 5, 6, 7], lines
    assert not marker.exists() and not log.exists(), "nothing may start for a bad policy"


def test_check_is_silent_on_a_good_policy_and_lists_errors_of_a_bad_one(tmp_path: Path) -> None:
    good = write_policy(tmp_path, policy("good"), "good")
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN)
    ok = sandbox("check", good)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", ""), ok
    ko = sandbox("check", good, str(bad))
    assert (ko.returncode, ko.stdout) == (2, ""), ko
    assert len(ko.stderr.splitlines()) == 4 and all(
        ln.startswith(f"{bad}:") for ln in ko.stderr.splitlines()
    ), ko.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--bogus", "--", "/bin/true"],
        ["run", "--", "/bin/true"],  # neither a policy nor -p
        ["run", "-p"],  # an option without its value
        ["run", "-p", "stdio rpth", "--", "/bin/true"],  # an unknown promise
        ["run", "-p", "stdio", "-v", "/usr:rq", "--", "/bin/true"],  # an unknown permission
        ["frobnicate"],
        ["check"],
    ],
    ids=["unknown-option", "no-policy", "missing-value", "bad-promise", "bad-perm", "cmd", "check"],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    log = tmp_path / "audit.jsonl"
    if args[0] == "run":
        args = [args[0], "--audit-log", str(log), *args[1:]]
    p = sandbox(*args, cwd=tmp_path)
    assert p.returncode == 2, p
    assert p.stderr.strip() != "", "a usage error says what is wrong"
    assert not log.exists()


def test_nonexistent_unveil_path_is_refused_before_start(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    p = sandbox(
        "run", "-p", "stdio", "-v", "/nonexistent-dir:r", "--audit-log", str(log), "--", "/bin/true"
    )
    assert p.returncode in (2, 3), p
    assert "/nonexistent-dir" in p.stderr
    assert not log.exists() or not any(
        json.loads(x)["kind"] == "lock" for x in log.read_text().splitlines()
    )
    # In a policy file it is a located error; marked optional it is fine.
    missing = write_policy(tmp_path, policy(unveil={"/usr": "rx", "/nonexistent-dir": "r"}))
    p = sandbox("run", missing, "--audit-log", str(log), "--", "/bin/true")
    assert p.returncode == 2 and LOCATED.match(p.stderr), p
    optional = write_policy(
        tmp_path,
        policy(unveil={"@system": "rx", "/nonexistent-dir": {"perms": "r", "optional": True}}),
        "optional",
    )
    p = sandbox("run", optional, "--audit-log", str(log), "--", "/bin/true")
    assert p.returncode == 0, p


# --------------------------------------------------------------------------- -p and -v


def test_inline_run_with_promises_and_unveil_alone(tmp_path: Path) -> None:
    log = str(tmp_path / "a.jsonl")
    p = sandbox("run", "-p", "stdio rpath", "-v", "/usr:rx", "--audit-log", log, "--", "ls", "/usr")
    assert p.returncode == 0, p
    assert {"bin", "lib"} <= set(p.stdout.split()), p
    # The other side: what is not unveiled cannot be listed.
    p = sandbox("run", "-p", "stdio rpath", "-v", "/usr:rx", "--audit-log", log, "--", "ls", "/etc")
    assert p.returncode != 0 and "Permission denied" in p.stderr, p
    assert verify(log).ok


def test_flags_narrow_a_policy_file_and_cannot_widen_it(tmp_path: Path) -> None:
    pol = write_policy(tmp_path, policy("narrow", "stdio rpath proc"), "narrow")
    log = str(tmp_path / "a.jsonl")
    fork = py(
        "import os\npid = os.fork()\nif pid == 0: os._exit(0)\nos.waitpid(pid, 0)\nprint('forked')"
    )
    p = sandbox("run", pol, "--audit-log", log, "--", *fork)
    assert (p.returncode, p.stdout) == (0, "forked\n"), p
    # Narrowed: 'proc' is no longer promised, so the same fork is a violation.
    p = sandbox("run", pol, "-p", "stdio rpath", "--audit-log", log, "--", *fork)
    assert p.returncode == 159 and "needs 'proc'" in p.stderr, p
    # Widened: refused before anything starts, naming the promise.
    before = Path(log).read_text()
    p = sandbox("run", pol, "-p", "stdio rpath inet", "--audit-log", log, "--", *fork)
    assert p.returncode == 2 and "'inet'" in p.stderr, p
    p = sandbox("run", pol, "-v", "/etc:r", "--audit-log", log, "--", *fork)
    assert p.returncode == 2 and "/etc" in p.stderr, p
    assert Path(log).read_text() == before, "a refused run writes no record"


# --------------------------------------------------------------------------- audit records


def test_audit_records_of_a_run(tmp_path: Path) -> None:
    pol = write_policy(tmp_path, policy("rec", violation="errno"), "rec")
    r = run_sandboxed(py(SOCKET), policy=pol, workdir=tmp_path)
    assert r.status == 0, r
    assert kinds(r) == ["start", "lock", "violation", "exit"], r.records
    assert [rec["seq"] for rec in r.records] == [1, 2, 3, 4]
    assert {rec["agent"] for rec in r.records} == {"rec"}
    start, lock, violation, exit_ = r.records
    assert start["policy"] == pol
    assert start["policy_sha256"] == hashlib.sha256(Path(pol).read_bytes()).hexdigest()
    assert start["command"][0] == sys.executable
    assert start["enforced"]["seccomp"]["promises"] == ["rpath", "stdio"]
    assert start["enforced"]["landlock"]["fs"] is True
    assert lock["pid"] == start["pid"] == violation["pid"] == exit_["pid"]
    assert set(lock["pledge"].split()) == {"stdio", "rpath"}
    assert lock["unveil"] and all(set(p) <= set("rwxc") for p in lock["unveil"].values())
    assert (violation["syscall"], violation["action"]) == ("socket", "errno")
    assert exit_["status"] == 0
    res = verify(r.log)
    assert res.ok and res.records == 4, res


# --------------------------------------------------------------------------- audit verify/show


def two_agents_log(tmp_path: Path) -> str:
    """One log, two runs: 'alpha' with a violation (errno), 'beta' clean."""
    log = str(tmp_path / "shared.jsonl")
    for name, code in (("alpha", SOCKET), ("beta", "print('hi')")):
        pol = write_policy(tmp_path, policy(name, violation="errno"), name)
        p = sandbox("run", pol, "--audit-log", log, "--", *py(code))
        assert p.returncode == 0, p
    return log


def test_audit_verify_passes_a_log_and_finds_one_flipped_byte(tmp_path: Path) -> None:
    log = two_agents_log(tmp_path)
    ok = sandbox("audit", "verify", log)
    assert ok.returncode == 0 and "7 records" in ok.stdout, ok
    lines = Path(log).read_bytes().split(b"\n")
    # Flip one byte inside record 3 that keeps it valid JSON (a digit of its time).
    at = lines[2].index(b'"time":"') + len(b'"time":"') + 3
    flipped = bytearray(lines[2])
    flipped[at] = ord("0") if flipped[at] != ord("0") else ord("1")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join([*lines[:2], bytes(flipped), *lines[3:]]))
    ko = sandbox("audit", "verify", str(bad))
    assert ko.returncode == 1, ko
    # Record 3's change shows where the chain breaks: record 4 no longer names its hash.
    assert ko.stderr.startswith(f"{bad}:4: "), ko.stderr
    # A byte that breaks the JSON is reported on its own line.
    broken = bytearray(lines[2])
    broken[0] = ord("[")
    bad.write_bytes(b"\n".join([*lines[:2], bytes(broken), *lines[3:]]))
    ko = sandbox("audit", "verify", str(bad))
    assert ko.returncode == 1 and ko.stderr.startswith(f"{bad}:3: "), ko


def test_audit_show_filters_by_kind_and_agent(tmp_path: Path) -> None:
    log = two_agents_log(tmp_path)
    js = sandbox("audit", "show", log, "--kind", "violation", "--agent", "alpha", "--json")
    assert js.returncode == 0, js
    recs = [json.loads(x) for x in js.stdout.splitlines()]
    assert len(recs) == 1, js.stdout
    assert (recs[0]["kind"], recs[0]["agent"], recs[0]["syscall"]) == (
        "violation",
        "alpha",
        "socket",
    )
    none = sandbox("audit", "show", log, "--kind", "violation", "--agent", "beta", "--json")
    assert (none.returncode, none.stdout) == (0, ""), none
    beta = sandbox("audit", "show", log, "--agent", "beta", "--json")
    assert [json.loads(x)["kind"] for x in beta.stdout.splitlines()] == ["start", "lock", "exit"]
    text = sandbox("audit", "show", log, "--kind", "violation", "--agent", "alpha")
    assert text.returncode == 0, text
    rows = [ln for ln in text.stdout.splitlines() if "violation" in ln]
    assert len(rows) == 1 and "alpha" in rows[0] and "socket" in rows[0], text.stdout
    assert "start" not in text.stdout and "beta" not in text.stdout


# --------------------------------------------------------------------------- explain, promises...


def test_explain_shows_where_landlock_grants_the_union(tmp_path: Path) -> None:
    # unveil(2) lets the closest path decide; Landlock grants the union of nested rules.
    # explain says so where it makes a path wider than its own letters.
    (tmp_path / "data" / "ro").mkdir(parents=True)
    pol = write_policy(
        tmp_path,
        policy("nested", "stdio rpath wpath", unveil={"data": "rw", "data/ro": "r"}),
        "nested",
    )
    js = sandbox("explain", pol, "--json")
    assert js.returncode == 0, js
    unveil = {u["path"]: u for u in json.loads(js.stdout)["unveil"]}
    ro, data = str(tmp_path / "data" / "ro"), str(tmp_path / "data")
    assert (unveil[ro]["perms"], unveil[ro]["effective"]) == ("r", "rw")
    assert (unveil[data]["perms"], unveil[data]["effective"]) == ("rw", "rw")
    text = sandbox("explain", pol)
    [line] = [x for x in text.stdout.splitlines() if x.startswith(ro + " ")]
    assert "Landlock grants rw" in line, text.stdout


def test_explain_text_and_json(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pol = write_policy(
        tmp_path,
        policy("explained", "stdio rpath wpath cpath", unveil={"/usr": "rx", "data/": "rwc"}),
        "explained",
    )
    js = sandbox("explain", pol, "--json")
    assert js.returncode == 0, js
    d = json.loads(js.stdout)
    assert set(d["promises"]) == {"stdio", "rpath", "wpath", "cpath"}
    assert "openat" in d["promises"]["rpath"]
    unveil = {u["path"]: u for u in d["unveil"]}
    data = str(tmp_path / "data")
    assert unveil["/usr"]["perms"] == "rx" and unveil["/usr"]["noexec"] is False
    assert {"execute", "read_file", "read_dir"} <= set(unveil["/usr"]["landlock"])
    assert "write_file" not in unveil["/usr"]["landlock"]
    assert unveil[data]["noexec"] is True, "a writable path without x is mounted noexec"
    assert {"write_file", "make_reg", "remove_file"} <= set(unveil[data]["landlock"])
    assert "execute" not in unveil[data]["landlock"]
    text = sandbox("explain", pol)
    assert text.returncode == 0, text
    assert data in text.stdout and "noexec" in text.stdout and "wpath" in text.stdout
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN)
    ko = sandbox("explain", str(bad))
    assert ko.returncode == 2 and ko.stderr.startswith(f"{bad}:"), ko


def test_promises_lists_every_spec_promise() -> None:
    js = sandbox("promises", "--json")
    assert js.returncode == 0, js
    table = {p["promise"]: p for p in json.loads(js.stdout)}
    missing = [p for p in SPEC_PROMISES if p not in table]
    assert missing == [], missing
    assert "openat" in " ".join(table["rpath"]["syscalls"])
    text = sandbox("promises")
    assert text.returncode == 0
    listed = {ln.split(":", 1)[0] for ln in text.stdout.splitlines() if not ln.startswith(" ")}
    assert set(SPEC_PROMISES) <= listed, set(SPEC_PROMISES) - listed


def kernel_landlock_abi() -> int:
    """Asked of the kernel directly: landlock_create_ruleset(NULL, 0, VERSION)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))


def test_doctor_reports_this_kernel() -> None:
    js = sandbox("doctor", "--json")
    assert js.returncode == 0, js
    d = json.loads(js.stdout)
    assert d["landlock_abi"] == kernel_landlock_abi() == 7
    assert d["seccomp_user_notification"] is True
    assert d["root"] is (os.geteuid() == 0)
    text = sandbox("doctor")
    assert text.returncode == 0 and "7" in text.stdout, text


# --------------------------------------------------------------------------- entry points


def test_console_script_and_python_m_agree(tmp_path: Path) -> None:
    a = sandbox("promises", "--json", exe=[CONSOLE_SCRIPT])
    b = sandbox("promises", "--json")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    log = str(tmp_path / "a.jsonl")
    for exe in ([CONSOLE_SCRIPT], SANDBOX):
        p = sandbox(
            "run", "-p", "stdio rpath", "-v", "@python:rx", "-v", "@system:rx",
            "--audit-log", log, "--", *py("raise SystemExit(7)"), exe=exe,
        )  # fmt: skip
        assert p.returncode == 7, (exe, p)
    assert verify(log).ok


# --------------------------------------------------------------------------- inline flags (SPEC 3)

PYTHON_VIEW = ["-v", "@python:rx", "-v", "@system:rx"]
PY_USER = sys.executable  # the venv's interpreter, which ci/setup makes usable by every user


def inline(tmp_path: Path, *flags: str, code: str, env: dict[str, str] | None = None) -> Result:
    """`sandbox run FLAGS -- python -c CODE`, as a Result with the audit records."""
    log = tmp_path / f"inline-{len(list(tmp_path.iterdir()))}.jsonl"
    full = dict(env or os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [*SANDBOX, "run", *PYTHON_VIEW, *flags, "--audit-log", str(log), "--", *py(code)],
        capture_output=True, text=True, env=full, cwd=tmp_path, timeout=GUARD,
    )  # fmt: skip
    recs = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return Result(p.returncode, p.stdout, p.stderr, recs, str(log))


def test_default_promises_are_stdio_rpath_and_v_path_means_r(tmp_path: Path) -> None:
    # No POLICY and no -p: 'stdio rpath' (as Cosmopolitan's pledge); -v PATH alone is r.
    log = str(tmp_path / "a.jsonl")
    p = sandbox("run", "-v", "@system:rx", "-v", "/etc/hostname", "--audit-log", log, "--",
                "cat", "/etc/hostname")  # fmt: skip
    assert p.returncode == 0 and p.stdout == Path("/etc/hostname").read_text(), p
    start = next(json.loads(x) for x in Path(log).read_text().splitlines())
    assert start["enforced"]["seccomp"]["promises"] == ["rpath", "stdio"]
    lock = [json.loads(x) for x in Path(log).read_text().splitlines()][1]
    assert lock["unveil"]["/etc/hostname"] == "r"
    # The other side: writing needs wpath cpath, which the default does not promise.
    target = tmp_path / "x"
    p = sandbox("run", "-v", "@system:rx", "-v", str(tmp_path), "--audit-log", log, "--",
                "touch", str(target))  # fmt: skip
    assert p.returncode == 159 and "needs 'wpath cpath'" in p.stderr and not target.exists(), p
    # Nothing unveiled at all: a usage error, not a run that cannot even exec its command.
    p = sandbox("run", "--audit-log", log, "--", "/bin/true")
    assert p.returncode == 2 and "nothing is unveiled" in p.stderr, p


def test_inline_violation_modes(tmp_path: Path) -> None:
    killed = inline(tmp_path, code=SOCKET)
    assert killed.status == 159 and "socket: ok" not in killed.stdout, killed
    errno_ = inline(tmp_path, "--violation", "errno", code=SOCKET)
    assert (errno_.status, errno_.stdout) == (0, "socket: EPERM\nafter: True\n"), errno_
    assert errno_.violations[0]["action"] == "errno"
    logged = inline(tmp_path, "-p", "stdio rpath", "--violation=log", code=SOCKET)
    assert logged.stdout.startswith("socket: ok"), logged
    assert logged.violations[0]["action"] == "log"
    bad = inline(tmp_path, "--violation", "kil", code="pass")
    assert bad.status == 2 and "violation must be one of kill, errno, log" in bad.stderr, bad
    assert "did you mean 'kill'" in bad.stderr and bad.records == []


def test_inline_limits_are_checked_by_the_loaders_rules(tmp_path: Path) -> None:
    slow = "import time\ntime.sleep(30)\nprint('done')"
    r = inline(tmp_path, "--limit", "wall=1s", code=slow)
    assert r.status != 0 and "wall-clock limit of 1s reached" in r.stderr and r.stdout == "", r
    fast = inline(tmp_path, "--limit", "wall=1m", "--limit", "files=64", code="print('done')")
    assert (fast.status, fast.stdout) == (0, "done\n"), fast
    assert fast.records[0]["enforced"]["rlimits"] == {"7": 64}  # RLIMIT_NOFILE
    for spec, message in (
        ("memory=5x", "limits.memory: '5x' has an unknown size unit 'x'"),
        ("bogus=1", "unknown key 'bogus' in limits"),
        ("processes=0", "limits.processes must be between 1 and"),
        ("files=0x10", "must be a whole number in decimal"),
        ("wall", "expected KEY=VALUE"),
    ):
        bad = inline(tmp_path, "--limit", spec, code="pass")
        assert bad.status == 2 and message in bad.stderr and bad.records == [], (spec, bad)


def test_inline_env(tmp_path: Path) -> None:
    show = "import os\nprint(os.environ.get('GREETING'), os.environ.get('FROM_PARENT'))"
    env = dict(os.environ, FROM_PARENT="inherited")
    plain = inline(tmp_path, code=show, env=env)
    assert plain.stdout == "None None\n", plain  # neither reaches the agent by default
    r = inline(tmp_path, "--env", "GREETING=hello world", "--env", "FROM_PARENT", code=show,
               env=env)  # fmt: skip
    assert (r.status, r.stdout) == (0, "hello world inherited\n"), r
    for spec in ("1BAD=x", "A-B", "=x"):
        bad = inline(tmp_path, "--env", spec, code="pass")
        assert bad.status == 2 and bad.stderr.startswith("sandbox: --env"), (spec, bad)


CONNECT = """
import socket, sys
for port in map(int, sys.argv[1:]):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        print(port, "ok", flush=True)
    except OSError as e:
        print(port, e.errno, flush=True)
"""


def test_inline_connect_and_bind(tmp_path: Path) -> None:
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    a, b = (s.getsockname()[1] for s in servers)
    script = tmp_path / "c.py"
    script.write_text(CONNECT)
    log = str(tmp_path / "a.jsonl")

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        return sandbox("run", *PYTHON_VIEW, "-v", str(tmp_path), *flags, "--audit-log", log,
                       "--", sys.executable, str(script), str(a), str(b))  # fmt: skip

    try:
        p = run("-p", "stdio rpath inet", "--connect", str(a))
        assert p.stdout.splitlines() == [f"{a} ok", f"{b} 13"], p  # Landlock: EACCES
        p = run("-p", "stdio rpath inet")
        assert p.stdout.splitlines() == [f"{a} ok", f"{b} ok"], p  # inet alone: any port
        p = run("--connect", str(a))
        assert p.returncode == 2 and "need the promise 'inet'" in p.stderr, p
        for bad in ("70000", "http", "-1"):
            p = run("-p", "stdio rpath inet", "--connect", bad)
            assert p.returncode == 2 and "--connect" in p.stderr, (bad, p)
    finally:
        for s in servers:
            s.close()
    binder = (
        "import socket, sys\n"
        "for port in map(int, sys.argv[1:]):\n"
        "    s = socket.socket()\n"
        "    try:\n"
        "        s.bind(('127.0.0.1', port)); print(port, 'bound')\n"
        "    except OSError as e:\n"
        "        print(port, e.errno)\n"
    )
    free = [socket.socket() for _ in range(2)]
    for s in free:
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in free]
    for s in free:
        s.close()
    r = subprocess.run(
        [*SANDBOX, "run", *PYTHON_VIEW, "-p", "stdio rpath inet", "--bind", ports[0],
         "--audit-log", log, "--", sys.executable, "-c", binder, *ports],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=GUARD,
    )  # fmt: skip
    assert r.stdout.splitlines() == [f"{ports[0]} bound", f"{ports[1]} 13"], r


def test_inline_user(tmp_path: Path) -> None:
    bad = inline(tmp_path, "--user", "no-such-user-here", code="pass")
    assert bad.status == 2 and "is not in the passwd database" in bad.stderr, bad
    if os.geteuid() != 0:
        pytest.skip("--user needs the launcher to be root")
    import pwd

    try:
        uid = pwd.getpwnam("sandboxtest").pw_uid
    except KeyError:
        pytest.skip("the test user sandboxtest does not exist (ci/setup creates it)")
    # The launcher's own Python may not be readable by that user: run a system program.
    log = str(tmp_path / "u.jsonl")
    argv = ["run", "-v", "@system:rx", "--audit-log", log, "--", "id", "-u"]
    r = sandbox(*argv[:1], "--user", "sandboxtest", *argv[1:])
    assert (r.returncode, r.stdout) == (0, f"{uid}\n"), r
    assert sandbox(*argv).stdout == "0\n"


def _lost_for_the_user(u: Any, policy_file: str) -> list[str]:
    """What `policy_file` would lose for the unprivileged user (doctor --json, as that user)."""
    p = u.run([PY_USER, "-m", "sandbox", "doctor", policy_file, "--json"])
    return list(json.loads(p.stdout).get("lost_under_best_effort", [])) if p.stdout else []


def test_inline_best_effort(tmp_path: Path) -> None:
    # What an ordinary user's launcher cannot enforce here: the memory and process limits of
    # the whole tree without a delegated cgroup v2 (root has cgroup v1).
    from progs.asuser import as_user

    u = as_user(tmp_path)
    u.write("p.yaml", "version: 1\npledge: stdio rpath\nlimits: {memory: 64MiB}\n")
    lost = _lost_for_the_user(u, "p.yaml")
    if not lost:
        pytest.skip("this machine enforces cgroup limits for the unprivileged user too")
    argv = [PY_USER, "-m", "sandbox", "run", "-v", "@system:rx", "--limit", "memory=64MiB",
            "--audit-log", "a.jsonl"]  # fmt: skip
    refused = u.run([*argv, "--", "echo", "ran"])
    assert refused.returncode == 3 and "cgroup" in refused.stderr, refused
    assert refused.stdout == ""
    ran = u.run([*argv, "--best-effort", "--", "echo", "ran"])
    assert (ran.returncode, ran.stdout) == (0, "ran\n"), ran
    start = json.loads(u.path("a.jsonl").read_text().splitlines()[0])
    assert any("cgroup" in x for x in start["enforced"]["not_enforced"]), start


def test_inline_flags_only_narrow_a_policy(tmp_path: Path) -> None:
    pol = write_policy(
        tmp_path,
        policy("bounded", "stdio rpath inet", network={"connect": [443], "bind": []},
               limits={"wall": "10m", "files": 256}),
        "bounded",
    )  # fmt: skip
    log = str(tmp_path / "a.jsonl")
    ok = sandbox("run", pol, "--limit", "wall=30s", "--violation", "errno", "--connect", "443",
                 "--audit-log", log, "--", *py("print('ok')"))  # fmt: skip
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok
    before = Path(log).read_text()
    for flags, message in (
        (["--limit", "wall=1h"], "allows at most 600 s; --limit can only lower it"),
        (["--limit", "files=1024"], "allows at most 256; --limit can only lower it"),
        (["--connect", "80"], "allows only [443]; --connect can only narrow it"),
        (["--bind", "8080"], "allows only no ports; --bind can only narrow it"),
        (["--violation", "log"], "--violation log lets refused calls run"),
    ):
        p = sandbox("run", pol, *flags, "--audit-log", log, "--", *py("print('ok')"))
        assert p.returncode == 2 and message in p.stderr, (flags, p)
    assert Path(log).read_text() == before, "a refused run writes no record"


def test_fuzz_inline_flag_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--limit, --env, --connect values: a usage error (exit 2) or what the loader's unit
    parsers give, never anything else (seeded, bounded)."""
    import random

    from sandbox.errors import UsageError
    from sandbox.policy import units
    from sandbox.policy.narrow import Flags, apply_flags

    monkeypatch.chdir(tmp_path)
    rng = random.Random(1201)
    keys = ["memory", "cpu", "wall", "processes", "files", "file_size", "bogus", "", "MEMORY"]
    chars = "0123456789.kKmMgGiIbBsShdD -_xX\0\n:="
    for _ in range(600):
        key = rng.choice(keys)
        value = "".join(rng.choice(chars) for _ in range(rng.randint(0, 8)))
        try:
            p = apply_flags(None, Flags(unveils=["/usr:r"], limits=[f"{key}={value}"]))
        except UsageError as e:
            assert e.exit_status == 2 and str(e).startswith("--limit")
            continue
        got = getattr(p.limits, key)
        if key in ("memory", "file_size"):
            assert got == units.parse_size(value.strip() if value.strip().isdigit() else value)
        elif key == "wall":
            assert got == units.parse_duration(value) and got > 0
        elif key == "cpu":
            assert got >= 1 and got >= units.parse_duration(value)
        else:
            assert got == int(value) and got >= 1
    names = ["A", "_x", "1A", "A B", "PATH", "é", "", "A\0"]
    for _ in range(300):
        spec = rng.choice(names) + rng.choice(["", "=", "=v", "=\n", "=a=b", "=\0"])
        try:
            p = apply_flags(None, Flags(unveils=["/usr:r"], env=[spec]))
        except UsageError as e:
            assert e.exit_status == 2 and str(e).startswith("--env")
            continue
        name, eq, value = spec.partition("=")
        assert (name in p.env.set and p.env.set[name] == value) if eq else name in p.env.keep
    for _ in range(300):
        port = rng.choice(["443", "0", "65535", "65536", "-1", "08", "1e3", " 80", "x", ""])
        try:
            p = apply_flags(None, Flags(promises="stdio inet", unveils=["/usr:r"], connect=[port]))
        except UsageError as e:
            assert e.exit_status == 2
            continue
        assert p.network is not None and p.network.connect == (int(port),)
        assert 0 <= int(port) <= 65535


# --------------------------------------------------------------------------- CLI conventions


def test_version() -> None:
    from sandbox import __version__

    for exe in ([CONSOLE_SCRIPT], SANDBOX):
        p = sandbox("--version", exe=exe)
        assert (p.returncode, p.stdout) == (0, f"sandbox (outheis-sandbox) {__version__}\n"), p


def _commands() -> list[list[str]]:
    import typer.main

    from sandbox.cli.commands import app

    out: list[list[str]] = []

    def walk(group: Any, prefix: list[str]) -> None:
        for name, cmd in group.commands.items():
            out.append([*prefix, name])
            if hasattr(cmd, "commands"):
                walk(cmd, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return out


def test_every_command_help_has_an_example() -> None:
    commands = _commands()
    assert ["learn"] in commands and ["export"] in commands and ["audit", "show"] in commands
    for cmd in [[], *commands]:
        p = sandbox(*cmd, "--help")
        assert p.returncode == 0, (cmd, p)
        assert "Examples:" in p.stdout and "sandbox " in p.stdout.split("Examples:")[1], (cmd, p)
    # run --help is the hand-written usage of the fast path; it says how -v narrows.
    run_help = sandbox("run", "--help").stdout
    assert "Examples:" in run_help and "narrows the entry that decides DIR" in run_help


def test_shell_completion() -> None:
    p = sandbox("--show-completion", "bash", exe=[CONSOLE_SCRIPT])
    assert p.returncode == 0 and "_SANDBOX_COMPLETE=complete_bash" in p.stdout, p
    env = dict(os.environ, _SANDBOX_COMPLETE="complete_bash", COMP_WORDS="sandbox ex",
               COMP_CWORD="1", PYTHONPATH=str(REPO))  # fmt: skip
    c = subprocess.run([CONSOLE_SCRIPT], capture_output=True, text=True, env=env, timeout=GUARD)
    assert c.stdout.split() == ["explain", "export"], c
    env["COMP_WORDS"], env["COMP_CWORD"] = "sandbox audit show x --ki", "4"
    c = subprocess.run([CONSOLE_SCRIPT], capture_output=True, text=True, env=env, timeout=GUARD)
    assert c.stdout.split() == ["--kind"], c


def test_audit_show_kind_must_be_known(tmp_path: Path) -> None:
    log = two_agents_log(tmp_path)
    p = sandbox("audit", "show", log, "--kind", "bogus")
    assert p.returncode == 2 and p.stdout == "", p
    assert "unknown kind 'bogus' (known: start, lock, violation, op, exit" in p.stderr, p
    p = sandbox("audit", "show", log, "--kind", "violatoin")
    assert p.returncode == 2 and "did you mean 'violation'" in p.stderr, p


def test_audit_show_since_and_until(tmp_path: Path) -> None:
    log = two_agents_log(tmp_path)
    recs = [json.loads(x) for x in Path(log).read_text().splitlines()]

    def seqs(*args: str) -> list[int]:
        p = sandbox("audit", "show", log, "--json", *args)
        assert p.returncode == 0, p
        return [json.loads(x)["seq"] for x in p.stdout.splitlines()]

    every = [r["seq"] for r in recs]
    assert seqs("--since", "1h") == every and seqs("--since", "10m ago") == every
    assert seqs("--until", "1h") == [] and seqs("--since", "2000-01-01") == every
    third = recs[2]["time"]
    assert seqs("--since", third) == every[2:]
    assert seqs("--until", third) == every[:2]
    assert seqs("--since", recs[1]["time"], "--until", third, "--agent", "alpha") == [2]
    naive = third.removesuffix("Z")  # no offset: UTC
    assert seqs("--since", naive) == every[2:]
    text = sandbox("audit", "show", log, "--since", third, "--kind", "exit")
    assert text.returncode == 0 and text.stdout.count(" exit ") == 2, text
    for bad in ("yesterday-ish", "10parsecs", "2026-13-45"):
        p = sandbox("audit", "show", log, "--since", bad)
        assert p.returncode == 2 and "--since" in p.stderr, (bad, p)
    p = sandbox("audit", "show", log, "--since", third, "--until", recs[0]["time"])
    assert p.returncode == 2 and "--until must be later than --since" in p.stderr, p


WRITER = """
import sys, time
from sandbox.parent.audit import AuditLog
log, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with AuditLog(log, name) as a:
    for i in range(n):
        a.record("exit", pid=i, status=0)
"""


def test_audit_show_follow_sees_every_record_of_several_writers(tmp_path: Path) -> None:
    import selectors
    import time

    log = two_agents_log(tmp_path)  # 7 records already
    env = dict(os.environ, PYTHONPATH=str(REPO))
    follower = subprocess.Popen(
        [*SANDBOX, "audit", "show", log, "--follow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert follower.stdout is not None
    lines: list[str] = []
    fd = follower.stdout.fileno()
    os.set_blocking(fd, False)
    pending = b""

    def read_until(count: int) -> None:
        # Raw reads: a buffered readline would hide lines already read from the pipe.
        nonlocal pending
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + GUARD  # a guard against a hang, not a timing check
        while len(lines) < count and time.monotonic() < deadline:
            if not sel.select(1.0):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *done, pending = (pending + chunk).split(b"\n")
            lines.extend(x.decode() for x in done)
        sel.close()

    try:
        read_until(7)  # what was there already (fewer than the ten shown before following)
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER, log, name, "150"], env=env)
            for name in ("w1", "w2", "w3")
        ]
        for w in writers:
            assert w.wait(timeout=GUARD) == 0
        read_until(7 + 450)
        follower.send_signal(signal.SIGINT)
        _, raw_err = follower.communicate(timeout=GUARD)
        err = raw_err.decode()
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0 and "Traceback" not in err, err
    seqs = [json.loads(x)["seq"] for x in lines]
    assert seqs == list(range(1, 7 + 450 + 1)), seqs[:20]
    assert sorted(json.loads(x)["agent"] for x in lines[7:]).count("w2") == 150
    assert verify(log).ok


def test_audit_show_follow_starts_with_the_last_ten(tmp_path: Path) -> None:
    log = tmp_path / "many.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", WRITER, str(log), "many", "25"], env=env, check=True)
    follower = subprocess.Popen(
        [*SANDBOX, "audit", "show", str(log), "-f", "--json", "--kind", "exit"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert follower.stdout is not None
    got = [follower.stdout.readline() for _ in range(10)]
    follower.send_signal(signal.SIGINT)
    follower.communicate(timeout=GUARD)
    assert [json.loads(x)["seq"] for x in got] == list(range(16, 26))
    assert follower.returncode == 0


def test_doctor_policy_exits_non_zero_when_not_fully_enforceable(tmp_path: Path) -> None:
    from progs.asuser import as_user

    ok = write_policy(tmp_path, policy("fine"), "fine")
    p = sandbox("doctor", ok)
    assert p.returncode == 0 and "fully enforceable" in p.stdout, p
    u = as_user(tmp_path)
    u.write("needy.yaml", "version: 1\npledge: stdio rpath\nlimits: {memory: 64MiB}\n")
    if not _lost_for_the_user(u, "needy.yaml"):
        pytest.skip("this machine enforces cgroup limits for the unprivileged user too")
    p = u.run([PY_USER, "-m", "sandbox", "doctor", "needy.yaml"])
    assert p.returncode == 1 and "would lose under best_effort" in p.stdout, p
    assert "cgroup pids+memory" in p.stdout
    p = u.run([PY_USER, "-m", "sandbox", "doctor", "needy.yaml", "--json"])
    assert p.returncode == 1 and json.loads(p.stdout)["lost_under_best_effort"], p


def test_execpromises_without_exec_stop_exec_d_programs_from_executing(tmp_path: Path) -> None:
    # sh (the command) runs env, which runs true: env is an exec'd program, under
    # execpromises; without 'exec' in them it cannot execute true.
    log = str(tmp_path / "a.jsonl")
    command = ["--", "/bin/sh", "-c", "/usr/bin/env /usr/bin/true && echo ran"]

    def run(execpromises: str | None) -> subprocess.CompletedProcess[str]:
        extra = {} if execpromises is None else {"execpromises": execpromises}
        body = {"version": 1, "name": "chain", "pledge": "stdio rpath proc exec",
                "unveil": {"@system": "rx"}, **extra}  # fmt: skip
        pol = write_policy(tmp_path, body, f"chain-{execpromises}".replace(" ", "-"))
        return sandbox("run", pol, "--audit-log", log, *command)

    assert run(None).stdout == "ran\n"
    assert run("stdio rpath proc exec").stdout == "ran\n"
    refused = run("stdio rpath proc")
    assert refused.returncode == 159 and refused.stdout == "", refused
    assert "execve" in refused.stderr and "not in execpromises" in refused.stderr, refused


def test_check_takes_parameters(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pol = tmp_path / "p.yaml"
    pol.write_text(
        'version: 1\nparams: {DATA: "the data"}\npledge: stdio\nunveil: {"${DATA}": r}\n'
    )
    p = sandbox("check", str(pol))
    assert p.returncode == 2 and "parameter DATA has no default" in p.stderr, p
    p = sandbox("check", str(pol), "--set", f"DATA={tmp_path / 'data'}")
    assert (p.returncode, p.stderr) == (0, ""), p
    p = sandbox("check", str(pol), "--set", f"DATA={tmp_path / 'nope'}")
    assert p.returncode == 2 and "does not exist" in p.stderr, p
