"""Paths Landlock refuses, named with their fix, from Landlock's own audit records.

As root, with the kernel's audit switched on by the test itself (and restored after it):
the child restricts itself with LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON, the launcher reads
AUDIT_LANDLOCK_ACCESS/DOMAIN records from the audit multicast group, keeps those of the
agent's own domains, and writes a `denied` record and a hint line for each. Both sides:
the refused path is refused, recorded and named; unveiled as the fix says, it works; and
without the sandbox the program reads it. Records of other Landlock domains (another
process restricting itself meanwhile) are not the agent's.

The parsers of audit text get seeded, bounded fuzzing (they read kernel text about paths
the agent chose).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from progs.snippets import kernel_audit_switched, kernel_audit_unavailable

from sandbox import kaudit
from sandbox.enforce import landlock
from sandbox.parent import denials
from sandbox.policy.model import Unveil
from sandbox.testing import Result, run_sandboxed

PY = sys.executable
BASE = ["@python:rx", "@system:rx"]


WHY_NOT = kernel_audit_unavailable()
needs_audit = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))


@pytest.fixture
def audit_on() -> Iterator[None]:
    with kernel_audit_switched(1):  # for the test, restored after it
        yield


@pytest.fixture
def audit_off() -> Iterator[None]:
    with kernel_audit_switched(0):
        yield


def sandboxed(tmp_path: Path, command: list[str], **kw: object) -> Result:
    # The probe is cached per process: the launcher (a fresh process) sees audit as it is now.
    return run_sandboxed(command, workdir=tmp_path, **kw)  # type: ignore[arg-type]


def denied_for(r: Result, path: str) -> list[dict[str, object]]:
    return [d for d in r.of_kind("denied") if d.get("path") == path]


@needs_audit
def test_a_refused_read_is_recorded_and_named(tmp_path: Path, audit_on: None) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("landlock hides this")
    r = sandboxed(tmp_path, ["cat", str(secret)], promises="stdio rpath", unveil=BASE)
    assert r.status == 1 and "landlock hides this" not in r.stdout, r
    d = denied_for(r, str(secret))
    assert len(d) == 1, r.of_kind("denied")
    rec = d[0]
    assert rec["source"] == "landlock" and rec["access"] == ["fs.read_file"], rec
    assert rec["syscall"] == "openat" and rec["comm"] == "cat", rec
    assert rec["fix"] == f"add '{secret}: r'" and rec["domain"], rec
    line = f"unveil refused openat {secret} (read): add '{secret}: r'"
    assert line in r.stderr, r.stderr
    assert r.of_kind("start")[0]["enforced"]["landlock_refusals"] == "reported from audit records"
    # The denied record comes before the exit record (it is part of the run's story).
    kinds = [x["kind"] for x in r.records]
    assert kinds.index("denied") < kinds.index("exit")

    # Following the fix: read, and nothing refused for it.
    r = sandboxed(
        tmp_path, ["cat", str(secret)], promises="stdio rpath", unveil=[*BASE, f"{secret}:r"]
    )
    assert r.status == 0 and r.stdout == "landlock hides this", r
    assert not denied_for(r, str(secret))
    # And without the sandbox cat reads it.
    assert subprocess.run(["cat", str(secret)], capture_output=True, text=True).returncode == 0


@needs_audit
def test_creation_names_the_directory_with_w_and_c(tmp_path: Path, audit_on: None) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    r = sandboxed(
        tmp_path,
        ["sh", "-c", f"echo x > {d}/new.txt; mkdir {d}/sub; true"],
        promises="stdio rpath wpath cpath proc exec",
        unveil=[*BASE, f"{d}:r"],
    )
    assert r.status == 0, r
    got = {(x["access"][0], x["fix"]) for x in denied_for(r, str(d))}  # type: ignore[index]
    assert ("fs.make_reg", f"add '{d}: rwc'") in got, got
    assert ("fs.make_dir", f"add '{d}: rc'") in got, got
    assert not (d / "new.txt").exists() and not (d / "sub").exists()


@needs_audit
def test_a_refused_tcp_port_names_network_connect(tmp_path: Path, audit_on: None) -> None:
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    other = port + 1 if port < 65535 else port - 1
    code = f"""
