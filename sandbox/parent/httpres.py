"""HTTP resources: requests the parent sends for the agent, pinned to a URL prefix.

The agent names a path relative to the resource's URL prefix; it cannot change scheme,
host or port, climb above the prefix path, or see the headers the resource adds (secrets
come from the parent's environment as "env:NAME"). The response body reaches the agent as
a sealed memfd; status and headers travel in the JSON reply.

Two phases, so that the broker can record before it acts: prepare() checks everything
that can be checked without the network (URL, headers, secrets, body size) and returns a
Prepared request or raises; perform() runs in a worker thread and talks to the server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import posixpath
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from sandbox.plain import plain

if TYPE_CHECKING:
    import http.client
    import urllib.request
    from http.client import HTTPMessage, HTTPResponse

from sandbox import wire
from sandbox.policy.model import Resource

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})
# The request body travels base64-encoded inside one frame, with room left for the rest.
MAX_BODY = (wire.MAX_FRAME - 8 * 1024) * 3 // 4
MAX_REPLY_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024  # of response headers put in the reply
CHUNK = 64 * 1024
# Headers the agent may never set: they frame the request or name the server.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MFD_NOEXEC_SEAL = 0x0008  # Linux 6.3+: the memfd can never be made executable
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class HttpRefused(PermissionError):
    """Refused by policy (URL outside the prefix, missing secret, ...): recorded as deny."""


class HttpError(ValueError):
    """A request the agent built wrongly (bad header, body too large, ...)."""


@plain(frozen=True)
class Prepared:
    method: str
    url: str
    headers: Mapping[str, str]  # resource headers (secrets resolved) + agent headers
    body: bytes | None
    timeout: float
    max_bytes: int
    prefix: str


def _prefix(resource: Resource) -> str:
    if not resource.url:
        raise HttpRefused(f"resource {resource.name!r} has no URL")
    return resource.url


def within_prefix(url: str, prefix: str) -> bool:
    """True if `url` has the prefix's scheme, host and port and a path beneath its path."""
    u, p = urllib.parse.urlsplit(url), urllib.parse.urlsplit(prefix)
    try:
        same_origin = (u.scheme.lower(), u.hostname, u.port) == (
            p.scheme.lower(),
            p.hostname,
            p.port,
        )
    except ValueError:  # a port that is not a number
        return False
    if not same_origin or u.username is not None or u.password is not None:
        return False
    # Compare decoded, normalised paths: a server would decode %2e%2e and climb too.
    path = urllib.parse.unquote(u.path) or "/"
    norm = posixpath.normpath(path) + ("/" if path.endswith("/") else "")
    base = urllib.parse.unquote(p.path) or "/"
    if base.endswith("/"):
        return norm.startswith(base) or norm + "/" == base
    return norm == base or norm.startswith(base + "/")


def build_url(resource: Resource, path: object) -> str:
    prefix = _prefix(resource)
    if not isinstance(path, str):
        raise HttpError("http path must be a string")
    if _CONTROL.search(path) or "\\" in path or " " in path:
        raise HttpRefused("http path contains a control character, space or backslash")
    if "#" in path:
        raise HttpRefused("http path contains a fragment ('#')")
    if path.startswith("/"):
        raise HttpRefused("absolute http path refused: paths are relative to the resource URL")
    first = path.split("/", 1)[0].split("?", 1)[0]
    if ":" in first:
        raise HttpRefused("http path looks like a URL (scheme): give a path relative to the prefix")
    if not path:
        url = prefix
    elif prefix.endswith("/") or path.startswith("?"):
        url = prefix + path
    else:
        url = prefix + "/" + path
    if not within_prefix(url, prefix):
        raise HttpRefused(f"URL {url} leaves the resource prefix {prefix}")
    return url


def _resolve_headers(
    resource: Resource, extra: object, environ: Mapping[str, str]
) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in resource.headers.items():
        if value.startswith("env:"):
            var = value[4:]
            if var not in environ:
                raise HttpRefused(
                    f"resource {resource.name!r}: header {name} needs the environment "
                    f"variable {var}, which the parent does not have; no request sent"
                )
            value = environ[var]
        headers[name] = value
    if extra is None:
        return headers
    if not isinstance(extra, dict):
        raise HttpError("headers must be an object of strings")
    taken = {k.lower() for k in headers}
    for name, value in extra.items():
        if not isinstance(value, str) or not _TOKEN.match(name):
            raise HttpError(f"header {name!r}: name must be a token and value a string")
        if _CONTROL.search(value.replace("\t", " ")):
            raise HttpError(f"header {name!r}: value contains a control character")
        low = name.lower()
        if low in FORBIDDEN_HEADERS:
            raise HttpRefused(f"header {name!r} may not be set by the agent")
        if low in taken:
            raise HttpRefused(f"header {name!r} is set by the resource and cannot be overridden")
        taken.add(low)
        headers[name] = value
    return headers


def prepare(resource: Resource, request: Mapping[str, Any], environ: Mapping[str, str]) -> Prepared:
    """Everything that can be checked before the network: HttpRefused / HttpError."""
    method = request.get("method")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise HttpError(f"http method {method!r} unknown (one of {', '.join(sorted(METHODS))})")
    url = build_url(resource, request.get("path", ""))
    body: bytes | None = None
    raw = request.get("body")
    if raw is not None:
        if not isinstance(raw, str) or len(raw) > MAX_BODY * 4 // 3 + 4:
            raise HttpError(f"request body must be base64 of at most {MAX_BODY} bytes")
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError("request body is not valid base64") from None
    headers = _resolve_headers(resource, request.get("headers"), environ)
    return Prepared(
        method.upper(), url, headers, body, resource.timeout, resource.max_bytes, _prefix(resource)
    )


