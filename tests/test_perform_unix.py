"""`unix` on a kernel without Landlock's resolve_unix (ABI < 9): the parent decides connect,
sendto and sendmsg/sendmmsg (SPEC section 8). It reads the address once, resolves a
pathname as the agent would, requires 'w' on the socket file (as unveil(2) asks), and
connects or sends on a duplicate of the agent's socket, to the inode it resolved (through
the performer's magic link of it), never to a name the agent could swap. Abstract sockets
are reached only inside the agent's own network namespace.

Each refusal is shown working without the sandbox first.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from progs.kit import Box, agent, assert_clean, make_box, ok_direct, results, sandboxed, show

from sandbox.enforce import landlock

pytestmark = pytest.mark.skipif(
    landlock.abi_version() >= 9,
    reason="Landlock resolve_unix (ABI 9) confines unix sockets itself; the parent stays out",
)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


class DgramServer:
    """A datagram socket bound to a path, collecting what arrives (and descriptors)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.got: list[bytes] = []
        self.fds: list[int] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except (TimeoutError, OSError):
                continue
            self.got.append(data)
            for level, typ, payload in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    self.fds += list(memoryview(payload).cast("i"))

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def outside(box: Box) -> Iterator[DgramServer]:
    d = box.root / "outside"
    d.mkdir()
    s = DgramServer(str(d / "dgram.sock"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def inside(box: Box) -> Iterator[DgramServer]:
    s = DgramServer(str(box.x / "dgram.sock"))
    try:
        yield s
    finally:
        s.close()


SEND = """
import socket, array
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
report(sendto=attempt(s.sendto, b"via-sendto", sys.argv[1]))
report(sendmsg=attempt(s.sendmsg, [b"via-", b"sendmsg"], [], 0, sys.argv[1]))
r, w = os.pipe()
os.write(w, b"through-the-fd")
rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))]
report(rights=attempt(s.sendmsg, [b"with-fd"], rights, 0, sys.argv[1]))
import struct
ucred = struct.pack("=iII", os.getpid(), os.getuid(), os.getgid())
creds = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, ucred)]
report(creds=attempt(s.sendmsg, [b"with-creds"], creds, 0, sys.argv[1]))
"""


def test_datagrams_to_a_socket_outside_are_refused(box: Box, outside: DgramServer) -> None:
    cmd = [*agent(SEND), outside.path]
    direct = ok_direct(cmd)
    assert direct["sendto"] == 10 and direct["rights"] == 7, direct
    assert b"via-sendto" in outside.got  # the escape works without the sandbox
    outside.got.clear()
    r = sandboxed(box, cmd, promises="stdio rpath unix", unveil=[f"{box.x}:rwc"])
    got = assert_clean(r)
    assert got["sendto"] == got["sendmsg"] == got["rights"] == "EACCES", show(r)
    assert outside.got == []
    denied = [o for o in r.ops if o["decision"] == "deny"]
    assert denied and all(o["path"] == outside.path for o in denied), r.ops


def test_datagrams_to_a_socket_inside_arrive(box: Box, inside: DgramServer) -> None:
    """Inside the unveil ('w'): sendto and sendmsg are performed, an SCM_RIGHTS descriptor
    arrives as the agent's own (the parent duplicated it); SCM_CREDENTIALS is refused with
    EPERM (the kernel accepts only the sender's own pid, and the performer is another
    process), as the README says."""
    r = sandboxed(
        box, [*agent(SEND), inside.path], promises="stdio rpath unix", unveil=[f"{box.x}:rwc"]
    )
    got = assert_clean(r)
    assert got == {"sendto": 10, "sendmsg": 11, "rights": 7, "creds": "EPERM"}, show(r)
    import time

    deadline = time.monotonic() + 5
    while len(inside.got) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inside.got[:3] == [b"via-sendto", b"via-sendmsg", b"with-fd"], inside.got
    assert len(inside.fds) == 1 and os.read(inside.fds[0], 64) == b"through-the-fd"


def test_sendmmsg_is_performed_message_by_message(box: Box, inside: DgramServer) -> None:
    body = """
    import ctypes, socket, struct
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(sys.argv[1])
    bufs = [ctypes.create_string_buffer(b) for b in (b"one", b"two!")]
    iovs = [struct.pack("=QQ", ctypes.addressof(b), len(b.value)) for b in bufs]
    iovbuf = [ctypes.create_string_buffer(v) for v in iovs]
    vec = b"".join(struct.pack("=QI4xQQQQi4xI4x", 0, 0, ctypes.addressof(iovbuf[i]), 1, 0, 0, 0, 0)
                   for i in range(2))
    mm = ctypes.create_string_buffer(vec)
    n = raw(307, s.fileno(), ctypes.addressof(mm), 2, 0)
    lens = [struct.unpack_from("=I", mm.raw, 64 * i + 56)[0] for i in range(2)]
    report(n=n, lens=lens)
    """
    r = sandboxed(
        box, [*agent(body), inside.path], promises="stdio rpath unix", unveil=[f"{box.x}:rwc"]
    )
    assert assert_clean(r) == {"n": 2, "lens": [3, 4]}, show(r)


STDIO_PAIR = """
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
report(sent=attempt(a.sendmsg, [b"out-of-the-pair"], [], 0, sys.argv[1]))
"""


def test_a_datagram_socketpair_needs_unix(box: Box, outside: DgramServer) -> None:
    """Without resolve_unix a socketpair's datagram socket reaches any pathname socket
    through sendmsg's address (the filter cannot read a msghdr): stdio keeps stream and
    seqpacket pairs; a datagram pair needs 'unix' (whose sendmsg the parent decides)."""
    cmd = [*agent(STDIO_PAIR), outside.path]
    assert ok_direct(cmd) == {"sent": 15}
    assert b"out-of-the-pair" in outside.got  # the escape works without the sandbox
    outside.got.clear()
    policy = {"version": 1, "pledge": "stdio rpath", "violation": "errno"}
    r = sandboxed(box, cmd, promises=None, policy=policy)
    assert r.status != 0 or results(r.stdout) != {"sent": 15}, show(r)
    assert any(v["syscall"] == "socketpair" for v in r.violations), r.violations
    assert outside.got == []
    # stream pairs stay with stdio
    body = (
        "import socket\na, b = socket.socketpair()\na.sendall(b'x')\nreport(got=b.recv(1).decode())"
    )
    assert assert_clean(sandboxed(box, agent(body), promises="stdio rpath")) == {"got": "x"}
    # and under 'unix' the datagram pair works, its sendmsg decided by the parent
    r2 = sandboxed(box, cmd, promises="stdio rpath unix", unveil=[f"{box.x}:rwc"])
    assert assert_clean(r2) == {"sent": "EACCES"}, show(r2)


def test_connected_stream_sockets_work_through_the_parent(box: Box) -> None:
    """sendmsg on a connected stream socket (no address) is performed too: large writes
    arrive whole (sendall copes with the parent's short writes), a closed peer gives
    EPIPE."""
    body = """
    import socket, threading
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = os.path.join(sys.argv[1], "s.sock")
    srv.bind(path)
    srv.listen(1)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    conn, _ = srv.accept()
    data = bytes(range(256)) * 2048  # 512 KiB
    got = bytearray()
    def reader():
        while len(got) < len(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
    t = threading.Thread(target=reader); t.start()
    sent = 0
    view = memoryview(data)
    while sent < len(data):
        sent += c.sendmsg([view[sent:]])
    t.join()
    report(whole=bytes(got) == data)
    conn.close()
    report(pipe=attempt(lambda: [c.sendmsg([b"x"]) for _ in range(3)]))
    """
    r = sandboxed(
        box,
        [*agent(body), str(box.x)],
        promises="stdio rpath cpath unix thread",
        unveil=[f"{box.x}:rwc"],
    )
    got = assert_clean(r)
    assert got == {"whole": True, "pipe": "EPIPE"}, show(r)


def test_abstract_sockets_with_inet_are_refused(box: Box) -> None:
    """With 'inet' the agent shares the host's network namespace, where the parent cannot
    tell the sandbox's own abstract sockets from others: abstract connects are refused
    (EPERM, recorded). Without 'inet' they work in the agent's own namespace (see
    test_escapes.py)."""
    name = f"\0outheis-perform-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(1)
    body = """
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    report(connect=attempt(s.connect, sys.argv[1].replace("@", "\\0", 1)))
    """
    cmd = [*agent(body), "@" + name[1:]]
    try:
        assert ok_direct(cmd) == {"connect": "ok"}
        r = sandboxed(box, cmd, promises="stdio rpath inet unix")
    finally:
        srv.close()
    assert assert_clean(r) == {"connect": "EPERM"}, show(r)
    assert [o["decision"] for o in r.ops if o["resource"] == "unix"] == ["deny"]


def test_tcp_with_unix_is_performed_within_the_ports(box: Box) -> None:
    """With 'unix' and 'inet' every connect goes to the parent (the filter cannot tell the
    families apart); a TCP connect is made by the performer, which holds the agent's
    Landlock port rules: the port the policy lists connects, another is refused."""
    allowed = socket.socket()
    allowed.bind(("127.0.0.1", 0))
    allowed.listen(4)
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(4)
    body = """
    import socket
    def conn(port):
        s = socket.socket()
        s.connect(("127.0.0.1", int(port)))
        return "ok"
    report(allowed=attempt(conn, sys.argv[1]), other=attempt(conn, sys.argv[2]))
    """
    ports = [str(allowed.getsockname()[1]), str(other.getsockname()[1])]
    policy = {"version": 1, "pledge": "stdio rpath inet unix",
              "network": {"connect": [int(ports[0])]}}  # fmt: skip
    try:
        assert ok_direct([*agent(body), *ports]) == {"allowed": "ok", "other": "ok"}
        r = sandboxed(box, [*agent(body), *ports], promises=None, policy=policy)
    finally:
        allowed.close()
        other.close()
    assert assert_clean(r) == {"allowed": "ok", "other": "EACCES"}, show(r)


def test_a_blocking_connect_does_not_stop_the_parent(box: Box) -> None:
    """A connect that blocks (a listener whose backlog is full) waits in the performer, not
    in the parent: meanwhile the agent's other calls are served, and the agent ends."""
    body = """
    import socket, threading, time
    path = os.path.join(sys.argv[1], "full.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    fill = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    for s in fill:
        s.setblocking(False)
        attempt(s.connect, path)
    blocked = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    threading.Thread(target=lambda: attempt(blocked.connect, path), daemon=True).start()
    time.sleep(0.3)
    a, b = socket.socketpair()
    a.sendmsg([b"still-served"])
    report(other=b.recv(64).decode())
    os._exit(0)
    """
    r = sandboxed(
        box,
        [*agent(body), str(box.x)],
        promises="stdio rpath cpath unix thread",
        unveil=[f"{box.x}:rwc"],
    )
    assert assert_clean(r) == {"other": "still-served"}, show(r)
