"""The control socket `state/control.sock`: how `sandbox ps|send|stop|...` reach `sandbox up`.

One JSON object a line each way, one request per connection. The socket is created 0600
in the 0700 state directory, and the dispatcher checks every peer's uid with SO_PEERCRED:
it serves only the user it runs as. Requests are bounded (MAX_REQUEST); a peer that sends
more, or garbage, gets an error line and is closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from typing import Any

MAX_REQUEST = 64 * 1024
OPS = ("ps", "send", "stop", "restart", "reload", "down")


class ControlError(Exception):
    """The dispatcher cannot be reached or refused the request."""


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def parse_request(line: bytes) -> dict[str, Any]:
    """One control request; ValueError naming what is wrong."""
    if len(line) > MAX_REQUEST:
        raise ValueError(f"request larger than {MAX_REQUEST} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("request is not a JSON object on one line") from None
    if not isinstance(obj, dict) or obj.get("op") not in OPS:
        raise ValueError(f"request needs 'op', one of {', '.join(OPS)}")
    return obj


def call(path: str, request: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one request to the dispatcher listening at `path`; its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(
                f"no dispatcher is running for this system ({path} does not answer); "
                "start it with 'sandbox up SYSTEM'"
            ) from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (it serves only its owner)") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                raise ControlError("the dispatcher did not answer in time") from None
            if not chunk:
                break
            buf += chunk
            if len(buf) > 64 * MAX_REQUEST:
                raise ControlError("the dispatcher's answer is too large")
        if not buf:
            raise ControlError("the dispatcher closed the connection without an answer")
        reply = json.loads(buf)
        if not isinstance(reply, dict):
            raise ControlError("the dispatcher's answer is not an object")
        return reply
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def listen(path: str) -> socket.socket:
    """The listening socket, 0600, replacing a stale one (the caller holds the state lock)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock
