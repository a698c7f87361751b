"""`sandbox run` by an ordinary user (the unprivileged test user), real processes.

The launcher runs as `sandboxtest` (tests/progs/asuser.py); the agent gets its pid, mount
and network namespaces inside a user namespace of its own, and drops every capability in
it. Each test shows both sides: what the sandbox allows works as that user; what it refuses
is refused and recorded; and the same thing done by the same user without the sandbox
works, so the test can fail.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from progs.asuser import PY, AsUser, as_user, clean_env, unprivileged_user
from progs.dnsserver import FakeNameserver

from sandbox.enforce import kernel, landlock
from sandbox.policy.model import path_within
from sandbox.testing import assert_denied

pytestmark = pytest.mark.skipif(landlock.abi_version() < 1, reason="kernel lacks Landlock")

VIOLATION_EXIT = 159
USERNS = kernel.probe_userns()
needs_userns = pytest.mark.skipif(USERNS is not None, reason=f"this kernel: {USERNS}")


def results(stdout: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    return out


def code(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


@pytest.fixture
def u(tmp_path: Path) -> AsUser:
    return as_user(tmp_path)


# ------------------------------------------------------------------ lock: exec


@needs_userns
def test_lock_exec_allows_and_refuses_as_the_user(u: AsUser) -> None:
    u.write("notes.txt", "hello from the user\n")
    r = u.sandbox(["cat", "notes.txt"], promises="stdio rpath", unveil=["/usr:rx", "notes.txt:r"])
    assert r.status == 0 and r.stdout == "hello from the user\n", r
    start = r.of_kind("start")[0]["enforced"]
    assert start["pid_namespace"] is True
    assert start["user_namespace"] == "own uid and gid mapped onto themselves"
    assert start["capabilities"] == "all dropped"
    assert start["not_enforced"] == []

    # Refused: creating a file needs 'wpath cpath'; the parent kills and records it.
    r = u.sandbox(["touch", "new.txt"], promises="stdio rpath", unveil=["/usr:rx", ".:rwc"])
    assert r.status == VIOLATION_EXIT, r
    rec = assert_denied(r, syscall="openat", action="kill")
    assert rec["promise"] == "wpath cpath"
    assert "pledge violation: openat(" in r.stderr and "needs 'wpath cpath'" in r.stderr
    assert r.of_kind("exit") and not u.path("new.txt").exists()

    # The same user without the sandbox creates it.
    assert u.run(["touch", "new.txt"]).returncode == 0 and u.path("new.txt").exists()


@needs_userns
def test_the_agent_is_the_user_and_holds_no_capability(u: AsUser) -> None:
    probe = """
    import json, os
    st = {l.split(":")[0]: l.split(":", 1)[1].split() for l in open("/proc/self/status")}
    print(json.dumps({"caps": {k: st[k][0] for k in st if k.startswith("Cap")},
                      "nnp": st["NoNewPrivs"][0], "uid": os.getuid(), "gid": os.getgid(),
                      "nspid": st["NSpid"], "uid_map": open("/proc/self/uid_map").read().split()}))
    """
    r = u.sandbox(code(probe), promises="stdio rpath", unveil=["/proc:r"])
    assert r.status == 0, r
    got = results(r.stdout)
    assert set(got["caps"].values()) == {"0000000000000000"}, got  # type: ignore[union-attr]
    assert got["nnp"] == "1"
    me = unprivileged_user()
    assert got["uid"] == me.uid and got["gid"] == me.gid
    assert got["uid_map"] == [str(me.uid), str(me.uid), "1"]
    assert len(got["nspid"]) == 2 and got["nspid"][-1] == "2", got  # type: ignore[arg-type,index]

    # Without the sandbox the same user's bounding set is full: emptying it is ours.
    p = u.run(code(probe))
    direct = results(p.stdout)
    assert direct["caps"]["CapBnd"] != "0000000000000000", direct  # type: ignore[index]
    assert direct["nnp"] == "0"


# ------------------------------------------------------------------ lock: agent


AGENT = """
import json, os, sys
import sandbox
from sandbox.policy import pathsets
for name in ("@python", "@system"):
    for p in pathsets.expand(name):
        sandbox.unveil(p, "rx")
sandbox.unveil("data", "r")
sandbox.pledge("stdio rpath")
out = {"data": open("data/f.txt").read()}
try:
    open(sys.argv[1]).read()
    out["outside"] = "read"
