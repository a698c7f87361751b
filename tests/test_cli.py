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
