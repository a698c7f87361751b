"""The broker, both sides: a real agent process using sandbox.agent.client on fd 3, a real Broker
serving it in this process, a real audit log. Every right granted works and, when not
promised, is refused with PermissionError naming the promise and recorded as a denial.
Path escapes are refused by the kernel (openat2 RESOLVE_*), abuse of the channel leaves
the parent serving and the log intact.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from sandbox.parent.audit import AuditLog, read_records, verify
from sandbox.parent.broker import Broker
from sandbox.policy.model import Policy, Resource
from sandbox.protocol import ENV_BROKER_FD

REPO = Path(__file__).resolve().parents[1]

# Prepended to every agent program: `attempt(name, fn)` stores ["ok", value] or
# [exception class, message] under `name`; the dict is printed as JSON at the end.
PRELUDE = """
import json, os, sys
import sandbox
parent = sandbox.connect()
out = {}
def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except Exception as e:
        out[name] = [type(e).__name__, str(e)]
"""


def make_policy(caps: Iterable[str], resources: Mapping[str, Resource]) -> Policy:
    pairs = frozenset(tuple(c.split(":", 1)) for c in caps)
    return Policy(
        name="test",
        capabilities=pairs,  # type: ignore[arg-type]
        resources=MappingProxyType(dict(resources)),
    )


def dir_resource(root: Path, name: str = "vault") -> dict[str, Resource]:
    return {name: Resource(name=name, type="dir", path=str(root))}


def serve(broker: Broker) -> threading.Thread:
    """The parent's event loop for one broker, until the agent closes the channel."""

    def loop() -> None:
        sel = selectors.DefaultSelector()
        sel.register(broker.fileno(), selectors.EVENT_READ)
        try:
            while True:
                if sel.select(timeout=30) and not broker.on_readable():
                    break
        finally:
            sel.close()
            broker.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


class Run:
    def __init__(self, out: dict[str, Any], log: Path, proc: subprocess.CompletedProcess[str]):
        self.out = out
        self.log = log
        self.proc = proc

    def records(self, **match: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in read_records(self.log)
            if r["kind"] == "op" and all(r.get(k) == v for k, v in match.items())
        ]


def spawn(
    code: str, sock: socket.socket, extra_env: Mapping[str, str] | None = None, **kw: Any
) -> subprocess.Popen[str]:
    """A Python agent with `sock` at fd 3 (as the launcher places it) and a bare environment."""
    fd = sock.fileno()
    env = {"SANDBOX_BROKER_FD": "3", "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}
    env.update(extra_env or {})
    return subprocess.Popen(
        ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{fd} {fd}<&-', sys.executable, "-c", code],
        pass_fds=(fd,),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_agent(
    tmp_path: Path,
    policy: Policy,
    body: str,
    environ: Mapping[str, str] | None = None,
    prelude: str = PRELUDE,
    log: Path | None = None,
    on_line: Callable[[str], object] | None = None,
) -> Run:
    log = log or tmp_path / "audit.jsonl"
    audit = AuditLog(log, "test")
    parent_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if agent_end.fileno() == 3:  # the shell redirection below needs a different number
        agent_end = agent_end.dup()
    code = prelude + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = spawn(code, agent_end)
    agent_end.close()
    broker = Broker(parent_end, policy, audit, proc.pid, environ or {})
    loop = serve(broker)
    if on_line is None:
        stdout, stderr = proc.communicate(timeout=60)
    else:  # the test reacts to what the agent prints, line by line
        assert proc.stdout is not None and proc.stderr is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            on_line(line.rstrip("\n"))
        stderr = proc.stderr.read()
        proc.wait(timeout=60)
        stdout = "".join(seen)
    loop.join(timeout=30)
    audit.close()
    assert not loop.is_alive(), "the broker loop did not end when the agent closed its end"
    assert proc.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    out = json.loads(lines[-1]) if lines else {}
    result = verify(log)
    assert result.ok, result.message
    return Run(out, log, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))


ALL_DIR = ("vault:read", "vault:write", "vault:create", "vault:delete", "vault:list")


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    root = tmp_path / "vault"
    root.mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "today.md").write_text("hello\n")
    (root / "a.txt").write_text("alpha")
    return root


# ---------------------------------------------------------------- every right, both sides


