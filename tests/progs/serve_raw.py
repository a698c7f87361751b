"""A request to a warm launcher made by hand (standard library and sandbox.serve.protocol
only), for the tests that play a client the real ones would never be: another user, an
agent inside a sandbox, another installation."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Mapping, Sequence

from sandbox.serve import protocol as P


def raw_request(
    path: str,
    argv: Sequence[str],
    cwd: str = "/",
    *,
    identity: str | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[bytes, int, bytes]:
    """Send a well-formed request with our stdio; the server's answer: (tag, value, text).
    Accepted: the tag and value of the launcher's end (EXIT or KILD). Refused: RFSE and
    the reason."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    cwd_fd = os.open(cwd, os.O_PATH | os.O_DIRECTORY)
    env = [f"{k}={v}".encode() for k, v in (os.environ if environ is None else environ).items()]
    data = P.encode_request(identity or P.identity(), [a.encode() for a in argv], env, 0b111)
    fds = array.array("i", [cwd_fd, 0, 1, 2])
    try:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused on sight (another uid): the refusal is waiting to be read
    finally:
        os.close(cwd_fd)

    def message() -> tuple[bytes, int]:
        buf = b""
        while len(buf) < P.MESSAGE.size:
            chunk = sock.recv(P.MESSAGE.size - len(buf))
            if not chunk:
                return b"", 0
            buf += chunk
        tag, value = P.MESSAGE.unpack(buf)
        return tag, value

    try:
        tag, value = message()
        if tag == P.REFUSED:
            text = b""
            while len(text) < value and (chunk := sock.recv(value - len(text))):
                text += chunk
            return tag, value, text
        if tag == P.ACCEPTED:
            tag, value = message()
        return tag, value, b""
    finally:
        sock.close()
