"""unveil on the real kernel: every permission letter on directories and files, both sides
(with the letter the operation works, without it Landlock refuses it with EACCES), the
edge cases (empty permissions, missing paths, nested unveils, renames across directories)
and Landlock's TCP rules (network.connect / network.bind), with 'inet' and 'dns'.

Each run is a real `sandbox run` of the venv Python; the operations print the errno name
they got (see tests/progs/kit.py).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from progs.kit import (
    PROGS_SRC,
    Box,
    agent,
    assert_clean,
    assert_killed,
    compile_c,
    direct,
    make_box,
    ok_direct,
    results,
    sandboxed,
    show,
)

ALL_FS = "stdio rpath wpath cpath exec"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


@pytest.fixture(scope="session")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program that prints HELLO-RAN and exits 42."""
    return compile_c(PROGS_SRC / "hello.c", tmp_path_factory.mktemp("unveil-progs") / "hello")


# --------------------------------------------------------------------------- letters on a dir

# Operation -> the letters it needs on the directory. 'create' opens O_CREAT|O_WRONLY,
# so it needs c (make the file) and w (open it for writing). 'exec' needs r as well as x:
# Landlock checks the open of the program, which the kernel makes for reading, so under
# Landlock unveil "x" alone cannot run anything (OpenBSD's can); see test_x_alone_cannot_exec.
NEEDS: Mapping[str, frozenset[str]] = {
    "read": frozenset("r"),
    "list": frozenset("r"),
    "write": frozenset("w"),
    "trunc": frozenset("w"),
    "create": frozenset("cw"),
    "mkdir": frozenset("c"),
    "symlink": frozenset("c"),
    "unlink": frozenset("c"),
    "rmdir": frozenset("c"),
    "rename": frozenset("c"),
    "exec": frozenset("rx"),
}

DIR_OPS = """
d = sys.argv[1]
j = lambda name: os.path.join(d, name)
def write():
    fd = os.open(j("file.txt"), os.O_WRONLY)
    os.write(fd, b"W")
    os.close(fd)
def trunc():
    os.close(os.open(j("trunc.txt"), os.O_WRONLY | os.O_TRUNC))
def create():
    os.close(os.open(j("new.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
report(read=attempt(lambda: read(j("file.txt")) and None))
report(list=attempt(lambda: os.listdir(d) and None))
report(write=attempt(write))
report(trunc=attempt(trunc))
report(create=attempt(create))
report(mkdir=attempt(os.mkdir, j("newdir")))
report(symlink=attempt(os.symlink, "file.txt", j("newlink")))
report(unlink=attempt(os.unlink, j("victim.txt")))
report(rmdir=attempt(os.rmdir, j("emptydir")))
report(rename=attempt(os.rename, j("ren_a.txt"), j("ren_b.txt")))
report(exec=attempt(os.execv, j("prog"), [j("prog")]))  # last: on success it never returns
"""


def populate(d: Path, hello: Path) -> None:
    d.mkdir(exist_ok=True)
    (d / "file.txt").write_text("data")
    (d / "trunc.txt").write_text("to be truncated")
    (d / "victim.txt").write_text("to be removed")
    (d / "ren_a.txt").write_text("to be renamed")
    (d / "emptydir").mkdir()
    shutil.copy2(hello, d / "prog")


def expected(perms: str) -> dict[str, str]:
    return {op: "ok" if need <= set(perms) else "EACCES" for op, need in NEEDS.items()}


def test_dir_ops_all_work_unsandboxed(box: Box, hello: Path) -> None:
    populate(box.x, hello)
    p = direct([*agent(DIR_OPS), str(box.x)])
    assert p.returncode == 42 and "HELLO-RAN" in p.stdout, p
    assert results(p.stdout) == {op: "ok" for op in NEEDS if op != "exec"}


@pytest.mark.parametrize("perms", ["", "r", "w", "x", "c", "rw", "wc", "rx", "rwc", "rwxc"])
def test_permission_letters_on_a_directory(box: Box, hello: Path, perms: str) -> None:
    populate(box.x, hello)
    r = sandboxed(box, [*agent(DIR_OPS), str(box.x)], promises=ALL_FS, unveil=[f"{box.x}:{perms}"])
    want = expected(perms)
    got = results(r.stdout)
    assert not r.violations, show(r)
    if want.pop("exec") == "ok":
        assert r.status == 42 and "HELLO-RAN" in r.stdout, show(r)
        assert got == want
    else:
        assert r.status == 0, show(r)
        assert got == {**want, "exec": "EACCES"}
    # What the kernel refused did not happen.
    assert (box.x / "victim.txt").exists() == ("c" not in perms)
    assert (box.x / "trunc.txt").read_text() == ("" if "w" in perms else "to be truncated")