def test_every_right_granted_works(tmp_path: Path, vault: Path) -> None:
    run = run_agent(
        tmp_path,
        make_policy(ALL_DIR, dir_resource(vault)),
        """
        attempt("open_r", lambda: parent.open("vault", "notes/today.md").read())
        attempt("read", lambda: parent.read("vault", "a.txt").decode())
        attempt("write_new", lambda: parent.write("vault", "new.txt", "fresh"))
        attempt("append", lambda: parent.open("vault", "new.txt", "a").write("+more"))
        attempt("x", lambda: parent.open("vault", "only.txt", "x").write("x"))
        attempt("x_again", lambda: parent.open("vault", "only.txt", "x"))
        attempt("list", lambda: [list(e) for e in parent.list("vault", "")])
        attempt("list_sub", lambda: [list(e) for e in parent.list("vault", "notes/")])
        attempt("stat", lambda: list(parent.stat("vault", "a.txt")))
        attempt("mkdir", lambda: parent.mkdir("vault", "d"))
        attempt("rename", lambda: parent.rename("vault", "a.txt", "d/b.txt"))
        attempt("rename_noreplace", lambda: parent.rename("vault", "new.txt", "d/b.txt"))
        attempt("remove_file", lambda: parent.remove("vault", "only.txt"))
        attempt("remove_missing", lambda: parent.remove("vault", "only.txt"))
        attempt("mkdir_e", lambda: parent.mkdir("vault", "e"))
        attempt("remove_dir", lambda: parent.remove("vault", "e"))
        attempt("remove_full_dir", lambda: parent.remove("vault", "d"))
        def rw():
            with parent.open("vault", "notes/today.md", "r+") as f:
                f.seek(0, 2)
                f.write("again\\n")
                f.seek(0)
                return f.read()
        attempt("r_plus", rw)
        """,
    )
    o = run.out
    assert o["open_r"] == ["ok", "hello\n"]
    assert o["read"] == ["ok", "alpha"]
    assert o["write_new"][0] == "ok" and o["append"][0] == "ok"
    assert (vault / "new.txt").read_text() == "fresh+more"
    assert stat.S_IMODE((vault / "new.txt").stat().st_mode) == 0o600
    assert o["x"][0] == "ok" and o["x_again"][0] == "FileExistsError"
    assert ["a.txt", "file"] in o["list"][1] and ["notes", "dir"] in o["list"][1]
    assert o["list_sub"] == ["ok", [["today.md", "file"]]]
    assert o["stat"][1][0] == 5 and o["stat"][1][2] == "file"
    assert (
        o["mkdir"][0] == "ok"
        and stat.S_IMODE((vault / "e").stat().st_mode if (vault / "e").exists() else 0o700) == 0o700
    )
    assert stat.S_IMODE((vault / "d").stat().st_mode) == 0o700
    assert o["rename"][0] == "ok" and (vault / "d" / "b.txt").read_text() == "alpha"
    assert o["rename_noreplace"][0] == "FileExistsError"
    assert (vault / "new.txt").exists()
    assert o["remove_file"][0] == "ok" and not (vault / "only.txt").exists()
    assert o["remove_missing"][0] == "FileNotFoundError"
    assert o["remove_dir"][0] == "ok" and not (vault / "e").exists()
    assert o["remove_full_dir"][0] == "OSError" and (vault / "d").is_dir()
    assert o["r_plus"] == ["ok", "hello\nagain\n"]
    allowed = run.records(decision="allow")
    assert {r["op"] for r in allowed} == {"open", "list", "stat", "mkdir", "rename", "remove"}
    assert not run.records(decision="deny")