except OSError as e:
    out["outside"] = e.errno
print(json.dumps(out))
"""


@needs_userns
def test_lock_agent_as_the_user(u: AsUser) -> None:
    u.write("data/f.txt", "data file")
    u.write("secret.txt", "not for the agent")
    u.write("agent.py", textwrap.dedent(AGENT))
    policy = {
        "command": [PY, "agent.py", str(u.path("secret.txt"))],
        "lock": "agent",
        "pledge": "stdio rpath",
        "unveil": {".": "r"},
    }
    r = u.sandbox(policy=policy)
    assert r.status == 0, r
    got = results(r.stdout)
    assert got["data"] == "data file"
    assert got["outside"] == 13, got  # EACCES: the agent's own unveil does not reach it
    lock = r.of_kind("lock")[0]
    assert lock["pledge"] == "rpath stdio" and "decision" not in lock, lock
    assert r.of_kind("start")[0]["enforced"]["pid_namespace"] is True

    # The same program without the sandbox reads the secret.
    p = u.run([PY, "-c", f"print(open({str(u.path('secret.txt'))!r}).read())"])
    assert p.stdout.strip() == "not for the agent"


# ------------------------------------------------------------------ noexec


@needs_userns
def test_writable_paths_are_noexec_for_the_user(u: AsUser) -> None:
    w = u.mkdir("w")
    prog = u.write("w/prog", Path("/bin/true").read_bytes(), mode=0o755)
    check = f"""
    import json, mmap, os
    out = {{}}
    try:
        os.execv({str(prog)!r}, ["prog"])
    except OSError as e:
        out["exec"] = e.errno
    fd = os.open({str(prog)!r}, os.O_RDONLY)
    try:
        mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        out["mmap_exec"] = "mapped"
    except OSError as e:
        out["mmap_exec"] = e.errno
    with open({str(w / "written")!r}, "w") as f:
        f.write("still writable")
    out["noexec_flag"] = bool(os.statvfs({str(w)!r}).f_flag & os.ST_NOEXEC)
    print(json.dumps(out))
    """
    r = u.sandbox(
        code(check), promises="stdio rpath wpath cpath exec", unveil=[f"{w}:rwc", "/proc:r"]
    )
    assert r.status == 0, r
    got = results(r.stdout)
    assert got["exec"] == 13, got  # EACCES: noexec mount
    assert got["mmap_exec"] == 1, got  # EPERM: PROT_EXEC of a file on a noexec mount
    assert got["noexec_flag"] is True, got
    assert (w / "written").read_text() == "still writable"
    points = r.of_kind("start")[0]["enforced"]["noexec_writable_paths"]
    assert any(path_within(str(w), p) for p in points), points
    assert not os.statvfs(w).f_flag & os.ST_NOEXEC  # the host's view is unchanged

    # Without the sandbox the user runs the same file.
    assert u.run([str(prog)]).returncode == 0


# ------------------------------------------------------------------ the reaper


DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
print("daemon up", flush=True)
time.sleep(120)
"""
LEADER = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", DAEMON, TOKEN]).wait()
print("ready", flush=True)
time.sleep(120)
"""


def _with_token(token: str) -> str:
    return f"DAEMON = {DAEMON!r}\nTOKEN = {token!r}\n" + LEADER


def _pids_with(token: str) -> set[int]:
    found = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.add(int(d))
            except OSError:
                continue
    return found


def _wait_gone(pids: set[int], limit: float = 20.0) -> set[int]:
    end = time.monotonic() + limit
    alive = set(pids)
    while alive and time.monotonic() < end:
        alive = {p for p in alive if os.path.exists(f"/proc/{p}")}
        time.sleep(0.05)
    return alive


def _read_until_both(p: subprocess.Popen[str]) -> None:
    """The daemon and its leader both said they run (in either order)."""
    assert p.stdout is not None
    seen: set[str] = set()
    while seen != {"daemon up", "ready"}:
        line = p.stdout.readline()
        assert line, f"the program ended before it was ready (saw {seen})"
        seen.add(line.strip())


@pytest.fixture
def token() -> Iterator[str]:
    t = f"outheis-users-daemon-{os.getpid()}-{time.monotonic_ns()}"
    yield t
    for pid in _pids_with(t):
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@needs_userns
def test_nothing_outlives_the_launcher_as_the_user(u: AsUser, token: str) -> None:
    argv, _ = u.sandbox_argv(
        [*code(_with_token(token)), token],
        promises="stdio rpath proc exec",
        unveil=["/proc:r"],
    )
    launcher = u.popen(argv, stdout=subprocess.PIPE)
    _read_until_both(launcher)
    inside = _pids_with(token)
    assert len(inside) >= 2, inside  # the leader and its daemon (double-forked, setsid)
    launcher.kill()  # SIGKILL: no clean-up code of the launcher runs
    launcher.wait()
    assert _wait_gone(inside) == set(), "a process of the agent outlived its launcher"

    # Without the sandbox the same user's daemon survives its parent.
    leader = u.popen([*code(_with_token(token)), token], stdout=subprocess.PIPE)
    _read_until_both(leader)
    before = _pids_with(token)
    leader.kill()
    leader.wait()
    survivors = {p for p in before if os.path.exists(f"/proc/{p}")} - {leader.pid}
    assert survivors, "control: the unsandboxed daemon should have survived its parent"


# ------------------------------------------------------------------ dns without inet


RESOLVER = """
import socket, sys
print("resolved", socket.getaddrinfo("user.example.test", 80, socket.AF_INET)[0][4][0], flush=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendmsg([b"exfiltrated"], [], 0, ("127.0.0.1", int(sys.argv[1])))
    print("sent", flush=True)
except OSError as e:
    print("refused", e.errno, flush=True)
"""


@needs_userns
def test_dns_without_inet_as_the_user(u: AsUser) -> None:
    ns = FakeNameserver()
    try:
        env = {"SANDBOX_DNS_UPSTREAM": f"127.0.0.1:{ns.port}"}
        r = u.sandbox([*code(RESOLVER), str(ns.port)], promises="stdio rpath dns", env=env)
        assert r.status == 0, r
        assert "resolved 192.0.2.7" in r.stdout, r
        assert "user.example.test" in [o["path"] for o in r.ops if o["op"] == "dns"]
        assert "network namespace" in r.of_kind("start")[0]["enforced"]["dns"]
        # The datagram to the host's listener went to the agent's own loopback instead.
        assert b"exfiltrated" not in ns.seen, ns.seen
        # The same user, unsandboxed, reaches it.
        p = u.run(
            [
                PY,
                "-c",
                f"import socket; socket.socket(2, 2).sendto(b'direct', ('127.0.0.1', {ns.port}))",
            ]
        )
        assert p.returncode == 0
        end = time.monotonic() + 5
        while b"direct" not in ns.seen and time.monotonic() < end:
            time.sleep(0.02)
        assert b"direct" in ns.seen
    finally:
        ns.close()


# ------------------------------------------------------------------ the broker


BROKER_AGENT = """
import json, sys
import sandbox
parent = sandbox.connect()
out = {"read": parent.read("vault", "a.txt").decode()}
try:
    open(sys.argv[1]).read()
    out["direct"] = "read"
except OSError as e:
    out["direct"] = e.errno
try:
    parent.remove("vault", "a.txt")
    out["remove"] = "removed"
except PermissionError as e:
    out["remove"] = str(e)
print(json.dumps(out))
"""


@needs_userns
def test_broker_as_the_user(u: AsUser) -> None:
    a = u.write("vault/a.txt", "through the parent")
    u.write("agent.py", textwrap.dedent(BROKER_AGENT))
    policy = {
        "command": [PY, "agent.py", str(a)],
        "pledge": "stdio rpath vault:read",
        "resources": {"vault": {"type": "dir", "path": "vault"}},
        "unveil": {"agent.py": "r"},
    }
    r = u.sandbox(policy=policy)
    assert r.status == 0, r
    got = results(r.stdout)
    assert got["read"] == "through the parent"
    assert got["direct"] == 13  # EACCES: the vault is not unveiled to the agent
    assert "vault:delete" in str(got["remove"]) and a.exists()
    assert any(o["op"] == "open" and o["decision"] == "allow" for o in r.ops), r.ops
    assert_denied(r, op="remove")
    # The same user reads it directly without the sandbox.
    assert u.run(["cat", str(a)]).stdout == "through the parent"


# ------------------------------------------------------------------ limits


LIMITED = {"pledge": "stdio rpath proc", "limits": {"processes": 4}}
FORKS = """
import os
made = 0
for _ in range(12):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        import time; time.sleep(2); os._exit(0)
    made += 1
print("forked", made)
"""


def test_limits_without_a_delegated_cgroup_are_refused(u: AsUser) -> None:
    feats = kernel.probe()
    if os.geteuid() != 0 and feats.cgroup_v2_place is not None:
        pytest.skip(f"this user has a delegated cgroup v2 at {feats.cgroup_v2_place}")
    user_feats = json.loads(u.run([PY, "-m", "sandbox", "doctor", "--json"]).stdout)
    if user_feats["cgroup_v2_delegated"] is not None:
        pytest.skip("the test user has a delegated cgroup v2 here")
    policy = {**LIMITED, "command": code(FORKS)}
    r = u.sandbox(policy=policy)
    assert r.status == 3, r
    assert "cgroup pids+memory" in r.stderr and "delegated cgroup v2" in r.stderr, r.stderr
    assert "systemd-run --user --scope -p Delegate=yes" in r.stderr
    assert not r.of_kind("start")  # refused before anything started

    # best_effort: it runs, and the start record says what is not enforced.
    r = u.sandbox(policy={**policy, "best_effort": True})
    assert r.status == 0, r
    start = r.of_kind("start")[0]["enforced"]
    assert start["cgroup"] is None
    assert any(x.startswith("cgroup pids+memory") for x in start["not_enforced"]), start
    assert "forked 12" in r.stdout  # nothing limits it: that is what best_effort costs


def test_root_keeps_cgroup_limits(tmp_path: Path) -> None:
    feats = kernel.probe()
    if os.geteuid() != 0:
        pytest.skip("the root side of the limits test")
    if not feats.cgroups:
        pytest.skip(f"no cgroups here: {feats.cgroups_refused}")
    from sandbox.testing import run_sandboxed

    policy = {
        "version": 1,
        "name": "limited",
        **LIMITED,
        "unveil": {"@python": "rx", "@system": "rx"},
        "command": code(FORKS),
    }
    r = run_sandboxed(policy=policy, workdir=tmp_path)
    assert r.status == 0, r
    assert r.of_kind("start")[0]["enforced"]["cgroup"] == {"memory": None, "processes": 4}
    made = int(r.stdout.split()[-1])
    assert made < 12, r.stdout  # the agent is one of the 4: it forked fewer than asked


# ------------------------------------------------------------------ without user namespaces

# As root: a user namespace whose user.max_user_namespaces is 0 (a per-namespace limit, so
# the host is untouched), then the test user inside it: an ordinary user on a kernel that
# refuses it user namespaces, as a sysctl would.
NO_USERNS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
go_r, go_w = os.pipe(); up_r, up_w = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        os._exit(90)
    os.write(up_w, b"u"); os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
    os.execvp(argv[0], argv)
os.read(up_r, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 65536")
os.write(go_w, b"g")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def _without_userns(u: AsUser, argv: list[str]) -> subprocess.CompletedProcess[str]:
    me = unprivileged_user()
    return subprocess.run(
        [PY, "-c", NO_USERNS, str(me.uid), str(me.gid), *argv],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=u.work,
        timeout=60,
    )


def test_without_user_namespaces_it_fails_closed_naming_the_setting(u: AsUser) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a user namespace without nested ones needs root")
    argv, log = u.sandbox_argv(["true"], promises="stdio rpath", unveil=["/usr:rx"])
    p = _without_userns(u, argv)
    assert p.returncode == 3, p
    assert "pid namespace" in p.stderr and "user.max_user_namespaces=0" in p.stderr, p.stderr
    assert "sysctl -w user.max_user_namespaces=" in p.stderr

    # best_effort: it runs without them. An ordinary user outside a user namespace cannot
    # empty its bounding set, and need not (no_new_privs): this used to exit 3.
    policy = {"pledge": "stdio rpath", "best_effort": True}
    argv, log = u.sandbox_argv(["true"], policy=policy)
    p = _without_userns(u, argv)
    assert p.returncode == 0, p
    start = next(json.loads(x) for x in log.read_text().splitlines() if '"start"' in x)
    enforced = start["enforced"]
    assert enforced["pid_namespace"] is False and enforced["user_namespace"] is None
    assert enforced["capabilities"].startswith("none held; bounding set kept")
    assert any(x.startswith("pid namespace:") for x in enforced["not_enforced"]), enforced

    # And doctor says which setting.
    d = _without_userns(u, [PY, "-m", "sandbox", "doctor", "--json"])
    data = json.loads(d.stdout)
    assert "user.max_user_namespaces=0" in data["unprivileged_user_namespaces"]
    assert data["this_user"]["namespaces"] is None
    assert "user.max_user_namespaces=0" in data["this_user"]["namespaces_refused"]


# A seccomp filter refusing unshare(2) around the launcher, as a container's may: no sysctl
# says no, so the probe's throwaway child finds out by trying.
NO_UNSHARE = """
import os, sys, errno
import pyseccomp as sc
f = sc.SyscallFilter(sc.ALLOW)
f.add_rule(sc.ERRNO(errno.EPERM), "unshare")
f.load()
os.execvp(sys.argv[1], sys.argv[1:])
"""


@needs_userns
def test_a_filter_refusing_namespaces_is_found_by_the_probe(u: AsUser) -> None:
    argv, _ = u.sandbox_argv(["true"], promises="stdio rpath", unveil=["/usr:rx"])
    p = u.run([PY, "-c", NO_UNSHARE, *argv])
    assert p.returncode == 3, p
    assert "unshare(CLONE_NEWUSER): Operation not permitted" in p.stderr, p.stderr
    assert "seccomp filter or security module" in p.stderr
    # The same user without that filter runs it (the control is every test above).
    argv, _ = u.sandbox_argv(["true"], promises="stdio rpath", unveil=["/usr:rx"])
    assert u.run(argv).returncode == 0


# ------------------------------------------------------------------ doctor


def test_doctor_for_both_users(u: AsUser) -> None:
    p = u.run([PY, "-m", "sandbox", "doctor", "--json"])
    assert p.returncode == 0, p
    d = json.loads(p.stdout)
    me = d["this_user"]
    assert d["root"] is False and d["uid"] == unprivileged_user().uid
    assert me["user_switch"] is False
    assert "needs root" in me["landlock_refusals_refused"]
    if USERNS is None:
        assert me["namespaces"] == "a user namespace" and me["capabilities"] == "all dropped"
    if d["cgroup_v2_delegated"] is None:
        assert "Delegate=yes" in me["limits_refused"]
    text = u.run([PY, "-m", "sandbox", "doctor"]).stdout
    assert "for this user (uid" in text and "--trace-unveil" in text, text

    if os.geteuid() != 0:
        return
    p = subprocess.run([PY, "-m", "sandbox", "doctor", "--json"], capture_output=True, text=True)
    d = json.loads(p.stdout)
    assert d["root"] is True and d["this_user"]["namespaces"] == "root"
    assert d["unprivileged_user_namespaces"] == USERNS  # asked on behalf of ordinary users
    assert d["this_user"]["user_switch"] is True
    if kernel.probe().cgroups:
        assert d["this_user"]["limits_memory_processes"] is not None


def test_doctor_tells_delegated_from_not_delegated(u: AsUser) -> None:
    """A cgroup v2 directory owned by the user (as systemd's Delegate=yes makes one) is
    recognised as delegated; what it lacks (here: the memory and pids controllers, bound
    to cgroup v1 on this host) is named instead of ownership."""
    if os.geteuid() != 0:
        pytest.skip("delegating a cgroup needs root")
    mount = kernel.probe().cgroup_v2_path
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    me = unprivileged_user()
    d = Path(mount) / f"outheis-test-delegated-{os.getpid()}"
    d.mkdir()
    try:
        for f in (d, d / "cgroup.procs", d / "cgroup.subtree_control", d / "cgroup.threads"):
            os.chown(f, me.uid, me.gid)
        inside = (
            f"echo $$ > {d}/cgroup.procs && exec setpriv --reuid={me.uid} --regid={me.gid} "
            f"--clear-groups -- {PY} -m sandbox doctor --json"
        )
        p = subprocess.run(
            ["sh", "-c", inside], capture_output=True, text=True, env=clean_env(), cwd=u.work
        )
        assert p.returncode == 0, p
        data = json.loads(p.stdout)
        available = set((d / "cgroup.controllers").read_text().split())
        if {"memory", "pids"} <= available:
            assert data["cgroup_v2_delegated"] == str(d), data
        else:
            assert data["cgroup_v2_delegated"] is None
            assert f"not available in {d}" in data["cgroup_v2_refused"], data
            assert "not delegated" not in data["cgroup_v2_refused"]
        # The control: the user in the (root-owned) root cgroup is not delegated.
        plain = json.loads(u.run([PY, "-m", "sandbox", "doctor", "--json"]).stdout)
        assert "not delegated to uid" in plain["cgroup_v2_refused"], plain
    finally:
        for _ in range(100):
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.05)


# ------------------------------------------------------------------ naming refused paths


def _stderr_on_a_terminal(u: AsUser, command: list[str], **kw: Any) -> str:
    """Run `sandbox run` as the user with its stderr on a pseudo-terminal; what it wrote."""
    argv, _ = u.sandbox_argv(command, **kw)
    leader, follower = pty.openpty()
    try:
        p = u.popen(argv, stderr=follower, stdout=subprocess.DEVNULL)
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer has gone
                break
            if not chunk:
                break
            out += chunk
        p.wait(timeout=60)
    finally:
        os.close(leader)
    return out.decode("utf-8", "replace")


@needs_userns
def test_without_audit_records_the_failure_says_so_and_trace_names_the_path(u: AsUser) -> None:
    secret = u.write("secret.txt", "hidden")
    r = u.sandbox(["cat", str(secret)], promises="stdio rpath", unveil=["/usr:rx"])
    assert r.status == 1 and "hidden" not in r.stdout, r
    assert "Permission denied" in r.stderr and "sandbox:" not in r.stderr, r.stderr
    assert not r.of_kind("denied")
    # At a terminal, the failure says that Landlock's refusals cannot be named here.
    err = _stderr_on_a_terminal(u, ["cat", str(secret)], promises="stdio rpath", unveil=["/usr:rx"])
    assert "paths Landlock refused are not reported here" in err, err
    assert "needs root" in err and "--trace-unveil" in err

    # --trace-unveil: the parent names it (and Landlock still refuses it).
    r = u.sandbox(
        ["cat", str(secret)],
        promises="stdio rpath",
        unveil=["/usr:rx"],
        extra_args=["--trace-unveil"],
    )
    assert r.status == 1 and "hidden" not in r.stdout, r
    denied = [d for d in r.of_kind("denied") if d.get("path") == str(secret)]
    assert denied, r.of_kind("denied")
    assert denied[0]["source"] == "parent" and denied[0]["access"] == ["fs.read_file"]
    assert denied[0]["fix"] == f"add '{secret}: r'"
    assert f"unveil refused openat {secret} (read): add '{secret}: r'" in r.stderr, r.stderr
    # Said once, at the first refusal: why these are not Landlock's own records.
    assert r.stderr.count("Landlock's own audit records are not available (") == 1, r.stderr
    assert "needs root" in r.stderr

    # Following the fix: it is read, and nothing is refused for it.
    r = u.sandbox(
        ["cat", str(secret)],
        promises="stdio rpath",
        unveil=["/usr:rx", f"{secret}:r"],
        extra_args=["--trace-unveil"],
    )
    assert r.status == 0 and r.stdout == "hidden", r
    assert not [d for d in r.of_kind("denied") if d.get("path") == str(secret)]
    assert r.of_kind("start")[0]["enforced"]["landlock_refusals"].startswith("read by the parent")


@needs_userns
def test_trace_names_creation_and_removal_with_their_letters(u: AsUser) -> None:
    ro = u.mkdir("ro")
    u.write("ro/old.txt", "x")
    sh = f"echo new > {ro}/new.txt; mkdir {ro}/d; rm {ro}/old.txt; true"
    r = u.sandbox(
        ["sh", "-c", sh],
        promises="stdio rpath wpath cpath proc exec",
        unveil=["/usr:rx", f"{ro}:r"],
        extra_args=["--trace-unveil"],
    )
    assert r.status == 0, r
    fixes = {(d["access"][0], d["fix"]) for d in r.of_kind("denied") if d.get("path") == str(ro)}
    assert ("fs.make_reg", f"add '{ro}: rwc'") in fixes, fixes
    assert ("fs.make_dir", f"add '{ro}: rc'") in fixes, fixes
    assert ("fs.remove_file", f"add '{ro}: rc'") in fixes, fixes
    assert (ro / "old.txt").exists() and not (ro / "new.txt").exists()  # all still refused


def test_run_as_user_harness_is_the_test_user(u: AsUser) -> None:
    p = u.run(["id", "-u"])
    assert p.stdout.strip() == str(unprivileged_user().uid)
    assert Path(u.work).stat().st_uid == unprivileged_user().uid
