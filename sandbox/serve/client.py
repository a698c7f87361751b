"""The Python client of the warm launcher: `sandbox run` through `sandbox serve`.

The compiled client (client.c) does the same in a fraction of the time; this one is the
fallback when it is not built, and what `python -m sandbox run` uses. It imports nothing
of the launcher: a request, the signals it receives forwarded, the launcher's end
reproduced (its exit status, or death by the same signal).

Signals: in the terminal's foreground, the terminal's (^C ^\\ ^Z, window size) go to the
launch's process group, as a terminal sends them to a cold launcher's group (the agent
included); the others, and all of them without a terminal, go to the launcher alone, as
`kill PID` would. Python cannot see who sent a signal, so in the foreground a
`kill -INT PID` is taken for the terminal's (the compiled client tells them apart).
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import NoReturn

from sandbox.serve import protocol as P

# Forwarded to the launch's process group, as the terminal delivers them.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGWINCH, signal.SIGCONT)
# Forwarded to the launcher alone, as `kill PID` delivers them.
PROCESS_SIGNALS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)
_CRED = struct.Struct("=iII")


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        _pid, uid, _gid = _CRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
        )
    except OSError:
        sock.close()
        return None
    if uid != os.geteuid():  # someone else's socket: never hand it our stdio
        sock.close()
        return None
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def request(sock: socket.socket, argv: Sequence[bytes]) -> str | None:
    """Send the request; None once accepted, else the server's reason for refusing."""
    fds = []
    try:
        fds.append(os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as e:
        return f"cannot open the cwd: {e.strerror}"
    mask = (P.FOREGROUND if P.job() else 0) | (P.CTTY if P.has_ctty() else 0)
    try:
        for fd in (0, 1, 2):
            try:
                os.fstat(fd)
            except OSError:
                continue
            mask |= 1 << fd
            fds.append(fd)
        env = [k + b"=" + v for k, v in os.environb.items()]
        data = P.encode_request(P.identity(), list(argv), env, mask)
        sent = sock.sendmsg(
            [data[:65536]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        )
        sock.sendall(data[sent:])
    except (OSError, P.RequestError) as e:
        return str(e)
    finally:
        os.close(fds[0])
    reply = _recv_exactly(sock, P.MESSAGE.size)
    if len(reply) != P.MESSAGE.size:
        return "the server closed the connection"
    tag, value = P.MESSAGE.unpack(reply)
    if tag == P.ACCEPTED:
        return None
    if tag == P.REFUSED:
        return _recv_exactly(sock, min(max(value, 0), P.MAX_REASON)).decode(errors="replace")
    return f"unexpected reply {tag!r}"


def run(args: Sequence[str], path: str) -> int | None:
    """`sandbox run ARGS` through the warm launcher at `path`: its exit status (or this
    process dies by the launcher's signal); None when it is not reachable or refused (then
    the caller launches cold, as if there were no server)."""
    if P.job() is False:
        # A background job on its terminal: job control would stop a cold launcher's agent
        # when it reads it, which a launch in another session cannot be. So: cold.
        return None
    sock = _connect(path)
    if sock is None:
        return None
    argv = [os.fsencode(sys.argv[0] if sys.argv and sys.argv[0] else "sandbox")]
    argv += [b"run", *(os.fsencode(a) for a in args)]
    refused = request(sock, argv)
    if refused is not None:
        sock.close()
        if os.environ.get("SANDBOX_SERVE_DEBUG"):
            print(f"sandbox: warm launch refused: {refused}", file=sys.stderr)
        return None
    return _relay(sock)


def _relay(sock: socket.socket) -> int:
    """Forward signals until the launcher's end comes back; reproduce it."""

    fg = bool(P.job())

    def forward(sig: int, _frame: object) -> None:
        # In the foreground these are the terminal's, for the whole group (as the launcher
        # itself assumes); SIGCONT continues the whole job (the shell's `fg`).
        group = sig == signal.SIGCONT or (fg and sig in GROUP_SIGNALS)
        tag = P.SIGNAL_GROUP if group else P.SIGNAL_PROCESS
        try:
            sock.send(P.MESSAGE.pack(tag, sig), socket.MSG_NOSIGNAL)
        except OSError:
            return
        if sig == signal.SIGTSTP:
            os.kill(os.getpid(), signal.SIGSTOP)  # the job stops, as a cold launcher's does

    for sig in (*GROUP_SIGNALS, *PROCESS_SIGNALS):
        if signal.getsignal(sig) != signal.SIG_IGN:  # ignored stays ignored, as in a cold run
            signal.signal(sig, forward)
    reply = _recv_exactly(sock, P.MESSAGE.size)
    sock.close()
    if len(reply) == P.MESSAGE.size:
        tag, value = P.MESSAGE.unpack(reply)
        if tag == P.EXITED:
            return int(value)
        if tag == P.KILLED:
            die(value)
    # The server went away mid-launch (and took the launch with it, as its supervisor).
    print("sandbox: the warm launcher went away; the launch was killed", file=sys.stderr)
    die(signal.SIGKILL)


def die(sig: int) -> NoReturn:
    """End this process as the launcher ended: by the same signal."""
    import resource

    sys.stdout.flush()
    sys.stderr.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the launcher's core, not ours
    with contextlib.suppress(OSError, ValueError):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default is not to terminate
