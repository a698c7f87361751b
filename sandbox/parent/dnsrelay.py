"""The promise 'dns' without 'inet': names resolve, and nothing else leaves.

The agent's child makes the network namespace: as root directly, as an ordinary user with
the capabilities of the agent's own user namespace (sandbox.parent.reaper), which also
cover bringing loopback up and binding port 53 in it.

A filter can check connect() and sendto() (the parent performs them, see dnsproxy), but not
sendmsg()/sendmmsg() with a destination inside their msghdr: a UDP socket the agent may
create for DNS could send datagrams anywhere that way. So the agent gets a network
namespace of its own with nothing but loopback, and a resolv.conf naming 127.0.0.1 (bind-
mounted in its mount namespace). Its child creates, before the lock, a UDP socket bound to
127.0.0.1:53 inside that namespace and hands it to the parent, which relays each query to
the host's nameserver and records the name asked for. Whatever address the agent sends
to, only loopback exists.

What remains: DNS itself can carry data in the names queried (tunnelling); each name is in
the audit log.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections import OrderedDict

from sandbox.errors import SetupError
from sandbox.libc import libc as _libc
from sandbox.parent.audit import AuditError, AuditLog
from sandbox.parent.dnsproxy import nameservers

CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
MAX_DATAGRAM = 4096
MAX_PENDING = 256
UPSTREAM_ENV = "SANDBOX_DNS_UPSTREAM"  # host:port, for tests and unusual hosts
RESOLV_CONF_TEXT = "nameserver 127.0.0.1\noptions attempts:2 timeout:2\n"


def isolate_network() -> socket.socket:
    """In the child, before its capabilities go: a new network namespace with loopback up,
    and the relay's socket on 127.0.0.1:53 in it."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise SetupError(f"unshare(CLONE_NEWNET) for dns: {os.strerror(ctypes.get_errno())}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING)
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, ifreq)
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 53))
    return relay


def upstream(environ: dict[str, str] | os._Environ[str]) -> tuple[str, int] | None:
    override = environ.get(UPSTREAM_ENV)
    if override:
        host, _, port = override.rpartition(":")
        return host, int(port)
    servers = sorted(nameservers())
    return (servers[0], 53) if servers else None


def query_name(packet: bytes) -> str:
    """The first question's name of a DNS query, for the record (best effort, bounded)."""
    labels: list[str] = []
    i = 12
    while i < len(packet) and len(labels) < 128:
        n = packet[i]
        if n == 0 or n & 0xC0:
            break
        labels.append(packet[i + 1 : i + 1 + n].decode("ascii", "backslashreplace"))
        i += 1 + n
    return ".".join(labels)[:512]


class DnsRelay:
    """Datagrams from the agent's namespace to the upstream nameserver and back."""

    def __init__(
        self, inner: socket.socket, upstream_addr: tuple[str, int], audit: AuditLog, pid: int
    ) -> None:
        self.inner = inner
        self.inner.setblocking(False)
        family = socket.AF_INET6 if ":" in upstream_addr[0] else socket.AF_INET
        self.outer = socket.socket(family, socket.SOCK_DGRAM)
        self.outer.setblocking(False)
        self.outer.connect(upstream_addr)
        self.audit = audit
        self.pid = pid
        self.pending: OrderedDict[bytes, tuple[str, int]] = OrderedDict()

    def on_query(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.inner.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < 12:
                continue
            name = query_name(data)
            try:
                self.audit.record(
                    "op",
                    pid=self.pid,
                    op="dns",
                    resource="dns",
                    path=name,
                    decision="allow",
                    reason="promise 'dns'",
                )
            except (AuditError, ValueError):
                continue  # write-ahead: an unrecorded query is not sent
            self.pending[data[:2]] = addr
            while len(self.pending) > MAX_PENDING:
                self.pending.popitem(last=False)
            with contextlib.suppress(OSError):
                self.outer.send(data)

    def on_answer(self) -> None:
        for _ in range(64):
            try:
                data = self.outer.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            addr = self.pending.pop(data[:2], None)
            if addr is not None:
                with contextlib.suppress(OSError):
                    self.inner.sendto(data, addr)

    def close(self) -> None:
        self.inner.close()
        self.outer.close()