import socket
for p in ({other}, {port}):
    try:
        socket.create_connection(("127.0.0.1", p), timeout=5).close()
        print(p, "connected")
    except OSError as e:
        print(p, "refused", e.errno)
"""
    policy = {
        "version": 1,
        "name": "tcp",
        "pledge": "stdio rpath inet",
        "network": {"connect": [other]},
        "unveil": {"@python": "rx", "@system": "rx"},
        "command": [PY, "-c", code],
    }
    try:
        r = run_sandboxed(policy=policy, workdir=tmp_path)
    finally:
        srv.close()
    assert r.status == 0, r
    assert f"{port} refused 13" in r.stdout, r.stdout
    rec = [x for x in r.of_kind("denied") if x.get("port") == port]
    assert rec and rec[0]["access"] == ["net.connect_tcp"], r.of_kind("denied")
    assert rec[0]["fix"] == f"add {port} to network.connect (with the promise 'inet')"
    assert f"Landlock refused connect (connect to TCP port {port})" in r.stderr, r.stderr


# Another process, not the agent, restricting itself and refused while the agent runs: the
# launcher receives its records too (multicast), and must not take them for the agent's.
FOREIGN = """
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
attr = struct.pack("=QQQ", 1 << 2, 0, 0)  # handle read_file: every file read refused
rfd = libc.syscall(444, ctypes.create_string_buffer(attr, 24), ctypes.c_size_t(24), 0)
libc.prctl(38, 1, 0, 0, 0)
assert libc.syscall(446, rfd, 0) == 0
try:
    open(FOREIGN_PATH).read()
except OSError:
    print("foreign refused", flush=True)
"""


@needs_audit
def test_records_of_other_domains_are_not_the_agents(tmp_path: Path, audit_on: None) -> None:
    mine = tmp_path / "mine.txt"
    theirs = tmp_path / "theirs.txt"
    mine.write_text("m")
    theirs.write_text("t")
    log = tmp_path / "audit.jsonl"
    # The agent waits for a line on stdin, then reads its own refused file.
    agent = f"import sys\nsys.stdin.readline()\nos_error = None\ntry:\n    open({str(mine)!r})\n"
    agent += "except OSError as e:\n    os_error = e"
    argv = [PY, "-m", "sandbox", "run", "-p", "stdio rpath"]
    for b in BASE:
        argv += ["-v", b]
    argv += ["--audit-log", str(log), "--", PY, "-c", agent]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    launcher = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env
    )
    try:
        # Wait until the agent runs (its start and lock records are written).
        for _ in range(2000):
            if log.exists() and '"lock"' in log.read_text():
                break
            time.sleep(0.01)
        foreign = subprocess.run(
            [PY, "-c", f"FOREIGN_PATH = {str(theirs)!r}\n" + FOREIGN],
            capture_output=True,
            text=True,
        )
        assert "foreign refused" in foreign.stdout, foreign
        _, err = launcher.communicate("go\n", timeout=60)
    finally:
        launcher.kill()
    records = [json.loads(x) for x in log.read_text().splitlines()]
    paths = {x.get("path") for x in records if x["kind"] == "denied"}
    assert str(mine) in paths, (paths, err)
    assert str(theirs) not in paths, paths
    assert str(theirs) not in err


LOCK_AGENT = """
import os, sys
import sandbox
from sandbox.policy import pathsets
for name in ("@python", "@system"):
    for p in pathsets.expand(name):
        sandbox.unveil(p, "rx")