@pytest.mark.parametrize(
    ("caps", "call", "promise"),
    [
        ((), 'parent.read("vault", "a.txt")', "vault:read"),
        (("vault:read",), 'parent.write("vault", "a.txt", "x")', "vault:write"),
        (("vault:write",), 'parent.open("vault", "a.txt", "r+")', "vault:read"),
        (("vault:read",), 'parent.open("vault", "a.txt", "a")', "vault:write"),
        (("vault:read", "vault:write"), 'parent.open("vault", "n.txt", "x")', "vault:create"),
        (("vault:read",), 'parent.list("vault")', "vault:list"),
        (("vault:write",), 'parent.stat("vault", "a.txt")', "vault:read or vault:list"),
        (("vault:read",), 'parent.mkdir("vault", "d")', "vault:create"),
        (("vault:read", "vault:list"), 'parent.remove("vault", "a.txt")', "vault:delete"),
        (("vault:delete",), 'parent.rename("vault", "a.txt", "b.txt")', "vault:create"),
        (("vault:create",), 'parent.rename("vault", "a.txt", "b.txt")', "vault:delete"),
    ],
)
def test_right_not_promised_is_refused_and_recorded(
    tmp_path: Path, vault: Path, caps: tuple[str, ...], call: str, promise: str
) -> None:
    before = {p: p.read_bytes() for p in vault.rglob("*") if p.is_file()}
    run = run_agent(
        tmp_path, make_policy(caps, dir_resource(vault)), f"attempt('call', lambda: {call})"
    )
    assert run.out["call"] == ["PermissionError", f"{promise} is not promised"]
    denied = run.records(decision="deny")
    assert len(denied) == 1 and denied[0]["reason"] == f"{promise} is not promised"
    assert denied[0]["resource"] == "vault" and denied[0]["pid"] > 0
    assert not run.records(decision="allow")
    assert {p: p.read_bytes() for p in vault.rglob("*") if p.is_file()} == before
    assert not (vault / "d").exists() and not (vault / "n.txt").exists()


def test_right_granted_counterparts(tmp_path: Path, vault: Path) -> None:
    """The other side of the table above: each promise alone allows its call."""
    run = run_agent(
        tmp_path,
        make_policy(("vault:list",), dir_resource(vault)),
        'attempt("stat", lambda: parent.stat("vault", "a.txt").size)',
    )
    assert run.out["stat"] == ["ok", 5]
    run = run_agent(
        tmp_path,
        make_policy(("vault:create",), dir_resource(vault)),
        'attempt("x", lambda: parent.open("vault", "n.txt", "xb").write(b"n"))',
    )
    assert run.out["x"] == ["ok", 1] and (vault / "n.txt").read_bytes() == b"n"


def test_write_without_create_only_existing_files(tmp_path: Path, vault: Path) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("vault:write",), dir_resource(vault)),
        """
        attempt("existing", lambda: parent.write("vault", "a.txt", "changed"))
        attempt("new", lambda: parent.write("vault", "new.txt", "x"))
        attempt("no_create_flag", lambda: parent.write("vault", "n2.txt", "x", create=False))
        """,
    )
    assert run.out["existing"][0] == "ok" and (vault / "a.txt").read_text() == "changed"
    assert (
        run.out["new"][0] == "PermissionError"
        and "vault:create is not promised" in (run.out["new"][1])
    )
    assert run.out["no_create_flag"][0] == "FileNotFoundError"
    assert not (vault / "new.txt").exists() and not (vault / "n2.txt").exists()
    assert any("vault:create" in r["reason"] for r in run.records(decision="deny"))


def test_unknown_resource_and_wrong_type(tmp_path: Path, vault: Path) -> None:
    res = {**dir_resource(vault), "api": Resource("api", "http", url="http://127.0.0.1:1/")}
    run = run_agent(
        tmp_path,
        make_policy(ALL_DIR, res),
        """
        attempt("undeclared", lambda: parent.read("nope", "a.txt"))
        attempt("http_as_dir", lambda: parent.read("api", "a.txt"))
        attempt("dir_as_http", lambda: parent.http("vault", "GET", "a.txt"))
        """,
    )
    assert run.out["undeclared"][0] == "PermissionError"
    assert "not declared" in run.out["undeclared"][1]
    assert run.out["http_as_dir"][0] == "PermissionError"
    assert run.out["dir_as_http"][0] == "PermissionError"
    assert len(run.records(decision="deny")) == 3


# ---------------------------------------------------------------- path escapes


