"""The broker channel's framing: one JSON object per SOCK_SEQPACKET message.

A request is {"id": int, "op": str, ...}; a reply is {"id": int, "ok": true, ...} or
{"id": int, "ok": false, "error": "<Python exception name>", "message": str}. At most one
file descriptor rides along a message (SCM_RIGHTS). SEQPACKET keeps message boundaries, so
there is no stream reassembly: a message is a frame, and a frame larger than MAX_FRAME is
refused whole (the kernel tells us with MSG_TRUNC). What the messages say is catalogued in
sandbox.protocol.

Shared by the parent (sandbox.parent.broker) and the agent (sandbox.agent.client): keep it
stdlib-only and cheap to import.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
from typing import Any

MAX_FRAME = 64 * 1024  # bytes of one message, JSON included
MAX_FDS = 1  # descriptors attached to one message
_INT = array.array("i").itemsize
# Room for exactly MAX_FDS descriptors: more set MSG_CTRUNC and the kernel drops the rest.
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * _INT)
# Plain ints: the socket module's flags are IntFlag members, and `&` on those goes through
# the enum machinery (a few microseconds a message on the broker's hot path).
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_DECODE = json.JSONDecoder().decode


class WireError(ValueError):
    """A frame that is not a valid message. `id` is the request id when it was readable."""

    def __init__(self, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.id = id


class ChannelClosed(EOFError):
    """The other end closed the channel."""


def json_bytes(obj: dict[str, Any]) -> bytes:
    """The JSON of a message, whatever its size (for payloads sent in a memfd).

    The one place that makes a message safe to send, whatever text it carries. Strings come
    from the agent (paths, URLs, promise words it sent, echoed in refusals) and from the
    filesystem (os.fsdecode keeps a name that is not UTF-8 as lone surrogates): such text
    is data, never an error. A lone surrogate cannot be encoded as UTF-8, so it is written
    as its JSON escape (backslashreplace turns U+D800 into the six characters \\ud800, which
    is exactly JSON's escape, and surrogates only ever occur inside JSON strings); the
    other side's json.loads gives the same string back, and os.fsencode of a name the
    same bytes. WireError for what is not JSON data at all (a programming error).
    """
    try:
        text = _ENCODE(obj)
    except (TypeError, ValueError, RecursionError) as e:
        raise WireError(f"message is not JSON data: {e}") from None
    return text.encode("utf-8", "backslashreplace")


def encode(obj: dict[str, Any]) -> bytes:
    """Serialise one message; WireError if it would not fit in a frame."""
    data = json_bytes(obj)
    if len(data) > MAX_FRAME:
        raise WireError(f"message of {len(data)} bytes is larger than {MAX_FRAME}")
    return data


def decode(data: bytes, *, reply: bool = False) -> dict[str, Any]:
    """Parse one frame: a request (id + op) or, with reply=True, a reply (id + ok)."""
    if len(data) > MAX_FRAME:
        raise WireError(f"frame of {len(data)} bytes is larger than {MAX_FRAME}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"frame is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = _DECODE(text)
    except ValueError as e:
        raise WireError(f"frame is not valid JSON ({e})") from None
    except RecursionError:
        raise WireError("frame is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise WireError(f"frame is a JSON {type(obj).__name__}, not an object")
    ident = obj.get("id")
    if type(ident) is not int or not 0 <= ident < 2**63:  # JSON makes ints, never subclasses
        raise WireError("message has no integer 'id' (0 <= id < 2**63)")
    if reply:
        if not isinstance(obj.get("ok"), bool):
            raise WireError("reply has no boolean 'ok'", ident)
    elif not isinstance(obj.get("op"), str) or not obj["op"]:
        raise WireError("request has no string 'op'", ident)
    return obj


def send(sock: socket.socket, obj: dict[str, Any], fd: int | None = None, flags: int = 0) -> None:
    """Send one message, with at most one descriptor (the caller keeps its own copy)."""
    send_bytes(sock, encode(obj), fd, flags)


def send_bytes(sock: socket.socket, data: bytes, fd: int | None = None, flags: int = 0) -> None:
    """Send one message already encoded (see encode())."""
    if fd is None:
        n = sock.sendmsg([data], (), flags)
    else:
        rights = array.array("i", (fd,)).tobytes()
        n = sock.sendmsg([data], [(_SOL_SOCKET, _SCM_RIGHTS, rights)], flags)
    if n != len(data):  # cannot happen with SEQPACKET, but never send half a message silently
        raise WireError(f"short send ({n} of {len(data)} bytes)")


def _take_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            usable = len(payload) - len(payload) % _INT
            fds.extend(array.array("i", payload[:usable]))
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):  # already gone; nothing else to do with it
            os.close(fd)


def _peer_gone(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP) for _, ev in poller.poll(0))


def recv(sock: socket.socket, *, reply: bool = False) -> tuple[dict[str, Any], int | None]:
    """Receive one message and its descriptor (close-on-exec), or raise.

    ChannelClosed at end of stream; BlockingIOError on a non-blocking socket with nothing
    to read; WireError for a bad frame, after closing every descriptor it carried.
    """
    data, ancdata, msg_flags, _ = sock.recvmsg(MAX_FRAME, _ANC_SPACE, _MSG_CMSG_CLOEXEC)
    fds = _take_fds(ancdata) if ancdata else []
    if not data and not fds:
        # A zero-length message reads the same as end of stream. Only a peer that has shut
        # down (or closed) its end has ended the channel; a live peer sent an empty frame,
        # which is a malformed message to be answered, not a reason to stop listening.
        if _peer_gone(sock):
            raise ChannelClosed("the other end closed the channel")
        raise WireError("empty frame (a message of zero bytes)")
    try:
        if msg_flags & _MSG_TRUNC:
            raise WireError(f"frame larger than {MAX_FRAME} bytes")
        if msg_flags & _MSG_CTRUNC or len(fds) > MAX_FDS:
            raise WireError(f"more than {MAX_FDS} file descriptor attached to one message")
        obj = decode(data, reply=reply)
    except WireError:
        _close_all(fds)
        raise
    return obj, (fds[0] if fds else None)
