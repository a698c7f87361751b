"""The promise 'dns' without 'inet': UDP to the configured nameservers, port 53, nowhere else.

A seccomp filter cannot read a sockaddr (it is behind a pointer), and answering "continue"
after reading it would race with the agent's other threads. So the parent performs the
call itself: it copies the address (and for sendto the payload) out of the agent's memory
once, checks the copy, takes a duplicate of the agent's socket with pidfd_getfd(2), and
calls connect/sendto on that duplicate with the copy. The agent's socket is then connected
(or the datagram sent) exactly as checked.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct

from sandbox import procfs
from sandbox.libc import libc as _libc
from sandbox.plain import plain

SYS_PIDFD_GETFD = 438
MAX_DATAGRAM = 65536
RESOLV_CONF = "/etc/resolv.conf"


@plain(frozen=True)
class DnsResult:
    allowed: bool
    value: int = 0
    error: int = 0
    reason: str = ""


def nameservers(path: str = RESOLV_CONF) -> frozenset[str]:
    found: set[str] = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        found.add(str(ipaddress.ip_address(parts[1].split("%")[0])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return frozenset(found)


def read_memory(pid: int, addr: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(addr)
        return mem.read(size)


def parse_sockaddr(raw: bytes) -> tuple[int, str, int] | None:
    """(family, address, port) of an AF_INET/AF_INET6 sockaddr, None otherwise."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from("!H", raw, 2)[0]
        return family, socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from("!H", raw, 2)[0]
        return family, socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


def _tgid(tid: int) -> int:
    """pidfd_open() takes a process, the notification names a thread."""
    return procfs.status_int(f"/proc/{tid}/status", "Tgid") or tid


class DnsEmulator:
    def __init__(self, servers: frozenset[str] | None = None) -> None:
        self.servers = nameservers() if servers is None else servers

    def perform(self, pid: int, name: str, args: list[int]) -> DnsResult:
        if name == "connect":
            return self._call(pid, args[0], args[1], args[2], None, 0)
        if name == "sendto":
            return self._call(pid, args[0], args[4], args[5], (args[1], args[2]), args[3])
        return DnsResult(False, reason=f"{name} is not a dns call")

    def _call(
        self,
        pid: int,
        fd: int,
        addr: int,
        addrlen: int,
        payload: tuple[int, int] | None,
        flags: int,
    ) -> DnsResult:
        if not 0 < addrlen <= 128:
            return DnsResult(False, reason="bad address length")
        try:
            parsed = parse_sockaddr(read_memory(pid, addr, addrlen))
            data = read_memory(pid, payload[0], min(payload[1], MAX_DATAGRAM)) if payload else b""
        except OSError as e:
            return DnsResult(False, reason=f"cannot read the agent's arguments: {e.strerror}")
        if parsed is None:
            return DnsResult(False, reason="not an IPv4/IPv6 address")
        family, host, port = parsed
        if port != 53 or host not in self.servers:
            return DnsResult(
                False, reason=f"{host} port {port} is not a nameserver of {RESOLV_CONF}"
            )
        dup = self._dup(pid, fd)
        if dup < 0:
            return DnsResult(True, error=-dup)
        try:
            sock = socket.socket(fileno=dup)
        except OSError as e:
            os.close(dup)
            return DnsResult(True, error=e.errno or errno.EBADF)
        with sock:
            if sock.type != socket.SOCK_DGRAM or sock.family != family:
                return DnsResult(False, reason="dns allows only UDP sockets")
            # No setblocking(): O_NONBLOCK belongs to the open file, which the agent shares.
            try:
                if payload is None:
                    sock.connect((host, port))
                    return DnsResult(True, value=0)
                # MSG_DONTWAIT: the parent's loop must never block on the agent's socket.
                sent = sock.sendto(data, flags | socket.MSG_DONTWAIT, (host, port))
                return DnsResult(True, value=sent)
            except OSError as e:
                return DnsResult(True, error=e.errno or errno.EIO)

    @staticmethod
    def _dup(pid: int, fd: int) -> int:
        """A duplicate of the agent's descriptor, or -errno."""
        try:
            pidfd = os.pidfd_open(_tgid(pid))
        except OSError as e:
            return -(e.errno or errno.ESRCH)
        try:
            res = int(_libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
            return res if res >= 0 else -ctypes.get_errno()
        finally:
            os.close(pidfd)