def test_path_escapes_are_refused(tmp_path: Path, vault: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("SECRET")
    (tmp_path / "outdir").mkdir()
    (vault / "to_secret").symlink_to(outside)  # a symlink planted inside, pointing out
    (vault / "to_inside").symlink_to(vault / "a.txt")  # even pointing inside: refused
    (vault / "rel_link").symlink_to("a.txt")
    (vault / "dirlink").symlink_to(tmp_path / "outdir")  # an intermediate directory
    os.link(outside, vault / "hard")  # a hard link to an outside file
    os.mkfifo(vault / "fifo")
    run = run_agent(
        tmp_path,
        make_policy(ALL_DIR, dir_resource(vault)),
        """
        cases = {
            "dotdot": ("../secret.txt",),
            "dotdot_inner": ("notes/../../secret.txt",),
            "absolute": (OUTSIDE,),
            "symlink_out": ("to_secret",),
            "symlink_in": ("to_inside",),
            "symlink_rel": ("rel_link",),
            "through_dirlink": ("dirlink/x",),
            "nul": ("a.txt\\0.png",),
            "long_name": ("n" * 256,),
            "long_path": ("d/" * 2100,),
            "empty": ("",),
            "hard": ("hard",),
            "fifo": ("fifo",),
            "dir": ("notes",),
        }
        for name, (p,) in cases.items():
            attempt(name, lambda: parent.read("vault", p))
        attempt("write_through_link", lambda: parent.write("vault", "to_secret", "PWNED"))
        attempt("create_through_dirlink", lambda: parent.write("vault", "dirlink/new", "x"))
        attempt("mkdir_through_dirlink", lambda: parent.mkdir("vault", "dirlink/sub"))
        attempt("rename_out", lambda: parent.rename("vault", "a.txt", "../stolen"))
        attempt("rename_into_link", lambda: parent.rename("vault", "a.txt", "dirlink/a"))
        attempt("remove_through_link", lambda: parent.remove("vault", "dirlink/keep"))
        attempt("list_link", lambda: parent.list("vault", "dirlink"))
        attempt("stat_link", lambda: parent.stat("vault", "to_secret"))
        attempt("list_dotdot", lambda: parent.list("vault", ".."))
        """.replace("OUTSIDE", repr(str(outside))),
    )
    o = run.out
    for name in (
        "dotdot",
        "dotdot_inner",
        "absolute",
        "symlink_out",
        "symlink_in",
        "symlink_rel",
        "through_dirlink",
        "nul",
        "long_name",
        "long_path",
        "empty",
        "hard",
        "fifo",
        "dir",
        "write_through_link",
        "create_through_dirlink",
        "mkdir_through_dirlink",
        "rename_out",
        "rename_into_link",
        "remove_through_link",
        "list_link",
        "stat_link",
        "list_dotdot",
    ):
        assert o[name][0] == "PermissionError", (name, o[name])
    assert "kernel" in o["symlink_in"][1]  # passed the string check; openat2 said no
    assert "hard links" in o["hard"][1]
    assert "fifo" in o["fifo"][1] and "dir" in o["dir"][1]
    assert outside.read_text() == "SECRET"
    assert not (tmp_path / "stolen").exists() and (vault / "a.txt").exists()
    assert list((tmp_path / "outdir").iterdir()) == []
    # Every refusal is recorded, whether by the string check or the kernel.
    denied = run.records(decision="deny")
    assert len(denied) >= 23
    assert any(r["path"] == "to_inside" and "kernel" in r["reason"] for r in denied)


def test_kernel_refuses_magic_links_and_mount_crossings(tmp_path: Path) -> None:
    """Roots no operator should configure, to show openat2 is the guard, not strings."""
    res = {
        **dir_resource(Path("/proc/self"), "proc"),  # the parent's /proc entry
        **dir_resource(Path("/"), "root"),
    }
    caps = ("proc:read", "proc:list", "root:read", "root:list")
    run = run_agent(
        tmp_path,
        make_policy(caps, res),
        """
        attempt("fd_magic", lambda: parent.read("proc", "fd/0"))
        attempt("root_magic", lambda: parent.read("proc", "root/etc/hostname"))
        attempt("exe_magic", lambda: parent.read("proc", "exe"))
        attempt("cwd_magic", lambda: parent.list("proc", "cwd"))
        attempt("status_plain", lambda: len(parent.read("proc", "status")) > 0)
        attempt("into_proc", lambda: parent.read("root", "proc/1/status"))
        attempt("list_proc", lambda: parent.list("root", "proc"))
        attempt("plain", lambda: len(parent.read("root", "etc/hostname")) >= 0)
        """,
    )
    o = run.out
    for name in ("fd_magic", "root_magic", "exe_magic", "cwd_magic", "into_proc", "list_proc"):
        assert o[name][0] == "PermissionError", (name, o[name])
        assert "kernel" in o[name][1]
    assert o["status_plain"] == ["ok", True]
    if (Path("/etc/hostname")).is_file() and os.stat("/etc/hostname").st_nlink == 1:
        assert o["plain"] == ["ok", True]


# ---------------------------------------------------------------- abuse of the channel

RAW_PRELUDE = (
    PRELUDE
    + """
import array, socket
from sandbox import wire
raw = parent._sock
def raw_send(data, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    raw.sendmsg([data], anc)
    reply, fd = wire.recv(raw, reply=True)
    if fd is not None:
        os.close(fd)
    return reply
"""
)


def test_malformed_frames_get_errors_and_the_broker_keeps_serving(
    tmp_path: Path, vault: Path
) -> None:
    before = set(os.listdir("/proc/self/fd"))
    run = run_agent(
        tmp_path,
        make_policy(("vault:read",), dir_resource(vault)),
        """
        r, w = os.pipe()
        r2, w2 = os.pipe()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        frames = {
            "garbage": (os.urandom(200), ()),
            "bad_utf8": (b'{"id": 1, "op": "\\xff\\xfe"}', ()),
            "not_object": (b'[1, 2, 3]', ()),
            "no_id": (b'{"op": "stat"}', ()),
            "bool_id": (b'{"id": true, "op": "stat"}', ()),
            "no_op": (b'{"id": 7}', ()),
            "deep": (b'[' * 30000 + b']' * 30000, ()),
            "oversized": (b'{"id": 8, "op": "stat", "x": "' + b"a" * 100000 + b'"}', ()),
            "two_fds": (b'{"id": 9, "op": "stat", "resource": "vault", "path": ""}', (r, w)),
            "fd_on_stat": (b'{"id": 10, "op": "stat", "resource": "vault", "path": ""}', (r2,)),
            "unknown_op": (b'{"id": 11, "op": "format_disk"}', ()),
        }
        for name, (data, fds) in frames.items():
            attempt(name, lambda: raw_send(data, fds))
        attempt("good", lambda: parent.read("vault", "a.txt").decode())
        """,
        prelude=RAW_PRELUDE,
    )
    o = run.out
    for name in (
        "garbage",
        "bad_utf8",
        "not_object",
        "no_id",
        "bool_id",
        "no_op",
        "deep",
        "oversized",
        "two_fds",
        "unknown_op",
    ):
        assert o[name][0] == "ok" and o[name][1]["ok"] is False, (name, o[name])
        assert o[name][1]["error"] == "ValueError", (name, o[name])
    assert "larger than" in o["oversized"][1]["message"]
    assert "descriptor" in o["two_fds"][1]["message"]
    assert "UTF-8" in o["bad_utf8"][1]["message"]
    assert o["fd_on_stat"][1]["ok"] is True  # served; the descriptor it carried was closed
    assert o["unknown_op"][1]["id"] == 11
    assert o["good"] == ["ok", "alpha"]
    assert run.records(op="format_disk", decision="deny")
    # Every descriptor the agent pushed at the parent was closed again.
    assert set(os.listdir("/proc/self/fd")) <= before | {"3"}


def test_flood_of_malformed_frames_closes_the_channel(tmp_path: Path, vault: Path) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("vault:read",), dir_resource(vault)),
        """
        sent = 0
        try:
            for i in range(1000):
                raw.send(b"not json")
                sent += 1
        except OSError:
            pass
        replies = 0
        try:
            while True:
                wire.recv(raw, reply=True)
                replies += 1
        except (wire.ChannelClosed, OSError):
            pass
        out["replies"] = replies
        try:
            parent.read("vault", "a.txt")
        except ConnectionError as e:  # BrokenPipeError or the client's own
            out["after"] = "ConnectionError"
        """,
        prelude=RAW_PRELUDE,
    )
    assert run.out["after"] == "ConnectionError"
    assert run.out["replies"] < 1000
    closed = run.records(op="channel")
    assert len(closed) == 1 and "abuse" in closed[0]["reason"]


