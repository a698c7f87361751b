"""`lock: agent` under a real `sandbox run`: the agent (the venv python running a script in
tmp_path) runs unlocked until its first sandbox.pledge, which installs the filter and hands
its listener to the parent with the declaration; the parent checks the declaration against
the policy, records it, and from then on records every refused call. An agent that does not
lock in time, or declares more than its policy, is ended (exit 159) and the refusal recorded.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from progs.snippets import ATTEMPT

from sandbox.enforce import landlock
from sandbox.errors import UsageError
from sandbox.policy.loader import load_policy
from sandbox.policy.narrow import narrow
from sandbox.testing import Result, assert_denied, run_sandboxed, write_policy

pytestmark = pytest.mark.skipif(landlock.abi_version() < 1, reason="kernel lacks Landlock")

VIOLATION_EXIT = 128 + signal.SIGSYS

# Every agent script starts with this. unveil_python() declares what the interpreter needs
# (the same path sets the policies below unveil); attempt() prints one flushed JSON line.
PRELUDE = (
    """
import errno, json, os, socket, subprocess, sys, threading, time
import sandbox, sandbox.agent.pledge
from sandbox.policy import pathsets
def unveil_python():
    for name in ("@python", "@system"):
        for p in pathsets.expand(name):
            sandbox.unveil(p, "rx")