def test_x_alone_cannot_exec(box: Box, hello: Path) -> None:
    """Pins a difference from OpenBSD: Landlock refuses the exec of a program whose file is
    not readable (the kernel opens it for reading), so a program needs 'rx'."""
    shutil.copy2(hello, box.x / "prog")
    cmd = [
        *agent("report(exec=attempt(os.execv, sys.argv[1], [sys.argv[1]]))"),
        str(box.x / "prog"),
    ]
    r = sandboxed(box, cmd, promises="stdio rpath exec", unveil=[f"{box.x}:x"])
    assert assert_clean(r) == {"exec": "EACCES"}
    r = sandboxed(box, cmd, promises="stdio rpath exec", unveil=[f"{box.x}:rx"])
    assert r.status == 42 and "HELLO-RAN" in r.stdout, show(r)


def test_truncate_on_open_needs_w_not_only_trunc_right(box: Box) -> None:
    """O_TRUNC on a file opened for reading (Linux allows it) is a write: refused with 'r'."""
    (box.x / "f.txt").write_text("keep me")
    body = """
    report(rdonly_trunc=attempt(lambda: os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC))))
    report(truncate=attempt(os.truncate, sys.argv[1], 0))
    """
    cmd = [*agent(body), str(box.x / "f.txt")]
    assert ok_direct(cmd) == {"rdonly_trunc": "ok", "truncate": "ok"}
    (box.x / "f.txt").write_text("keep me")
    got = assert_clean(sandboxed(box, cmd, promises="stdio rpath wpath", unveil=[f"{box.x}:r"]))
    assert got == {"rdonly_trunc": "EACCES", "truncate": "EACCES"}
    assert (box.x / "f.txt").read_text() == "keep me"
    got = assert_clean(sandboxed(box, cmd, promises="stdio rpath wpath", unveil=[f"{box.x}:rw"]))
    assert got == {"rdonly_trunc": "ok", "truncate": "ok"}


# --------------------------------------------------------------------------- letters on a file

FILE_OPS = """
f = sys.argv[1]
def write():
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
report(read=attempt(lambda: read(f) and None))
report(write=attempt(write))
report(sibling=attempt(lambda: read(os.path.join(os.path.dirname(f), "sibling.txt")) and None))
report(list=attempt(lambda: os.listdir(os.path.dirname(f)) and None))
report(exec=attempt(os.execv, f, [f]))
"""


@pytest.mark.parametrize(
    ("perms", "want"),
    [
        ("r", {"read": "ok", "write": "EACCES", "exec": "EACCES"}),
        ("w", {"read": "EACCES", "write": "ok", "exec": "EACCES"}),
        ("rw", {"read": "ok", "write": "ok", "exec": "EACCES"}),
        ("rx", {"read": "ok", "write": "EACCES", "exec": "ran"}),
        ("", {"read": "EACCES", "write": "EACCES", "exec": "EACCES"}),
    ],
)
def test_permission_letters_on_a_file(
    box: Box, hello: Path, perms: str, want: dict[str, str]
) -> None:
    """A single file unveiled: its own rights apply, its siblings and directory stay hidden."""
    target = box.x / "prog"
    shutil.copy2(hello, target)
    (box.x / "sibling.txt").write_text("hidden")
    r = sandboxed(
        box, [*agent(FILE_OPS), str(target)], promises=ALL_FS, unveil=[f"{target}:{perms}"]
    )
    got = results(r.stdout)
    assert not r.violations, show(r)
    assert got["read"] == want["read"] and got["write"] == want["write"], show(r)
    assert got["sibling"] == "EACCES" and got["list"] == "EACCES", show(r)
    if want["exec"] == "ran":
        assert r.status == 42 and "HELLO-RAN" in r.stdout, show(r)
    else:
        assert r.status == 0 and got["exec"] == want["exec"], show(r)


# --------------------------------------------------------------------------- outside the tree

OUTSIDE_OPS = """
o = sys.argv[1]
report(unlink=attempt(os.unlink, os.path.join(o, "file.txt")))
report(rmdir=attempt(os.rmdir, os.path.join(o, "emptydir")))
report(rename=attempt(os.rename, os.path.join(o, "a.txt"), os.path.join(o, "b.txt")))
report(mkdir=attempt(os.mkdir, os.path.join(o, "newdir")))
report(create=attempt(lambda: os.close(os.open(os.path.join(o, "n"), os.O_CREAT | os.O_WRONLY))))
"""