def test_burst_of_1000_requests_all_answered(tmp_path: Path, vault: Path) -> None:
    run = run_agent(
        tmp_path,
        make_policy(("vault:read",), dir_resource(vault)),
        """
        import threading
        def sender():
            for i in range(1, 1001):
                wire.send(raw, {"id": i, "op": "stat", "resource": "vault", "path": "a.txt"})
        t = threading.Thread(target=sender)
        t.start()
        ids = []
        for _ in range(1000):
            reply, fd = wire.recv(raw, reply=True)
            assert reply["ok"], reply
            ids.append(reply["id"])
        t.join()
        out["ids"] = ids == list(range(1, 1001))
        attempt("good", lambda: parent.read("vault", "a.txt").decode())
        """,
        prelude=RAW_PRELUDE,
    )
    assert run.out["ids"] is True and run.out["good"] == ["ok", "alpha"]
    assert len(run.records(op="stat", decision="allow")) == 1000


def test_agent_that_never_reads_replies_loses_the_channel(tmp_path: Path, vault: Path) -> None:
    for i in range(300):  # large listings fill the parent's send buffer quickly
        (vault / "notes" / f"{'n' * 40}{i:04d}").touch()
    run = run_agent(
        tmp_path,
        make_policy(("vault:list", "vault:read"), dir_resource(vault)),
        """
        sent = 0
        try:
            for i in range(100000):
                wire.send(raw, {"id": i + 1, "op": "list", "resource": "vault", "path": "notes"})
                sent += 1
        except OSError as e:
            out["send_error"] = type(e).__name__
        out["sent"] = sent
        """,
        prelude=RAW_PRELUDE,
    )
    assert run.out["sent"] < 100000 and "send_error" in run.out
    closed = run.records(op="channel")
    assert len(closed) == 1 and "does not read its replies" in closed[0]["reason"]