"""
    + ATTEMPT
)


def results(r: Result) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    return out


def run_agent(
    tmp_path: Path, body: str, policy: dict[str, Any], **consts: str
) -> tuple[Result, dict[str, list[Any]]]:
    """Write the agent script (constants first, then PRELUDE, then body) and run it."""
    script = tmp_path / "agent.py"
    head = "".join(f"{k} = {v!r}\n" for k, v in consts.items())
    script.write_text(head + PRELUDE + textwrap.dedent(body))
    full = {
        "version": 1,
        "name": "agent",
        "command": [sys.executable, str(script)],
        "lock": "agent",
        "init": {"timeout": "10s"},
        **policy,
    }
    r = run_sandboxed(policy=full, workdir=tmp_path, timeout=60)
    return r, results(r)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "f.txt").write_text("data file")
    return d


def base_unveil(*extra: tuple[Path, str]) -> dict[str, str]:
    return {"@python": "rx", "@system": "rx", **{str(p): perms for p, perms in extra}}


def lock_records(r: Result) -> list[dict[str, Any]]:
    return r.of_kind("lock")


# --------------------------------------------------------------------------- in time


def test_agent_locks_and_the_listener_reaches_the_parent(tmp_path: Path, data: Path) -> None:
    r, out = run_agent(
        tmp_path,
        """
        attempt("unlocked_socket", lambda: socket.socket().close() or True)  # init is unrestricted
        unveil_python()
        sandbox.unveil(DATA, "r")
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        attempt("read", lambda: read(DATA + "/f.txt"))
        attempt("socket", lambda: socket.socket().close() or True)
        """,
        {"pledge": "stdio rpath", "unveil": base_unveil((data, "r"))},
        DATA=str(data),
    )
    assert out["unlocked_socket"][0] == "ok", r
    assert out["pledge"][0] == "ok", r
    assert out["read"] == ["ok", "data file"], r
    assert "socket" not in out, r
    assert r.status == VIOLATION_EXIT, r
    [lock] = lock_records(r)
    assert lock["pledge"] == "rpath stdio"
    assert lock["unveil"][str(data)] == "r"
    assert lock.get("decision") != "deny"
    v = assert_denied(r, syscall="socket", promise="inet", action="kill")
    assert v["pid"] == lock["pid"]
    assert v["seq"] > lock["seq"]
    assert (
        f"agent[{v['pid']}]: pledge violation: socket(" in r.stderr and "needs 'inet'" in r.stderr
    )


def test_after_the_lock_init_timeout_no_longer_applies_and_errno_lets_it_go_on(
    tmp_path: Path, data: Path
) -> None:
    r, out = run_agent(
        tmp_path,
        """
        unveil_python()
        sandbox.unveil(DATA, "r")
        sandbox.pledge("stdio rpath")
        time.sleep(1.5)  # longer than init.timeout: the timer stopped at the lock
        attempt("read", lambda: read(DATA + "/f.txt"))
        attempt("mkdir", lambda: os.mkdir(DATA + "/sub"))
        attempt("socket", lambda: socket.socket().close() or True)
        """,
        {
            "pledge": "stdio rpath",
            "init": {"timeout": "1s"},
            "violation": "errno",
            "unveil": base_unveil((data, "r")),
        },
        DATA=str(data),
    )
    assert r.status == 0, r
    assert out["read"] == ["ok", "data file"]
    assert out["mkdir"][0] == errno.EPERM and out["socket"][0] == errno.EPERM, out
    assert not (data / "sub").exists()
    assert_denied(r, syscall="mkdir", promise="cpath", action="errno")
    assert_denied(r, syscall="socket", promise="inet", action="errno")
    assert [rec.get("decision") for rec in lock_records(r)] == [None]


# --------------------------------------------------------------------------- late


def test_agent_that_does_not_lock_in_time_is_ended(tmp_path: Path) -> None:
    r, out = run_agent(
        tmp_path,
        """
        attempt("started", lambda: True)
        time.sleep(30)
        attempt("woke", lambda: True)
        """,
        {"pledge": "stdio rpath", "init": {"timeout": "1s"}, "unveil": base_unveil()},
    )
    assert out.get("started") == ["ok", True], r
    assert "woke" not in out
    assert r.status == VIOLATION_EXIT, r
    assert "did not lock within init.timeout" in r.stderr
    [lock] = lock_records(r)
    assert lock["decision"] == "deny" and "init.timeout" in lock["reason"]
    [ex] = r.of_kind("exit")
    assert ex["signal"] == signal.SIGKILL


# --------------------------------------------------------------------------- too much


@pytest.mark.parametrize(
    ("declared", "extra_unveil", "message"),
    [
        ("stdio rpath inet", None, "promise 'inet' is not in the policy"),
        ("stdio rpath", ("/etc", "r"), "/etc:r is not within the policy's unveil"),
        ("stdio rpath", ("DATA", "rw"), ":rw is not within the policy's unveil"),
    ],
    ids=["promise", "unveil-path", "unveil-letters"],
)
def test_declaration_beyond_the_policy_is_refused(
    tmp_path: Path, data: Path, declared: str, extra_unveil: tuple[str, str] | None, message: str
) -> None:
    extra = (
        None
        if extra_unveil is None
        else (str(data) if extra_unveil[0] == "DATA" else extra_unveil[0], extra_unveil[1])
    )
    r, out = run_agent(
        tmp_path,
        """
        unveil_python()
        sandbox.unveil(DATA, "r")
        if EXTRA_PATH:
            sandbox.unveil(EXTRA_PATH, EXTRA_PERMS)
        attempt("pledge", lambda: sandbox.pledge(DECLARED))
        attempt("after", lambda: True)
        """,
        {"pledge": "stdio rpath", "unveil": base_unveil((data, "r"))},
        DATA=str(data),
        DECLARED=declared,
        EXTRA_PATH="" if extra is None else extra[0],
        EXTRA_PERMS="" if extra is None else extra[1],
    )
    assert r.status == VIOLATION_EXIT, r
    assert "after" not in out, r
    assert "lock refused: " in r.stderr and message in r.stderr, r
    [lock] = lock_records(r)
    assert lock["decision"] == "deny" and message in lock["reason"]
    assert not r.violations


def test_declaration_within_the_policy_is_accepted(tmp_path: Path, data: Path) -> None:
    # The other side of the test above: narrower promises, a path beneath a policy path,
    # fewer letters.
    (data / "sub").mkdir()
    r, out = run_agent(
        tmp_path,
        """
        unveil_python()
        sandbox.unveil(DATA + "/sub", "r")
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        attempt("after", lambda: True)
        """,
        {"pledge": "stdio rpath wpath inet", "unveil": base_unveil((data, "rw"))},
        DATA=str(data),
    )
    assert r.status == 0, r
    assert out["after"] == ["ok", True]
    [lock] = lock_records(r)
    assert lock["pledge"] == "rpath stdio" and lock["unveil"][f"{data}/sub"] == "r"


def test_nested_read_only_unveil_cannot_be_declared_writable(tmp_path: Path) -> None:
    # The policy gives data/ 'rw' and data/ro/ only 'r'. The closest enclosing unveil
    # decides, as for `-v` narrowing: a lock declaring data/ro writable is refused (it once
    # was accepted, because data: rw "covered" it, and the agent overwrote data/ro/keep.txt).
    data = tmp_path / "data"
    ro = data / "ro"
    ro.mkdir(parents=True)
    keep = ro / "keep.txt"
    keep.write_text("original")
    # Writing an existing file needs 'wpath' only (no O_CREAT, no 'cpath').
    attack = f"os.write(os.open({str(keep)!r}, os.O_WRONLY | os.O_TRUNC), b'overwritten')"
    # Without the sandbox the write works: the test can fail.
    other = tmp_path / "other.txt"
    other.write_text("original")
    unsandboxed = "import os; " + attack.replace(str(keep), str(other))
    subprocess.run([sys.executable, "-c", unsandboxed], check=True)
    assert other.read_text() == "overwritten"
    policy = {"pledge": "stdio rpath wpath", "unveil": base_unveil((data, "rw"), (ro, "r"))}
    r, out = run_agent(
        tmp_path,
        f"""
        unveil_python()
        sandbox.unveil(RO, "rw")
        attempt("pledge", lambda: sandbox.pledge("stdio rpath wpath"))
        attempt("write", lambda: {attack})
        """,
        policy,
        RO=str(ro),
    )
    assert r.status == VIOLATION_EXIT, r
    assert "write" not in out and keep.read_text() == "original", r
    [lock] = lock_records(r)
    assert lock["decision"] == "deny" and f"unveil {ro}:rw is not within" in lock["reason"], lock
    # The same declaration through -v is refused by the same check.
    path = write_policy(tmp_path, {"version": 1, "name": "nested", **policy}, "nested")
    with pytest.raises(UsageError, match="asks for 'w'"):
        narrow(load_policy(path), None, [f"{ro}:rw"])


def test_agent_without_unveil_sees_no_more_than_the_policy_unveils(
    tmp_path: Path, data: Path
) -> None:
    # The policy unveils the interpreter and data/ only. An agent that pledges without
    # declaring any unveil must not get the whole filesystem: either the parent refuses the
    # lock, or the view is empty (SPEC: an empty unveil means nothing is visible).
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the agent")
    r, out = run_agent(
        tmp_path,
        """
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        attempt("secret", lambda: read(SECRET))
        """,
        {"pledge": "stdio rpath", "unveil": base_unveil((data, "r"))},
        SECRET=str(secret),
    )
    refused_lock = r.status == VIOLATION_EXIT and any(
        x.get("decision") == "deny" for x in lock_records(r)
    )
    assert refused_lock or out.get("secret", [None])[0] == errno.EACCES, (
        f"the agent read a file outside the policy's unveil: {out.get('secret')}\n{r}"
    )


# --------------------------------------------------------------------------- narrowing


def test_later_pledge_narrows_and_the_kernel_enforces_it(tmp_path: Path, data: Path) -> None:
    r, out = run_agent(
        tmp_path,
        """
        unveil_python()
        sandbox.unveil(DATA, "r")
        sandbox.pledge("stdio rpath")
        attempt("read_wide", lambda: read(DATA + "/f.txt"))
        attempt("narrow", lambda: sandbox.pledge("stdio"))
        attempt("widen", lambda: sandbox.pledge("stdio rpath"))
        attempt("read_narrow", lambda: read(DATA + "/f.txt"))
        """,
        {"pledge": "stdio rpath", "unveil": base_unveil((data, "r"))},
        DATA=str(data),
    )
    assert out["read_wide"] == ["ok", "data file"], r
    assert out["narrow"][0] == "ok" and out["widen"][0] == errno.EPERM, out
    assert "read_narrow" not in out
    assert [x["pledge"] for x in lock_records(r)] == ["rpath stdio", "stdio"]
    assert r.status == VIOLATION_EXIT, r
    assert "foreign architecture" not in r.stderr, (
        f"a native openat reported as a foreign-ABI call:\n{r.stderr}"
    )
    # One listener per filter chain: a narrowing filter cannot notify the parent, so the
    # kernel kills by itself and the exit record (not a violation record) says why.
    exits = r.of_kind("exit")
    assert (
        exits and exits[0].get("signal") == 31 and "narrowed pledge" in exits[0].get("reason", "")
    ), exits


# --------------------------------------------------------------------------- execpromises

CHILD = """
import sys
try:
    print(open(sys.argv[1]).read(), flush=True)
    open(sys.argv[2], "w").close()
    print("child created?!", flush=True)