sandbox.pledge("stdio rpath proc exec")
os.execv("/bin/cat", ["cat", sys.argv[1]])
"""


@needs_audit
def test_lock_agent_refusals_after_an_exec_are_named(tmp_path: Path, audit_on: None) -> None:
    """The agent locks itself: the parent hands it the logging flag, so the program it execs
    has its refusals logged too (by default Landlock stops logging at the exec)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(LOCK_AGENT))
    policy = {
        "version": 1,
        "name": "lockagent",
        "lock": "agent",
        "pledge": "stdio rpath proc exec",
        "unveil": {"@python": "rx", "@system": "rx"},
        "command": [PY, str(script), str(secret)],
    }
    r = run_sandboxed(policy=policy, workdir=tmp_path)
    assert r.status == 1, r
    d = denied_for(r, str(secret))
    assert d and d[0]["comm"] == "cat" and d[0]["source"] == "landlock", r.of_kind("denied")


@needs_audit
def test_with_audit_off_nothing_is_claimed_and_the_failure_says_so(
    tmp_path: Path, audit_off: None
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    r = sandboxed(tmp_path, ["cat", str(secret)], promises="stdio rpath", unveil=BASE)
    assert r.status == 1, r
    assert not r.of_kind("denied")
    assert r.of_kind("start")[0]["enforced"]["landlock_refusals"].startswith("not reported")
    # At a terminal the failure says why nothing is named, and what would name it.
    assert kaudit.status().enabled == 0  # still off: nothing else switched it meanwhile
    leader, follower = pty.openpty()
    argv = [PY, "-m", "sandbox", "run", "-p", "stdio rpath", "-v", BASE[0], "-v", BASE[1]]
    argv += ["--audit-log", str(tmp_path / "tty.jsonl"), "--", "cat", str(secret)]
    p = subprocess.Popen(argv, stderr=follower, stdout=subprocess.DEVNULL, cwd=tmp_path)
    os.close(follower)
    err = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 4096):
            err += chunk
    status = p.wait(timeout=60)
    os.close(leader)
    text = err.decode()
    # On a failure, the launcher's own records say which branch it took (status, what it
    # found of the kernel's audit when it started).
    why = f"{text!r}, status {status}, records {(tmp_path / 'tty.jsonl').read_text()[-3000:]}"
    assert "paths Landlock refused are not reported here (kernel audit is off" in text, why
    assert "--enable-kernel-audit" in text and "--trace-unveil" in text


@needs_audit
def test_doctor_switches_kernel_audit_and_explains_it(audit_off: None) -> None:
    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "sandbox", "doctor", *args], capture_output=True, text=True
        )

    before = json.loads(doctor("--json").stdout)["this_user"]
    assert "kernel audit is off" in before["landlock_refusals_refused"]
    assert "--enable-kernel-audit" in before["landlock_refusals_refused"]
    p = doctor("--enable-kernel-audit")
    assert p.returncode == 0 and "is now on" in p.stdout, p
    assert "paths Landlock refuses, named   reported from the kernel's audit records" in p.stdout
    assert kaudit.status().enabled == 1
    p = doctor("--disable-kernel-audit")
    assert p.returncode == 0 and "is now off" in p.stdout, p
    assert kaudit.status().enabled == 0
    p = doctor("--enable-kernel-audit", "--disable-kernel-audit")
    assert p.returncode == 2, p


def test_doctor_cannot_switch_audit_without_root(tmp_path: Path) -> None:
    from progs.asuser import as_user

    u = as_user(tmp_path)
    p = u.run([PY, "-m", "sandbox", "doctor", "--enable-kernel-audit"])
    assert p.returncode == 3, p
    assert "changing it needs root" in p.stderr, p.stderr
    if WHY_NOT is None:
        assert kaudit.status().enabled in (0, 1)  # unchanged by the refused attempt


# ------------------------------------------------------------------ the parsers