def test_large_listing_comes_back_whole(tmp_path: Path, vault: Path) -> None:
    names = {f"{'x' * 100}{i:05d}" for i in range(2000)}  # ~230 KB of JSON: over a frame
    for n in names:
        (vault / "notes" / n).touch()
    run = run_agent(
        tmp_path,
        make_policy(("vault:list",), dir_resource(vault)),
        'attempt("list", lambda: [e.name for e in parent.list("vault", "notes")])',
    )
    assert set(run.out["list"][1]) == names | {"today.md"}


def test_audit_failure_refuses_every_request(tmp_path: Path, vault: Path) -> None:
    """A log that cannot be written: nothing is performed (fail closed)."""
    log = tmp_path / "audit.jsonl"
    audit = AuditLog(log, "test")
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, audit._fd)  # every write now fails with ENOSPC, as on a full disk
    os.close(full)
    parent_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = PRELUDE + textwrap.dedent(
        """
        attempt("write", lambda: parent.write("vault", "new.txt", "x"))
        attempt("read", lambda: parent.read("vault", "a.txt"))
        print(json.dumps(out))
        """
    )
    proc = spawn(code, agent_end)
    agent_end.close()
    loop = serve(Broker(parent_end, make_policy(ALL_DIR, dir_resource(vault)), audit, proc.pid, {}))
    stdout, _ = proc.communicate(timeout=60)
    loop.join(timeout=30)
    out = json.loads(stdout.splitlines()[-1])
    assert out["write"][0] == "OSError" and "audit log unavailable" in out["write"][1]
    assert out["read"][0] == "OSError" and "audit log unavailable" in out["read"][1]
    assert not (vault / "new.txt").exists()
    assert audit.broken is not None


def test_registered_op_gets_the_descriptor(tmp_path: Path, vault: Path) -> None:
    """The lead's extra operations (e.g. "lock") receive the descriptor sent with them."""
    seen: list[tuple[dict[str, Any], int]] = []
    log = tmp_path / "audit.jsonl"
    audit = AuditLog(log, "test")
    parent_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = PRELUDE + textwrap.dedent(
        """
        r, w = os.pipe()
        os.write(w, b"ping")
        attempt("lock", lambda: parent.request("lock", pledge="stdio", fd=r)[0])
        print(json.dumps(out))
        """
    )
    proc = spawn(code, agent_end)
    agent_end.close()
    broker = Broker(parent_end, make_policy((), dir_resource(vault)), audit, proc.pid, {})

    def lock(req: dict[str, Any], fd: int | None) -> tuple[dict[str, Any], int | None]:
        assert fd is not None
        seen.append((req, fd))
        return {"locked": os.read(fd, 4).decode()}, None

    broker.register("lock", lock)
    with pytest.raises(ValueError):
        broker.register("open", lock)
    loop = serve(broker)
    stdout, _ = proc.communicate(timeout=60)
    loop.join(timeout=30)
    out = json.loads(stdout.splitlines()[-1])
    assert out["lock"][0] == "ok" and out["lock"][1]["locked"] == "ping"
    assert seen and seen[0][0]["pledge"] == "stdio"
    os.close(seen[0][1])


def test_connect_outside_sandbox_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_BROKER_FD}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", "import sandbox; sandbox.connect()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "sandbox run" in proc.stderr
    assert "RuntimeError" in proc.stderr