def make_outside(box: Box) -> Path:
    o = box.root / "outside"
    o.mkdir(exist_ok=True)
    (o / "file.txt").write_text("x")
    (o / "a.txt").write_text("x")
    (o / "a.txt").chmod(0o644)
    (o / "emptydir").mkdir(exist_ok=True)
    return o


def test_remove_and_rename_outside_the_unveiled_tree_refused(box: Box) -> None:
    """unlink, rmdir and rename of paths outside every unveil are refused (Cosmopolitan's
    Landlock port once let unlink/rmdir through): the agent has cpath and an rwc tree."""
    o = make_outside(box)
    cmd = [*agent(OUTSIDE_OPS), str(o)]
    assert set(ok_direct(cmd).values()) == {"ok"}
    shutil.rmtree(o)
    make_outside(box)
    r = sandboxed(box, cmd, promises="stdio rpath wpath cpath", unveil=[f"{box.x}:rwc"])
    got = assert_clean(r)
    assert got == {k: "EACCES" for k in got} and len(got) == 5, got
    assert (o / "file.txt").exists() and (o / "emptydir").is_dir() and (o / "a.txt").exists()


# --------------------------------------------------------------------------- edge cases


def test_empty_permissions_hide_the_path(box: Box) -> None:
    (box.x / "f.txt").write_text("x")
    body = """
    report(read=attempt(lambda: read(os.path.join(sys.argv[1], "f.txt")) and None))
    report(list=attempt(lambda: os.listdir(sys.argv[1]) and None))
    """
    cmd = [*agent(body), str(box.x)]
    assert ok_direct(cmd) == {"read": "ok", "list": "ok"}
    got = assert_clean(sandboxed(box, cmd, unveil=[f"{box.x}:"]))
    assert got == {"read": "EACCES", "list": "EACCES"}


def test_nonexistent_path_is_an_error(box: Box) -> None:
    missing = box.root / "no-such-dir"
    r = sandboxed(box, agent("report(ran=True)"), unveil=[f"{missing}:r"])
    assert r.status in (2, 3) and "ran" not in results(r.stdout), show(r)
    assert str(missing) in r.stderr and not r.of_kind("start"), show(r)


def test_nonexistent_path_in_policy_is_an_error_with_location(box: Box) -> None:
    missing = box.root / "no-such-dir"
    r = sandboxed(
        box,
        agent("report(ran=True)"),
        promises=None,
        policy={"version": 1, "pledge": "stdio rpath", "unveil": {str(missing): "r"}},
    )
    assert r.status == 2 and "ran" not in results(r.stdout), show(r)
    assert str(missing) in r.stderr and ".yaml:" in r.stderr, show(r)


def test_optional_nonexistent_path_is_skipped(box: Box) -> None:
    missing = box.root / "no-such-dir"
    (box.x / "f.txt").write_text("x")
    body = "report(read=attempt(lambda: read(sys.argv[1]).decode()))"
    r = sandboxed(
        box,
        [*agent(body), str(box.x / "f.txt")],
        promises=None,
        policy={
            "version": 1,
            "pledge": "stdio rpath",
            "unveil": {str(missing): {"perms": "r", "optional": True}, str(box.x): "r"},
        },
    )
    assert assert_clean(r) == {"read": "x"}


NESTED = """
for d in sys.argv[1:]:
    def w(d=d):
        fd = os.open(os.path.join(d, "f.txt"), os.O_WRONLY)
        os.write(fd, b"W")
        os.close(fd)
    name = os.path.basename(d)
    r = attempt(lambda d=d: read(os.path.join(d, "f.txt")) and None)
    report(**{name + "_read": r, name + "_write": attempt(w)})
"""


@pytest.mark.parametrize(
    ("outer", "inner", "want"),
    [
        # A wider subdir inside a narrower tree: the subdir gets its own rights.
        ("r", "rw", {"outer_write": "EACCES", "inner_write": "ok"}),
        # A narrower subdir inside a wider tree: Landlock grants the UNION of every rule on
        # the path, so the subdir keeps the outer rights. OpenBSD's unveil would make it
        # read-only (the closest unveil decides). This pins what the kernel does.
        ("rw", "r", {"outer_write": "ok", "inner_write": "ok"}),
        # unveil(sub, "") inside a readable tree does not hide it under Landlock.
        ("r", "", {"outer_write": "EACCES", "inner_write": "EACCES", "inner_read": "ok"}),
    ],
)
def test_nested_unveils_grant_the_union(
    box: Box, outer: str, inner: str, want: dict[str, str]
) -> None:
    outer_dir = box.x / "outer"
    inner_dir = outer_dir / "inner"
    inner_dir.mkdir(parents=True)
    for d in (outer_dir, inner_dir):
        (d / "f.txt").write_text("x")
    r = sandboxed(
        box,
        [*agent(NESTED), str(outer_dir), str(inner_dir)],
        promises="stdio rpath wpath",
        unveil=[f"{outer_dir}:{outer}", f"{inner_dir}:{inner}"],
    )
    got = assert_clean(r)
    assert got["outer_read"] == "ok" and got["inner_read"] == "ok"
    for key, value in want.items():
        assert got[key] == value, (key, got)


