"""Bounded, seeded fuzzing of what the parent reads when it performs calls: random
arguments to every brokered call from a real agent (the parent must answer each with an
errno or a result, never die, and keep its log verifiable), and random bytes into the
parsers of control messages and of the performer's frames (a clean refusal, never another
exception, never a leaked descriptor).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from progs.kit import PY, Box, agent, make_box, results, sandboxed

from sandbox.parent import perform, performer

SEED = 20261201


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


FUZZ_AGENT = r"""
import random, struct
rnd = random.Random(int(sys.argv[2]))
KEEP = []
def buf(data):
    b = ctypes.create_string_buffer(data, max(1, len(data)))
    KEEP.append(b)
    return ctypes.addressof(b)
d = sys.argv[1]
paths = [os.fsencode(os.path.join(d, n)) + b"\0" for n in ("f", "sub/../f", "nope", "s.sock")]
paths += [b"/proc/self/fd/0\0", b"/proc/self/fd/999999\0", b"\0", b"/" * 5000, b"x" * 300]
def arg():
    kind = rnd.randrange(8)
    if kind == 0:
        return rnd.getrandbits(64) - (1 << 63)
    if kind == 1:
        return rnd.choice([0, -1, -100, 1, 3, 2**31 - 1, 2**32, 0x1000, 0x100])
    if kind in (2, 3):
        return buf(rnd.choice(paths))
    if kind == 4:
        return buf(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 300))))
    if kind == 5:  # a sockaddr_un
        return buf(struct.pack("=H", 1) + rnd.choice(paths)[:100])
    if kind == 6:  # a msghdr with random fields pointing at random buffers
        return buf(struct.pack("=QI4xQQQQi4x", buf(b"\1\0/tmp/x\0"), rnd.randrange(130),
                               buf(struct.pack("=QQ", buf(b"data"), rnd.randrange(1 << 20))),
                               rnd.randrange(3), buf(bytes(rnd.getrandbits(8) for _ in range(64))),
                               rnd.randrange(80), 0))
    return rnd.randrange(1 << 16)
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
calls = [90, 268, 452, 92, 94, 260, 132, 235, 261, 280, 188, 189, 197, 198, 463, 466,
         42, 44, 46, 307, 2, 257, 85, 91]  # (mknod of a device is never allowed: it kills)
answers = 0
for i in range(int(sys.argv[3])):
    nr = rnd.choice(calls)
    a = [arg() for _ in range(6)]
    if nr in (42, 44, 46, 307) and rnd.random() < 0.7:
        a[0] = s.fileno()
    raw(nr, *a)
    answers += 1
report(answers=answers)
"""


def test_random_arguments_to_every_brokered_call(box: Box) -> None:
    """A few hundred calls with random registers, pointers and buffers (random paths,
    sockaddrs, msghdrs): each is answered (the agent reaches its end), the parent records
    what it decided and its log verifies. Run under violation: errno, so refusals do not
    end the agent."""
    (box.x / "f").write_text("f")
    (box.x / "sub").mkdir()
    policy = {
        "version": 1,
        "pledge": "stdio rpath wpath cpath dpath fattr chown unix",
        "unveil": {str(box.x): "rwc"},
        "violation": "errno",
    }
    host = [os.stat("/dev/null")]
    for seed in (SEED, SEED + 1):
        # stdin a pipe of our own: the descriptor forms (fchmod of fd 0) are allowed
        # outright, and a root agent owns /dev/null.
        rfd, wfd = os.pipe()
        os.close(wfd)
        with os.fdopen(rfd, "rb") as stdin:
            r = sandboxed(
                box,
                [*agent(FUZZ_AGENT), str(box.x), str(seed), "300"],
                promises=None,
                policy=policy,
                stdin=stdin,
            )
        assert r.status == 0 and results(r.stdout) == {"answers": 300}, r
        assert r.of_kind("exit"), r
        p = subprocess.run(
            [PY, "-m", "sandbox", "audit", "verify", r.log], capture_output=True, text=True
        )
        assert p.returncode == 0, p
        # Nothing outside the tree was changed (the agent's stdin, /dev/null, is a target).
        allowed = [
            o["path"] for o in r.ops if o["decision"] == "allow" and o["resource"] == "unveil"
        ]
        assert all(p.startswith(str(box.x) + "/") for p in allowed), allowed
        assert os.stat("/dev/null").st_mode == host[0].st_mode
        assert not any(o.get("resource") == "internal" for o in r.ops), [
            o for o in r.ops if o.get("resource") == "internal"
        ]


def test_control_message_parser() -> None:
    """_cmsgs on random bytes: a Message or _Refused, and every descriptor it duplicated is
    released by Message.close()."""
    rnd = random.Random(SEED)
    before = _open_fds()
    me = os.getpid()
    for _ in range(2000):
        n = rnd.randrange(0, 120)
        raw = bytes(rnd.getrandbits(8) for _ in range(n))
        if rnd.random() < 0.5 and n >= 16:  # a well-formed header now and then
            length = rnd.choice([16, 20, 24, n, n + 8])
            raw = struct.pack("=QiI", length, 1, rnd.choice([1, 2, 3])) + raw[16:]
            if rnd.random() < 0.5:
                raw = raw[:16] + struct.pack("=i", rnd.choice([0, 1, 2, 999])) + raw[20:]
        m = perform.Message(b"")
        try:
            perform._cmsgs(me, raw, m)
        except perform._Refused as e:
            assert e.errno > 0
        finally:
            m.close()
    assert _open_fds() == before


def test_performer_frame_parser() -> None:
    """performer.recv on random frames (with and without descriptors): a header or
    ValueError, descriptors of a bad frame closed."""
    rnd = random.Random(SEED)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    before = _open_fds()
    try:
        for _ in range(1000):
            n = rnd.randrange(0, 200)
            data = bytes(rnd.getrandbits(8) for _ in range(n))
            if rnd.random() < 0.3:
                head = b'{"id": 1}' if rnd.random() < 0.5 else data[:20]
                data = struct.pack("=I", len(head)) + head + data
            if not data:
                data = b"\0"
            r, w = os.pipe()
            socket.send_fds(a, [data], [r] if rnd.random() < 0.5 else [])
            os.close(r)
            os.close(w)
            try:
                header, _, fds = performer.recv(b)
            except ValueError:
                continue
            assert isinstance(header, dict)
            for fd in fds:
                os.close(fd)
        assert _open_fds() == before
    finally:
        a.close()
        b.close()