def test_parse_record_fields_quoted_and_hex() -> None:
    text = (
        "audit(1796156903.316:286): domain=1be2b0034 blockers=fs.read_file "
        'path="/etc/hostname" dev="vda" ino=612'
    )
    serial, f = denials.parse_record(text)
    assert serial == "286"
    assert f == {
        "domain": "1be2b0034",
        "blockers": "fs.read_file",
        "path": "/etc/hostname",
        "dev": "vda",
        "ino": "612",
    }
    # A name with a space and a quote is logged in hex; it is decoded, not trusted.
    name = '/tmp/a b"c'
    serial, f = denials.parse_record(f"audit(1.2:3): path={name.encode().hex().upper()} x=1")
    assert f["path"] == name and f["x"] == "1"
    # Hex-looking values of other fields stay as they are.
    assert denials.parse_record("audit(1.2:3): a2=80000")[1]["a2"] == "80000"


def test_refusal_of_and_fix_for() -> None:
    access = {"domain": "d1", "blockers": "fs.make_reg", "path": "/srv/out"}
    syscall = {"syscall": "257", "a2": "241", "pid": "42", "comm": "sh"}
    r = denials.refusal_of(access, syscall)
    assert (r.syscall, r.pid, r.comm, r.writes) == ("openat", 42, "sh", True)
    unveils = (Unveil("/srv/out", frozenset("r")),)
    assert denials.fix_for(r, unveils) == (
        "unveil refused openat /srv/out (create a file)",
        "add '/srv/out: rwc'",
    )
    r = denials.refusal_of({"blockers": "fs.make_char", "path": "/dev"}, {"syscall": "133"})
    assert denials.fix_for(r, ())[1].startswith("no unveil grants it")
    r = denials.refusal_of({"blockers": "scope.signal", "opid": "1", "ocomm": "init"}, {})
    assert denials.fix_for(r, ()) == (
        "Landlock refused a call: a signal to pid 1 (init) outside the sandbox",
        "no policy allows it",
    )


def test_hint_lines_show_terminal_escapes_instead_of_sending_them(tmp_path: Path) -> None:
    from sandbox.parent.audit import AuditLog

    lines: list[str] = []
    with AuditLog(str(tmp_path / "log.jsonl"), "t") as log:
        rep = denials.Reporter(name="t", audit=log, unveils=(), agent_pid=7, err=lines.append)
        evil = "/tmp/\x1b[2J\x1b]0;owned\x07x"
        rep.report(denials.Refusal(blockers=("fs.read_file",), path=evil, syscall="openat"))
    assert len(lines) == 1 and "\x1b" not in lines[0] and "\x07" not in lines[0], lines
    assert "\\x1b[2J" in lines[0]
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert rec["path"] == evil  # the record keeps the name exactly (JSON escapes it)


def test_every_landlock_right_has_a_letter_or_a_reason() -> None:
    for name in landlock.FS_RIGHT_NAMES.values():
        assert name in denials.WORDS, name
        r = denials.Refusal(blockers=(f"fs.{name}",), path="/x", syscall="openat")
        _, fix = denials.fix_for(r, ())
        assert fix.startswith("add '/x: ") or fix.startswith("no unveil grants it"), (name, fix)


def test_fuzz_audit_text_parsers_never_raise() -> None:
    rng = random.Random(20261201)
    alphabet = 'abcdefxyz_=" ()\\:.0123456789ABCDEF\x00\x7f\u00e9/'
    samples = [
        'audit(1.2:3): domain=1 blockers=fs.read_file path="/a" dev="vda" ino=1',
        'audit(1.2:3): arch=c000003e syscall=257 a2=241 pid=7 comm="x"',
    ]
    reader_unveils = (Unveil("/a", frozenset("r")),)
    for i in range(3000):
        if i % 3 == 0:
            base = list(rng.choice(samples))
            for _ in range(rng.randint(1, 8)):
                base[rng.randrange(len(base))] = rng.choice(alphabet)
            text = "".join(base)
        else:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        serial, fields = denials.parse_record(text)
        assert serial is None or serial.isdigit()
        r = denials.refusal_of(fields, fields)
        denials.fix_for(r, reader_unveils)
        # Whole datagrams: random bytes and mangled netlink headers.
        blob = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        if i % 2:
            blob = struct.pack("=IHHII", rng.randint(0, 80), 1423, 0, 0, 0) + blob
        for mtype, rec in kaudit.records(blob):
            assert isinstance(mtype, int) and isinstance(rec, str)