RENAME = """
src, dst = sys.argv[1], sys.argv[2]
report(rename=attempt(os.rename, src, dst))
report(link=attempt(os.link, dst if os.path.exists(dst) else src, dst + ".link"))
"""


@pytest.mark.parametrize("noexec", [True, False], ids=["noexec-mounts", "prot_exec"])
@pytest.mark.parametrize(
    ("src_perms", "dst_perms", "want"),
    [
        ("rwc", "rwc", "ok"),
        ("rwc", "rw", "EACCES"),  # no 'c' where the file would appear
        ("rw", "rwc", "EACCES"),  # no 'c' where the file would disappear
        ("rwc", None, "EACCES"),  # destination not unveiled
        ("rwc", "rwcx", "EXDEV"),  # the file would gain 'x': REFER refuses
    ],
)
def test_rename_across_directories(
    box: Box, src_perms: str, dst_perms: str | None, want: str, noexec: bool
) -> None:
    """rename(2) and link(2) between two unveiled directories: Landlock's REFER right (part
    of 'c') allows them where the destination grants no more than the source.

    Without 'prot_exec' the writable paths are noexec bind mounts, one per unveiled path;
    the kernel never renames across mounts, so there every refusal is EXDEV, and the
    allowed case is expected to work as well (it is what the policy grants)."""
    a, b = box.x / "a", box.x / "b"
    a.mkdir()
    b.mkdir()
    (a / "f.txt").write_text("moving")
    cmd = [*agent(RENAME), str(a / "f.txt"), str(b / "f.txt")]
    unveil = [f"{a}:{src_perms}"] + ([f"{b}:{dst_perms}"] if dst_perms is not None else [])
    promises = "stdio rpath wpath cpath" + ("" if noexec else " prot_exec")
    r = sandboxed(box, cmd, promises=promises, unveil=unveil)
    got = assert_clean(r)
    if noexec and want != "ok":
        assert got["rename"] in {want, "EXDEV"}, got
    else:
        assert got["rename"] == want, got
    if want == "ok":
        assert got["link"] == "ok", got
    assert (b / "f.txt").exists() == (want == "ok")
    assert (a / "f.txt").exists() == (want != "ok")


def test_rename_outside_into_tree_refused(box: Box) -> None:
    """Moving an outside file into the tree would steal it: refused (EACCES from Landlock
    when both lie on one noexec mount, EXDEV when they lie on different mounts or Landlock
    lacks REFER on the source), and the file stays where it was."""
    cmd = [*agent(RENAME), str(box.secret), str(box.x / "stolen")]
    got = assert_clean(
        sandboxed(box, cmd, promises="stdio rpath wpath cpath", unveil=[f"{box.x}:rwc"])
    )
    assert got["rename"] in {"EACCES", "EXDEV"} and got["link"] in {"EACCES", "EXDEV"}, got
    assert box.secret.exists() and not (box.x / "stolen").exists()


# --------------------------------------------------------------------------- TCP