@plain(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    memfd: int  # sealed, at offset 0; the caller closes it
    length: int


def _sealed_memfd(chunks: list[bytes]) -> int:
    try:
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        fd = os.memfd_create("sandbox-http", flags | MFD_NOEXEC_SEAL)
    except OSError:  # before Linux 6.3
        fd = os.memfd_create("sandbox-http", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sealed_memfd(data: bytes) -> int:
    """A read-only, sealed in-memory file holding `data`."""
    return _sealed_memfd([data])


def _read_capped(resp: HTTPResponse, max_bytes: int, deadline: _Deadline) -> list[bytes]:
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline.end or deadline.expired:
            raise TimeoutError("response took longer than the resource timeout")
        # read1: at most one recv per call, so a server that drips bytes meets the deadline
        # between calls instead of holding the worker for one long read().
        chunk = resp.read1(min(CHUNK, max_bytes + 1 - total))
        if not chunk:
            if deadline.expired:  # the end we read is the shutdown of the deadline's timer
                raise TimeoutError("response took longer than the resource timeout")
            return chunks
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise HttpError(f"response larger than {max_bytes} bytes")


def _pinned_redirects(prefix: str) -> urllib.request.BaseHandler:
    """A redirect handler that follows a redirect only if it stays beneath the prefix.

    Defined on first use: urllib.request (with http.client and ssl) costs ~10 ms to import,
    which the launch of an agent without HTTP resources should not pay.
    """
    import urllib.request

    class PinnedRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: HTTPMessage,
            newurl: str,
        ) -> urllib.request.Request | None:
            if not within_prefix(newurl, prefix):
                raise HttpRefused(f"redirect ({code}) to {newurl} leaves the resource prefix")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return PinnedRedirects()


class _Deadline:
    """One deadline for a whole exchange: connecting (every address tried), the TLS
    handshake, the status line and headers, redirects, the body.

    A socket timeout bounds each recv only, so a server that drips a byte a second holds
    a request forever one byte at a time (a 5 s timeout held a request 40 s while headers
    arrived). Every socket of the exchange is made here, each connect attempt gets only
    the time that is left, and when the deadline passes a timer shuts every socket down,
    which wakes any read blocked on it; the failure that follows is reported as the timeout.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._mutex = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            self.expired = True
            raise TimeoutError(f"timed out after {self.seconds:g}s")
        return left

    def _expire(self) -> None:
        with self._mutex:
            self.expired = True
            for sock in self._sockets:
                # The raw socket's shutdown (also for a TLS-wrapped one): a read blocked on
                # it returns. A socket closed already raises EBADF and is left alone.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: object = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """socket.create_connection, bounded by the deadline (http.client calls this)."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.left())
                if source_address is not None:
                    sock.bind(source_address)
                with self._mutex:
                    if self.expired:
                        raise TimeoutError(f"timed out after {self.seconds:g}s")
                    self._sockets.append(sock)
                sock.connect(addr)
            except OSError as e:
                sock.close()
                error = e
                if self.expired:
                    break
                continue
            return sock
        raise error or OSError(f"{host}: no address to connect to")


def _deadline_handlers(deadline: _Deadline) -> list[urllib.request.BaseHandler]:
    """HTTP and HTTPS handlers whose connections make their sockets through `deadline`."""
    import http.client
    import urllib.request

    def bounded(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Bounded(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._create_connection = deadline.create_connection

        return Bounded

    plain = bounded(http.client.HTTPConnection)
    tls = bounded(http.client.HTTPSConnection)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(plain, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(tls, req, context=self._context)  # type: ignore[attr-defined]

    return [Http(), Https()]


def perform(req: Prepared) -> Response:
    """Send the request (blocking: run it in a worker thread). Raises on failure.

    `req.timeout` bounds the whole exchange, not each read (see _Deadline).
    """
    import urllib.error
    import urllib.request

    deadline = _Deadline(req.timeout)
    # No proxy handler: the environment of the parent must not reroute the agent's requests.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _pinned_redirects(req.prefix),
        *_deadline_handlers(deadline),
    )
    request = urllib.request.Request(req.url, data=req.body, method=req.method)
    for name, value in req.headers.items():
        request.add_header(name, value)
    timed_out = TimeoutError(f"{req.url}: timed out after {req.timeout:g}s")
    with deadline:
        try:
            try:
                resp = opener.open(request, timeout=req.timeout)
            except urllib.error.HTTPError as e:  # 4xx/5xx are answers, not failures
                resp = e
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError) or deadline.expired:
                    raise timed_out from None
                raise ConnectionError(f"{req.url}: {e.reason}") from None
            with resp:
                chunks = _read_capped(resp, req.max_bytes, deadline)
                status = int(resp.status or 0)
                headers: list[tuple[str, str]] = []
                size = 0
                for name, value in resp.headers.items():
                    size += len(name) + len(value)
                    if len(headers) >= MAX_REPLY_HEADERS or size > MAX_HEADER_BYTES:
                        break
                    headers.append((name, value))
        except HttpRefused:
            raise
        except Exception:
            # Whatever the shut-down socket made http.client raise (RemoteDisconnected,
            # IncompleteRead, an SSL error), the cause was the deadline.
            if deadline.expired:
                raise timed_out from None
            raise
    return Response(status, headers, _sealed_memfd(chunks), sum(map(len, chunks)))
