"""The warm launcher's socket: where it is, and what is said on it.

Shared by the Python client (sandbox.serve.client), the compiled one (client.c keeps the
same constants; a test compares them) and the server. Standard library only, and cheap:
the client imports it on every `sandbox run`.

A connection carries one launch:

    client                                          server
    REQUEST header (magic, length) + payload  ──►   SO_PEERCRED: same uid, else refused
      with SCM_RIGHTS: cwd (O_PATH), then           the client's process checked in /proc
      fds 0, 1, 2 (those open)                      (credentials, confinement, namespaces)
                                             ◄──    ACCEPTED, or REFUSED + reason (the
                                                    client then launches cold)
    SIGNAL (to the launcher, or its group)   ──►    kill / killpg of the launch
                                             ◄──    EXITED status, or KILLED signal
    (EOF from the client: the launcher is killed, as a cold launcher killed by SIGKILL)

The payload is NUL-separated bytes: identity, flags (bit N for N in 0-2: fd N was passed;
FOREGROUND: a stdio terminal is the client's controlling one and it is the foreground job
there; CTTY: it has a controlling terminal), argc, argv (argv[1] is "run"), envc, the
environment. Everything else that a cold launcher
inherits (umask, signal mask and ignored signals, rlimits, priorities) the server reads
from the kernel, not from the client's word.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence

ENV_SERVER = "SANDBOX_SERVER"  # the socket's path; "" or "off": never launch warm
SOCKET_DIR = "outheis-sandbox"  # under $XDG_RUNTIME_DIR
SOCKET_NAME = "serve.sock"

MAGIC = b"OSW1"
HEADER = struct.Struct("=4sI")  # magic, payload length
MESSAGE = struct.Struct("=4si")  # tag, value
MAX_REQUEST = 4 << 20  # argv and environment together (Linux allows 2 MiB of them to exec)
MAX_ITEMS = 1 << 16  # argv or environment entries
MAX_FDS = 4  # cwd, stdin, stdout, stderr
FOREGROUND = 8  # a flag: the client is its terminal's foreground job
CTTY = 16  # a flag: the client has a controlling terminal (its agent could open /dev/tty)

# server -> client
ACCEPTED = b"ACPT"
REFUSED = b"RFSE"  # value: length of the reason that follows
EXITED = b"EXIT"  # value: the exit status of the launcher
KILLED = b"KILD"  # value: the signal that ended the launcher
# client -> server
SIGNAL_PROCESS = b"SIGP"  # value: a signal for the launcher (as `kill PID` would send it)
SIGNAL_GROUP = b"SIGG"  # value: a signal for its process group (as the terminal sends it)

MAX_REASON = 4096


class RequestError(ValueError):
    """A request that is not well formed; the server refuses it and changes nothing."""


def socket_path(environ: Mapping[str, str]) -> str | None:
    """Where the warm launcher listens: $SANDBOX_SERVER, else $XDG_RUNTIME_DIR/outheis-sandbox/
    serve.sock; None if neither is set, or SANDBOX_SERVER is empty or "off"."""
    explicit = environ.get(ENV_SERVER)
    if explicit is not None:
        return None if explicit in ("", "off") else explicit
    runtime = environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        return None
    return os.path.join(runtime, SOCKET_DIR, SOCKET_NAME)


def identity() -> str:
    """Which code a launch runs: this `sandbox` package and the interpreter's prefix. A
    server whose identity differs from its client's would run other code than a cold
    launch would, so it refuses."""
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    import sys

    return f"{package}:{os.path.realpath(sys.prefix)}"


def encode_request(
    ident: str | bytes, argv: Sequence[bytes], environ: Sequence[bytes], flags: int
) -> bytes:
    """Header and payload of a request (the descriptors go with it in SCM_RIGHTS)."""
    ident_b = ident.encode() if isinstance(ident, str) else ident
    fields = [ident_b, b"%d" % flags, b"%d" % len(argv), *argv, b"%d" % len(environ), *environ]
    if any(b"\0" in f for f in fields):
        raise RequestError("a NUL byte inside an argument or an environment entry")
    payload = b"\0".join(fields)
    if len(payload) > MAX_REQUEST:
        raise RequestError(f"request of {len(payload)} bytes exceeds {MAX_REQUEST}")
    return HEADER.pack(MAGIC, len(payload)) + payload


class Request:
    """A parsed request: what the client says the launch is made of."""

    __slots__ = ("argv", "environ", "flags", "identity", "payload")

    def __init__(
        self,
        identity: bytes,
        flags: int,
        argv: list[bytes],
        environ: list[bytes],
        payload: bytes = b"",
    ) -> None:
        self.identity, self.flags, self.argv, self.environ = identity, flags, argv, environ
        self.payload = payload  # as received (a spare launch parses it again)


def _count(field: bytes, what: str, limit: int) -> int:
    if not field.isdigit() or len(field) > 8:
        raise RequestError(f"{what} is not a number")
    n = int(field)
    if n > limit:
        raise RequestError(f"{what} {n} exceeds {limit}")
    return n


def decode_payload(payload: bytes) -> Request:
    """Parse a payload; RequestError for anything but a well-formed request of `run`."""
    if len(payload) > MAX_REQUEST:
        raise RequestError("request too large")
    fields = payload.split(b"\0")
    if len(fields) < 4:
        raise RequestError("request too short")
    ident, mask_f, argc_f = fields[0], fields[1], fields[2]
    flags = _count(mask_f, "flags", 31)
    argc = _count(argc_f, "argc", MAX_ITEMS)
    if len(fields) < 4 + argc:
        raise RequestError("argv is cut short")
    argv = fields[3 : 3 + argc]
    envc = _count(fields[3 + argc], "envc", MAX_ITEMS)
    environ = fields[4 + argc :]
    if len(environ) != envc:
        raise RequestError(f"{len(environ)} environment entries, {envc} announced")
    if argc < 2 or argv[1] != b"run":
        raise RequestError("only `sandbox run` is launched warm")
    if any(b"=" not in e for e in environ):
        raise RequestError("an environment entry without '='")
    return Request(ident, flags, argv, environ, payload)


def passed_fds(flags: int) -> list[int]:
    """The stdio descriptors the flags name, in the order they ride after the cwd."""
    return [fd for fd in (0, 1, 2) if flags >> fd & 1]


def has_ctty() -> bool:
    """Whether this process has a controlling terminal (/dev/tty opens)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def job() -> int | None:
    """Whether we are our terminal's foreground job: True or False for the first stdio
    terminal that is our controlling one, None if there is none. True is what a cold
    launcher asks its terminal to know whether the terminal's signals reach its agent
    directly (sandbox.parent.launcher), which a warm launch cannot ask; False (a
    background job) launches cold."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return None
