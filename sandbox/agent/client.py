"""The agent's side of the broker channel: ask the parent to do what the policy promises.

    parent = sandbox.connect()
    with parent.open("vault", "notes/today.md") as f:
        text = f.read()

Every call is one request and one reply (synchronous; ids checked). A refusal raises the
Python exception the parent names: PermissionError for anything the policy does not
promise ("vault:write is not promised"), FileNotFoundError, FileExistsError, ... Files come
back as descriptors (SCM_RIGHTS), so reading and writing them costs no further round trip.

Kept light to import (stdlib only, no sandbox internals beyond sandbox.wire and
sandbox.protocol): it runs in
every agent, often under a seccomp filter that allows little on the channel besides
recvmsg/sendmsg/close.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import socket
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, NamedTuple

from sandbox import wire
from sandbox.protocol import ENV_BROKER_FD, ERROR_NAMES, Op

# The exception classes the parent may name (sandbox.protocol.ERROR_NAMES are builtins).
ERRORS: dict[str, type[Exception]] = {name: getattr(builtins, name) for name in ERROR_NAMES}
PIPELINE_WINDOW = 128  # requests in flight in pipeline(); keeps the parent's send buffer small
SEND_BATCH = 128  # messages per send request in send_many()
SEND_WINDOW = 8  # send requests in flight in send_many()
ACK_BATCH = 256  # acknowledgements gathered before they are sent regardless


class Entry(NamedTuple):
    name: str
    type: str  # file, dir, symlink, fifo, socket, chardev, blockdev, other


class StatResult(NamedTuple):
    size: int
    mtime: float
    type: str
    mode: int


class HttpResponse(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def error_from(reply: dict[str, Any]) -> Exception:
    cls = ERRORS.get(str(reply.get("error")), OSError)
    return cls(str(reply.get("message", "refused by the parent")))


def _wire_mode(mode: str) -> tuple[str, bool]:
    """('r'|'w'|..., binary) from a builtin-open() mode string."""
    binary = "b" in mode
    core = mode.replace("b", "").replace("t", "")
    plus = "+" in core
    base = core.replace("+", "")
    if len(base) != 1 or base not in "rwax" or core.count("+") > 1 or ("b" in mode and "t" in mode):
        raise ValueError(f"invalid mode: {mode!r}")
    return base + ("+" if plus else ""), binary


class Parent:
    """The broker channel (one per process; see connect())."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._next = 1
        self._inbox: deque[dict[str, Any]] = deque()  # received, not yet returned by recv()
        self._acks: builtins.list[str] = []  # acknowledged, not yet told (see ack())

    # -- raw requests

    def _ids(self, n: int) -> list[int]:
        first, self._next = self._next, self._next + n
        return list(range(first, first + n))

    def _recv(self) -> tuple[dict[str, Any], int | None]:
        try:
            reply, fd = wire.recv(self._sock, reply=True)
        except wire.ChannelClosed:
            raise ConnectionError("the parent closed the broker channel") from None
        if reply.get("memfd") and fd is not None:
            # A reply too large for a frame comes as JSON in a sealed memfd.
            try:
                reply = json.loads(_read_fd(fd))
            finally:
                os.close(fd)
            fd = None
        return reply, fd

    def request(self, op: str, **fields: Any) -> tuple[dict[str, Any], int | None]:
        """Send one request; the reply and the descriptor that came with it (yours to close).

        Raises the exception the parent names if the request failed.
        """
        attach = fields.pop("fd", None)
        with self._lock:
            (ident,) = self._ids(1)
            wire.send(self._sock, {"id": ident, "op": op, **fields}, attach)
            reply, fd = self._recv()
        if reply.get("id") != ident:
            if fd is not None:
                os.close(fd)
            raise ConnectionError(f"broker reply for request {reply.get('id')}, expected {ident}")
        if not reply.get("ok"):
            if fd is not None:
                os.close(fd)
            raise error_from(reply)
        return reply, fd

    def pipeline(
        self, requests: Iterable[tuple[str, dict[str, Any]]], window: int = PIPELINE_WINDOW
    ) -> list[tuple[dict[str, Any], int | None] | Exception]:
        """Several requests in flight at once (the parent records them with one commit).

        Results in request order: (reply, fd) or the exception for that request.
        """
        reqs = list(requests)
        results: dict[int, tuple[dict[str, Any], int | None] | Exception] = {}
        with self._lock:
            ids = self._ids(len(reqs))
            first = ids[0] if ids else 0
            sent = 0
            while len(results) < len(reqs):
                while sent < len(reqs) and sent - len(results) < window:
                    op, fields = reqs[sent]
                    wire.send(self._sock, {"id": ids[sent], "op": op, **fields})
                    sent += 1
                reply, fd = self._recv()
                ident = reply.get("id")
                # ids are consecutive: a range check, not a search of a fresh list per reply
                if (
                    not isinstance(ident, int)
                    or not first <= ident < first + sent
                    or ident in results
                ):
                    if fd is not None:
                        os.close(fd)
                    raise ConnectionError(f"unexpected broker reply id {ident}")
                if reply.get("ok"):
                    results[ident] = (reply, fd)
                else:
                    if fd is not None:
                        os.close(fd)
                    results[ident] = error_from(reply)
        return [results[i] for i in ids]

    # -- files

    def open(
        self,
        resource: str,
        path: str,
        mode: str = "r",
        encoding: str | None = None,
        create: bool = True,
    ) -> IO[Any]:
        """A file object on a descriptor the parent opened, text or binary as open() does."""
        wmode, binary = _wire_mode(mode)
        _, fd = self.request(Op.OPEN, resource=resource, path=path, mode=wmode, create=create)
        if fd is None:
            raise ConnectionError("broker sent no descriptor for open")
        try:
            return open(fd, mode, encoding=None if binary else encoding)
        except BaseException:
            os.close(fd)
            raise

    def read(self, resource: str, path: str) -> bytes:
        # The descriptor read directly: a file object around it (open()) cost more than
        # the whole request's Python in the parent.
        _, fd = self.request(Op.OPEN, resource=resource, path=path, mode="r")
        if fd is None:
            raise ConnectionError("broker sent no descriptor for open")
        try:
            return _read_fd(fd)
        finally:
            os.close(fd)

    def read_many(self, resource: str, paths: Sequence[str]) -> list[bytes]:
        """Read several files with pipelined requests; raises the first failure."""
        out: list[bytes] = []
        reqs = [(Op.OPEN, {"resource": resource, "path": p, "mode": "r"}) for p in paths]
        results = self.pipeline(reqs)
        error: Exception | None = None
        for r in results:
            if isinstance(r, Exception):
                error = error or r
                continue
            fd = r[1]
            if fd is None:
                error = error or ConnectionError("broker sent no descriptor for open")
                continue
            try:
                out.append(_read_fd(fd))
            finally:
                os.close(fd)
        if error is not None:
            raise error
        return out

    def write(self, resource: str, path: str, data: bytes | str, create: bool = True) -> None:
        """Replace the file's contents (creating it if `create` and the policy allows)."""
        raw = data.encode() if isinstance(data, str) else data
        with self.open(resource, path, "wb", create=create) as f:
            f.write(raw)

    def list(self, resource: str, path: str = "") -> list[Entry]:
        reply, _ = self.request(Op.LIST, resource=resource, path=path)
        return [Entry(str(n), str(t)) for n, t in reply.get("entries", [])]

    def stat(self, resource: str, path: str) -> StatResult:
        r, _ = self.request(Op.STAT, resource=resource, path=path)
        return StatResult(int(r["size"]), float(r["mtime"]), str(r["type"]), int(r["mode"]))

    def remove(self, resource: str, path: str) -> None:
        self.request(Op.REMOVE, resource=resource, path=path)

    def rename(self, resource: str, src: str, dst: str) -> None:
        self.request(Op.RENAME, resource=resource, src=src, dst=dst)

    def mkdir(self, resource: str, path: str) -> None:
        self.request(Op.MKDIR, resource=resource, path=path)

    # -- http

    def http(
        self,
        resource: str,
        method: str,
        path: str = "",
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        fields: dict[str, Any] = {"resource": resource, "method": method, "path": path}
        if body is not None:
            raw = body.encode() if isinstance(body, str) else body
            fields["body"] = base64.b64encode(raw).decode("ascii")
        if headers:
            fields["headers"] = headers
        reply, fd = self.request(Op.HTTP, **fields)
        data = b""
        if fd is not None:
            try:
                data = _read_fd(fd)
            finally:
                os.close(fd)
        pairs = [(str(k), str(v)) for k, v in reply.get("headers", [])]
        return HttpResponse(int(reply.get("status", 0)), pairs, data)

    # -- messages (the agent system of `sandbox up`, SPEC section 9)

    def send(
        self,
        to: str,
        payload: Mapping[str, Any],
        type: str = "request",
        conversation_id: str | None = None,
        reply_to: str | None = None,
    ) -> str:
        """Send a message to agent `to` (needs the promise TO:send); its id once it is in
        the dispatcher's log. A full inbox makes this wait, then raise TimeoutError."""
        fields: dict[str, Any] = {"to": to, "payload": dict(payload), "type": type}
        if conversation_id is not None:
            fields["conversation_id"] = conversation_id
        if reply_to is not None:
            fields["reply_to"] = reply_to
        reply, _ = self.request(Op.SEND, **fields)
        return str(reply["message_id"])

    def send_many(
        self, messages: Iterable[tuple[str, Mapping[str, Any]]], type: str = "request"
    ) -> builtins.list[str | Exception]:
        """Many sends in flight at once: (to, payload) pairs, in batches of SEND_BATCH per
        request, several requests pipelined; ids or exceptions, in order."""
        items = [{"to": to, "payload": dict(p), "type": type} for to, p in messages]
        reqs = [
            (Op.SEND, {"batch": items[i : i + SEND_BATCH]})
            for i in range(0, len(items), SEND_BATCH)
        ]
        out: builtins.list[str | Exception] = []
        for i, r in enumerate(self.pipeline(reqs, window=SEND_WINDOW)):
            if isinstance(r, Exception):
                out.extend([r] * len(reqs[i][1]["batch"]))
                continue
            for item in r[0].get("results", []):
                ok = isinstance(item, dict) and item.get("ok")
                out.append(str(item["message_id"]) if ok else error_from(item))
        return out

    def recv(self, timeout: float | None = None, prefetch: int = 256) -> dict[str, Any] | None:
        """The next message of this agent's inbox, or None after `timeout` seconds (None:
        wait as long as it takes). Unacknowledged messages are delivered again, marked
        `redelivered`, to this agent's next instance if this one dies."""
        while not self._inbox:
            self._flush_acks()
            wait = 3600.0 if timeout is None else max(0.0, min(timeout, 3600.0))
            reply, _ = self.request(Op.RECV, max=prefetch, timeout=wait)
            self._inbox.extend(m for m in reply.get("messages", []) if isinstance(m, dict))
            if not self._inbox and timeout is not None:
                return None
        return self._inbox.popleft()

    def reply(
        self, msg: Mapping[str, Any], payload: Mapping[str, Any], type: str = "response"
    ) -> str:
        """Answer `msg` (a request this agent received): to its sender, once, no capability."""
        reply, _ = self.request(Op.REPLY, reply_to=str(msg["id"]), payload=dict(payload), type=type)
        return str(reply["message_id"])

    def ack(self, *msgs: Mapping[str, Any]) -> None:
        """These messages are handled: they leave the inbox (no reply; not waited for).
        While messages received in one batch remain to be returned by recv(), acks are
        gathered and sent together before the next request for more (a crash before that
        only means those messages are delivered again: at-least-once)."""
        self._acks.extend(str(m["id"]) for m in msgs)
        if not self._inbox or len(self._acks) >= ACK_BATCH:
            self._flush_acks()

    def _flush_acks(self) -> None:
        if not self._acks:
            return
        with self._lock:
            ids, self._acks = self._acks, []
            (ident,) = self._ids(1)
            wire.send(self._sock, {"id": ident, "op": Op.ACK, "ids": ids})

    def close(self) -> None:
        self._sock.close()


_parent: Parent | None = None
_parent_lock = threading.Lock()


def connect() -> Parent:
    """The broker channel the launcher gave this process (the same object on every call)."""
    global _parent
    with _parent_lock:
        if _parent is None:
            value = os.environ.get(ENV_BROKER_FD)
            if value is None:
                raise RuntimeError(
                    "sandbox.connect(): no broker channel; this program was not started by "
                    f"`sandbox run` ({ENV_BROKER_FD} is not set)"
                )
            try:
                fd = int(value)
            except ValueError:
                why = f"{ENV_BROKER_FD}={value!r} is not a descriptor number"
                raise RuntimeError(why) from None
            # Family, type and proto given so that CPython need not ask the kernel (the
            # agent's seccomp filter may refuse getsockopt).
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
            _parent = Parent(sock)
        return _parent
