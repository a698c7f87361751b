"""The kernel's audit netlink, once: its status, switching it on and off, and listening.

Landlock (ABI 7) reports each refusal as an audit record (AUDIT_LANDLOCK_ACCESS), and the
domain that refused as another (AUDIT_LANDLOCK_DOMAIN), when audit is enabled. Without
auditd the records still reach every socket bound to the read-only multicast group
AUDIT_NLGRP_READLOG; binding it needs CAP_AUDIT_READ in the initial user namespace (root),
and so do AUDIT_GET and AUDIT_SET (CAP_AUDIT_CONTROL). Enabling audit is host-wide: it is
the operator's decision (`sandbox doctor --enable-kernel-audit`), never taken silently.

Record text is kernel text about the agent's doings (file names it chose): callers parse it
as untrusted input (sandbox.parent.denials).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

from sandbox.plain import plain

NETLINK_AUDIT = 9
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_NLGRP_READLOG = 1
AUDIT_STATUS_ENABLED = 0x1
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
# struct audit_status: mask enabled failure pid rate_limit backlog_limit lost backlog
# feature_bitmap backlog_wait_time backlog_wait_time_actual (older kernels send fewer).
_STATUS = struct.Struct("=11I")
LISTEN_BUFFER = 4 << 20  # records arrive in bursts (one per refusal): keep room for them


@plain(frozen=True)
class Status:
    enabled: int  # 0 off, 1 on, 2 on and locked until reboot
    pid: int  # auditd's pid, 0 without auditd
    backlog: int  # records queued in the kernel, not yet sent
    lost: int


def _request(sock: socket.socket, mtype: int, payload: bytes = b"", flags: int = 0) -> None:
    sock.send(
        _HEADER.pack(_HEADER.size + len(payload), mtype, NLM_F_REQUEST | flags, 1, 0) + payload
    )


def _control() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
    try:
        sock.bind((0, 0))
        sock.settimeout(2.0)
    except BaseException:
        sock.close()
        raise
    return sock


def _error_of(data: bytes) -> int:
    return -int(struct.unpack_from("=i", data, _HEADER.size)[0]) if len(data) >= 20 else 0


def status(sock: socket.socket | None = None) -> Status:
    """AUDIT_GET. OSError with the kernel's errno (EPERM: not root; EPROTONOSUPPORT or
    EAFNOSUPPORT: no audit in this kernel; ECONNREFUSED: not the initial namespaces)."""
    own = sock is None
    ctl = _control() if sock is None else sock
    try:
        _request(ctl, AUDIT_GET)
        for _ in range(16):
            data = ctl.recv(8192)
            if len(data) < _HEADER.size:
                continue
            length, mtype = _HEADER.unpack_from(data)[:2]
            if mtype == NLMSG_ERROR:
                err = _error_of(data)
                if err:
                    raise OSError(err, f"AUDIT_GET: {os.strerror(err)}")
                continue
            if mtype == AUDIT_GET:
                body = data[_HEADER.size : length].ljust(_STATUS.size, b"\0")
                f = _STATUS.unpack_from(body)
                return Status(enabled=f[1], pid=f[3], backlog=f[7], lost=f[6])
        raise OSError(0, "AUDIT_GET: no status reply")
    finally:
        if own:
            ctl.close()


def set_enabled(value: int) -> None:
    """AUDIT_SET enabled=value (0 or 1), host-wide. OSError on refusal (EPERM: not root;
    when audit is locked (enabled=2) the kernel refuses every change)."""
    payload = _STATUS.pack(AUDIT_STATUS_ENABLED, value, *([0] * 9))
    with _control() as ctl:
        _request(ctl, AUDIT_SET, payload, NLM_F_ACK)
        for _ in range(16):
            data = ctl.recv(8192)
            if len(data) >= _HEADER.size and _HEADER.unpack_from(data)[1] == NLMSG_ERROR:
                err = _error_of(data)
                if err:
                    raise OSError(err, f"AUDIT_SET enabled={value}: {os.strerror(err)}")
                return
        raise OSError(0, "AUDIT_SET: no acknowledgement")


def listen() -> socket.socket:
    """A non-blocking socket receiving every audit record the kernel emits (multicast
    group AUDIT_NLGRP_READLOG). OSError if that is not allowed (EPERM: not root)."""
    sock = socket.socket(
        socket.AF_NETLINK,
        socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
        NETLINK_AUDIT,
    )
    try:
        with contextlib.suppress(OSError):
            # SO_RCVBUFFORCE (root) goes beyond rmem_max; fall back to what is allowed.
            sock.setsockopt(socket.SOL_SOCKET, 33, LISTEN_BUFFER)
        sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
    except BaseException:
        sock.close()
        raise
    return sock


def records(data: bytes) -> list[tuple[int, str]]:
    """The (type, text) audit messages in one datagram (each one netlink message)."""
    out: list[tuple[int, str]] = []
    off = 0
    while off + _HEADER.size <= len(data) and len(out) < 64:
        length, mtype = _HEADER.unpack_from(data, off)[:2]
        if length < _HEADER.size or off + length > len(data):
            break
        text = data[off + _HEADER.size : off + length].split(b"\0", 1)[0]
        out.append((mtype, text.decode("utf-8", "backslashreplace")))
        off += (length + 3) & ~3
    return out