except OSError as e:
    print("child refused", e.errno, flush=True)
"""


def test_execpromises_bind_exec_d_programs_not_the_agent(tmp_path: Path, data: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r, out = run_agent(
        tmp_path,
        """
        unveil_python()
        sandbox.unveil(DATA, "r")
        sandbox.unveil(OUT, "rwc")
        sandbox.pledge("stdio rpath wpath cpath proc exec", "stdio rpath")
        attempt("agent_create", lambda: create(OUT + "/agent.txt"))
        p = subprocess.run([sys.executable, "-c", CHILD, DATA + "/f.txt", OUT + "/child.txt"],
                           capture_output=True, text=True)
        attempt("child", lambda: [p.returncode, p.stdout, p.stderr[-2000:]])
        """,
        {
            "pledge": "stdio rpath wpath cpath proc exec",
            "execpromises": "stdio rpath",
            "violation": "errno",
            "unveil": base_unveil((data, "r"), (out_dir, "rwc")),
        },
        DATA=str(data),
        OUT=str(out_dir),
        CHILD=CHILD,
    )
    assert r.status == 0, r
    assert out["agent_create"] == ["ok", True], r
    assert (out_dir / "agent.txt").exists()
    _rc, child_out, child_err = out["child"][1]
    assert "data file" in child_out, (child_out, child_err)  # rpath is in the execpromises
    assert f"child refused {errno.EPERM}" in child_out, (child_out, child_err)
    assert not (out_dir / "child.txt").exists()
    [lock] = lock_records(r)
    assert lock["execpromises"] == "rpath stdio"
    v = assert_denied(r, syscall="openat", action="errno")
    # What is missing beyond the execpromises: wpath and cpath (tmppath only as a last resort).
    assert v["promise"] == "wpath cpath" and v.get("note") == "not in execpromises", v
    assert v["pid"] != lock["pid"]
    assert all(x["pid"] != lock["pid"] for x in r.violations), (
        "the agent itself was refused something"
    )


# --------------------------------------------------------------------------- threads


def test_agent_unveil_with_a_live_thread_is_ebusy(tmp_path: Path, data: Path) -> None:
    r, out = run_agent(
        tmp_path,
        """
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="helper-thread")
        t.start()
        unveil_python()
        sandbox.unveil(DATA, "r")
        attempt("busy_unveil", lambda: sandbox.unveil())
        attempt("busy_pledge", lambda: sandbox.pledge("stdio rpath"))
        ev.set()
        t.join()
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        attempt("read", lambda: read(DATA + "/f.txt"))
        """,
        {"pledge": "stdio rpath", "unveil": base_unveil((data, "r"))},
        DATA=str(data),
    )
    assert r.status == 0, r
    for name in ("busy_unveil", "busy_pledge"):
        assert out[name][0] == errno.EBUSY and "helper-thread" in out[name][1], out
    assert out["pledge"][0] == "ok" and out["read"] == ["ok", "data file"], out
    assert len(lock_records(r)) == 1  # the refused attempts never reached the parent


# --------------------------------------------------------------------------- init.pledge


@pytest.mark.parametrize("init_pledge", ["stdio rpath", "stdio rpath inet"])
def test_init_pledge_is_a_kernel_bound_before_the_lock(tmp_path: Path, init_pledge: str) -> None:
    r, out = run_agent(
        tmp_path,
        """
        attempt("init_read", lambda: len(read(__file__)) > 0)
        attempt("init_socket", lambda: socket.socket().close() or True)
        unveil_python()
        attempt("pledge", lambda: sandbox.pledge("stdio rpath"))
        """,
        {
            "pledge": "stdio rpath",
            "init": {"timeout": "10s", "pledge": init_pledge},
            "unveil": base_unveil(),
        },
    )
    assert out["init_read"] == ["ok", True], r
    if "inet" in init_pledge:
        assert r.status == 0, r
        assert out["init_socket"] == ["ok", True] and out["pledge"][0] == "ok"
        assert len(lock_records(r)) == 1
    else:
        assert "init_socket" not in out, r
        assert r.status == VIOLATION_EXIT, r
        assert r.of_kind("exit")[0]["signal"] == signal.SIGSYS
        assert not lock_records(r)
        assert "foreign architecture" not in r.stderr, (
            f"a native socket() refused by init.pledge reported as a foreign-ABI call:\n{r.stderr}"
        )


# --------------------------------------------------------------------------- network


def test_policy_network_rules_hold_under_lock_agent(tmp_path: Path) -> None:
    # network.connect lists the one port the agent may reach (Landlock TCP rules); the start
    # record says tcp is enforced. Both listeners are the test's own, on the loopback.
    with (
        socket.create_server(("127.0.0.1", 0)) as allowed,
        socket.create_server(("127.0.0.1", 0)) as other,
    ):
        r, out = run_agent(
            tmp_path,
            """
            import encodings.idna
            unveil_python()
            sandbox.pledge("stdio inet")
            def connect(port):
                with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
                    return True
            attempt("allowed", lambda: connect(ALLOWED))
            attempt("other", lambda: connect(OTHER))
            """,
            {
                "pledge": "stdio inet",
                "network": {"connect": [allowed.getsockname()[1]]},
                "unveil": base_unveil(),
            },
            ALLOWED=str(allowed.getsockname()[1]),
            OTHER=str(other.getsockname()[1]),
        )
    assert r.status == 0, r
    assert r.of_kind("start")[0]["enforced"]["landlock"]["tcp"] is True
    assert out["allowed"] == ["ok", True], r
    assert out["other"][0] == errno.EACCES, f"connected to a port outside network.connect: {out}"