def test_the_reader_keeps_only_its_domains_and_bounds_its_memory(tmp_path: Path) -> None:
    """The assembly of events, fed real record texts as the kernel writes them."""
    from sandbox.parent.audit import AuditLog

    lines: list[str] = []
    with AuditLog(str(tmp_path / "log.jsonl"), "t") as log:
        rep = denials.Reporter(name="t", audit=log, unveils=(), agent_pid=4242, err=lines.append)
        reader = denials.AuditReader(rep)  # no socket: fed by hand
        feed = [
            (1423, 'audit(1.0:10): domain=aaa blockers=fs.read_file path="/mine"'),
            (1424, "audit(1.0:10): domain=aaa status=allocated mode=enforcing pid=4242 uid=0"),
            (1300, 'audit(1.0:10): arch=c000003e syscall=257 a2=0 pid=4243 comm="cat"'),
            (1320, "audit(1.0:10): "),
            (1423, 'audit(1.0:11): domain=bbb blockers=fs.read_file path="/theirs"'),
            (1424, "audit(1.0:11): domain=bbb status=allocated mode=enforcing pid=1 uid=0"),
            (1320, "audit(1.0:11): "),
        ]
        for mtype, text in feed:
            reader.add(mtype, text)
        for n in range(denials.MAX_PENDING + 50):  # events that never end
            reader.add(1423, f'audit(2.0:{100 + n}): domain=aaa blockers=fs.read_dir path="/d{n}"')
        assert len(reader.events) <= denials.MAX_PENDING
        reader.finish()
        assert not reader.events
    assert any("/mine" in x and "cat" not in x for x in lines), lines
    assert not any("/theirs" in x for x in lines)
    assert len([x for x in lines if "/d" in x]) == min(
        denials.MAX_PENDING + 50, denials.MAX_DISTINCT - 1
    )
    records = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["pid"] == 4243 and records[0]["comm"] == "cat"
    assert rep.dropped > 0  # beyond MAX_DISTINCT, counted and not recorded


def test_tracing_changes_no_decision() -> None:
    """--trace-unveil turns the allow rules of path calls into notifications answered
    "continue": every call must be decided as before (allowed calls traced, the others
    refused or routed exactly as without tracing), execpromises included."""
    from sandbox.enforce.plan import seccomp_rules, trace_rules
    from sandbox.enforce.rules import match

    rng = random.Random(9)
    flags = [0, 0o1, 0o2, 0o100, 0o101, 0o102, 0o1001, 0o200000, 0o20000000, 0o100000, 0o4000]
    for pledge, exe in (
        ("stdio rpath wpath cpath dpath exec proc", "stdio rpath"),
        ("stdio rpath cpath", None),
        ("stdio rpath wpath cpath tmppath fattr", None),
    ):
        base = seccomp_rules(set(pledge.split()), None if exe is None else set(exe.split()))
        traced = trace_rules(base)
        for call in denials.TRACED:
            for _ in range(60):
                args = [rng.choice([-100, 3, 0x7F0000000000]), 0x7F0000001000]
                args += [rng.choice(flags), rng.choice(flags), rng.choice(flags), 0]
                before, after = match(base, call, args), match(traced, call, args)
                if before is not None and before.action == "allow":
                    assert after is not None and after.handler == "trace", (call, args)
                else:
                    assert after == before, (pledge, call, args, before, after)