class Listener:
    """A TCP server on 127.0.0.1 in the test process; accepts are left to the backlog."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    a, b = Listener(), Listener()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


TCP = """
import socket
def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
def bind(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
for arg in sys.argv[1:]:
    op, port = arg.split(":")
    report(**{arg: attempt({"connect": connect, "bind": bind}[op], int(port))})
"""


def net_policy(
    network: Mapping[str, list[int]], pledge: str = "stdio rpath inet"
) -> dict[str, object]:
    return {"version": 1, "pledge": pledge, "network": dict(network)}


def test_network_connect_port_rule(box: Box, listeners: tuple[Listener, Listener]) -> None:
    allowed, other = listeners
    cmd = [*agent(TCP), f"connect:{allowed.port}", f"connect:{other.port}"]
    assert set(ok_direct(cmd).values()) == {"ok"}
    r = sandboxed(box, cmd, promises=None, policy=net_policy({"connect": [allowed.port]}))
    got = assert_clean(r)
    assert got == {f"connect:{allowed.port}": "ok", f"connect:{other.port}": "EACCES"}
    assert r.of_kind("start")[0]["enforced"]["landlock"]["tcp"] is True


def test_network_bind_port_rule(box: Box) -> None:
    allowed, other = free_port(), free_port()
    cmd = [*agent(TCP), f"bind:{allowed}", f"bind:{other}"]
    assert set(ok_direct(cmd).values()) == {"ok"}
    got = assert_clean(
        sandboxed(box, cmd, promises=None, policy=net_policy({"bind": [allowed], "connect": []}))
    )
    assert got == {f"bind:{allowed}": "ok", f"bind:{other}": "EACCES"}


def test_bind_rule_does_not_allow_connect(box: Box, listeners: tuple[Listener, Listener]) -> None:
    target, _ = listeners
    cmd = [*agent(TCP), f"connect:{target.port}"]
    got = assert_clean(
        sandboxed(box, cmd, promises=None, policy=net_policy({"bind": [target.port]}))
    )
    assert got == {f"connect:{target.port}": "EACCES"}


def test_inet_without_network_rules_leaves_tcp_open(
    box: Box, listeners: tuple[Listener, Listener]
) -> None:
    """'inet' with no `network:` section: Landlock does not restrict TCP ports (the policy
    did not ask); the pledge is what allows sockets."""
    a, b = listeners
    cmd = [*agent(TCP), f"connect:{a.port}", f"connect:{b.port}"]
    got = assert_clean(sandboxed(box, cmd, promises="stdio rpath inet"))
    assert set(got.values()) == {"ok"}


UDP = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
report(sendto=attempt(s.sendto, b"ping", ("127.0.0.1", int(sys.argv[1]))))
"""


def test_udp_is_not_restricted_by_landlock(box: Box, listeners: tuple[Listener, Listener]) -> None:
    """A documented limit: Landlock's network rules cover TCP only; with 'inet' UDP goes
    to any port even when network.connect lists ports."""
    allowed, _ = listeners
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        r = sandboxed(
            box,
            [*agent(UDP), str(port)],
            promises=None,
            policy=net_policy({"connect": [allowed.port]}),
        )
        assert assert_clean(r) == {"sendto": 4}
        assert server.recv(16) == b"ping"


def test_no_inet_socket_is_a_violation(box: Box, listeners: tuple[Listener, Listener]) -> None:
    a, _ = listeners
    cmd = [*agent(TCP), f"connect:{a.port}"]
    assert ok_direct(cmd) == {f"connect:{a.port}": "ok"}
    r = sandboxed(box, cmd, promises="stdio rpath")
    assert not results(r.stdout)
    assert_killed(r, "socket", "inet")


DNS_CONNECT = """
import socket
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.settimeout(5)
report(connect=attempt(s.connect, (host, port)))
"""


def nameserver() -> str | None:
    with contextlib.suppress(OSError), open("/etc/resolv.conf") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                return parts[1]
    return None


def test_dns_allows_udp_to_the_nameserver(box: Box) -> None:
    """As root the agent's nameserver is the parent's relay, 127.0.0.1:53 in the agent's own
    network namespace (tests/test_dns.py resolves names through it); the host's own
    nameserver is not reachable from there."""
    ns = nameserver()
    if ns is None:
        pytest.skip("no IPv4 nameserver in /etc/resolv.conf")
    relay = [*agent(DNS_CONNECT), "udp", "127.0.0.1", "53"]
    host = [*agent(DNS_CONNECT), "udp", ns, "53"]
    assert ok_direct(host) == {"connect": "ok"}  # a UDP connect sends nothing
    assert assert_clean(sandboxed(box, relay, promises="stdio rpath dns")) == {"connect": "ok"}
    assert_killed(sandboxed(box, host, promises="stdio rpath dns"), "connect", "inet")


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_dns_refuses_other_addresses(
    box: Box, listeners: tuple[Listener, Listener], kind: str
) -> None:
    """With 'dns' and no 'inet', a connect to anything but a nameserver's port 53 is a
    violation recorded by the parent (which performs the allowed ones itself)."""
    a, _ = listeners
    cmd = [*agent(DNS_CONNECT), kind, "127.0.0.1", str(a.port)]
    assert ok_direct(cmd) == {"connect": "ok"}
    r = sandboxed(box, cmd, promises="stdio rpath dns")
    assert "connect" not in results(r.stdout)
    rec = assert_killed(r, "connect", "inet")
    assert "127.0.0.1" in rec["args"] or str(a.port) in rec.get("note", ""), rec
