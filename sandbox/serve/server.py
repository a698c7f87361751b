"""`sandbox serve`: a resident launcher for its own user.

It imports everything a launch needs once, then for each client forks a per-launch process
(sandbox.serve.launch) that takes on the client's state and runs the cold `sandbox run`
code. The server itself stays small and single-threaded: one event loop (the parent's own,
sandbox.parent.loop) over the listening socket, each client's connection, each launch's
set-up pipe, and the signals it handles. It never runs launch code itself, holds no audit
log, and forks with every signal blocked.

A client's connection lives as long as its launch: signals it forwards are sent to the
launch (or its process group), the launch's exit status goes back on it, and a client that
goes away (EOF) has its launch killed, as a cold launcher killed by SIGKILL would be.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import gc
import os
import signal
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Sequence

from sandbox.parent.loop import EventLoop, Timer
from sandbox.serve import launch, peer
from sandbox.serve import protocol as P

USAGE = """usage: sandbox serve [--socket PATH] [--verbose]

Keep a warm launcher for this user: `sandbox run` then launches through it (same policy,
enforcement, audit records, exit status, stdio and signals as a cold run) when it can reach
it, and launches cold otherwise.

  --socket PATH   listen on PATH (default: $SANDBOX_SERVER, else
                  $XDG_RUNTIME_DIR/outheis-sandbox/serve.sock)
  -v, --verbose   log every launch and its end on stderr (refusals are always logged)

Examples:

  sandbox serve &                               # then: sandbox run ... is served warm
  sandbox serve --socket /run/me/sb.sock -v     # with SANDBOX_SERVER=/run/me/sb.sock
  SANDBOX_SERVER=off sandbox run -p stdio -- true   # this one launched cold
"""

# What a launch imports: loaded once here instead of in every launch.
PRELOAD = (
    "sandbox.cli.main",
    "sandbox.parent.launcher",
    "sandbox.policy.loader",
    "sandbox.policy.narrow",
    "sandbox.kaudit",  # root's probe of Landlock's audit records
    "yaml",
    "hashlib",
    "time",
    "locale",
    "encodings.ascii",
)
REQUEST_TIMEOUT = 10.0  # seconds for a connected client to send its request
SHUTDOWN = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HANDLED = (signal.SIGCHLD, *SHUTDOWN)
_CRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
_ANC = socket.CMSG_SPACE(P.MAX_FDS * array.array("i").itemsize)


class ServeError(Exception):
    """The server cannot start (the message says why)."""


def preload() -> None:
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # a launch imports what is missing itself
            importlib.import_module(name)
    from sandbox.enforce import seccomp

    seccomp.preload()
    seccomp.prepare_cache()


def _check_directory(path: str) -> None:
    """The socket's directory must be ours and writable by nobody else: whoever can write
    it could put their own socket in place of ours."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ServeError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ServeError(f"{path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & 0o022:
        raise ServeError(f"{path} is writable by others (mode {st.st_mode & 0o777:o})")


def listen(path: str) -> socket.socket:
    """Bind the listening socket at `path` (mode 0600, non-blocking), replacing a stale
    socket only: one that nobody listens on."""
    directory = os.path.dirname(os.path.abspath(path))
    default = P.socket_path({k: v for k, v in os.environ.items() if k != P.ENV_SERVER})
    if default is not None and os.path.abspath(path) == os.path.abspath(default):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    _check_directory(directory)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ServeError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # stale: nobody listens on it
        else:
            raise ServeError(f"another server listens on {path}")
        finally:
            probe.close()
    from sandbox.system.control import listen as private_listener  # the same 0600 socket

    return private_listener(path)


class Client:
    """One connection, from its request to its launch's exit status."""

    def __init__(self, server: Server, sock: socket.socket, pid: int) -> None:
        self.server, self.sock, self.peer_pid = server, sock, pid
        self.pidfd = -1
        self.buf = bytearray()
        self.fds: list[int] = []
        self.need = P.HEADER.size
        self.header_done = False
        self.timer: Timer | None = None
        self.launch_pid = 0  # while it may be signalled: 0 once reaped
        self.pid_of_launch = 0  # for the log
        self.report = -1  # the launch's report pipe
        self.report_buf = bytearray()
        self.ready = False
        self.setup_error: str | None = None
        self.reported: int | None = None  # the exit status the launch reported
        self.accepted = False
        self.status: int | None = None  # its wait status, once reaped
        self.closed = False

    # -- request

    def on_request(self) -> None:
        if self.closed:
            return
        try:
            data, anc, flags, _ = self.sock.recvmsg(65536, _ANC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC or len(self.fds) > P.MAX_FDS:
            self.refuse("too many descriptors")
            return
        if not data:
            self.close()
            return
        self.buf += data
        if not self.header_done and len(self.buf) >= P.HEADER.size:
            magic, length = P.HEADER.unpack_from(self.buf)
            if magic != P.MAGIC or length > P.MAX_REQUEST:
                self.refuse("not a request of this protocol version")
                return
            self.header_done = True
            self.need = P.HEADER.size + length
        if self.header_done and len(self.buf) > self.need:
            self.refuse("bytes after the request")
        elif self.header_done and len(self.buf) == self.need:
            self.server.loop.remove(self.sock)
            if self.timer is not None:
                self.timer.cancel()
            self.start(bytes(self.buf[P.HEADER.size :]))

    def start(self, payload: bytes) -> None:
        try:
            request = P.decode_payload(payload)
        except P.RequestError as e:
            self.refuse(str(e))
            return
        if len(self.fds) != 1 + len(P.passed_fds(request.flags)):
            self.refuse("the descriptors do not match the request's fd mask")
            return
        reason = self.server.why_not(request, self.fds[0])
        if reason is not None:
            self.refuse(reason)
            return
        try:
            inherited = self.server.me.inspect(self.peer_pid, self.pidfd)
        except peer.Refused as e:
            self.refuse(str(e))
            return
        self.server.fork_launch(self, request, inherited)

    # -- launch

    def on_report(self) -> None:
        """The launch's report pipe: ACCEPTED once it has become the client's launcher (or
        REFUSED and why), later EXITED and its status. EOF: the launch has ended."""
        if self.report < 0:  # closed by an earlier handler of the same turn
            return
        try:
            chunk = os.read(self.report, 8192)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.server.loop.remove(self.report)
            os.close(self.report)
            self.report = -1
            self.progress()
            return
        if len(self.report_buf) < 2 * P.MAX_REASON:
            self.report_buf += chunk
        while len(self.report_buf) >= P.MESSAGE.size:
            tag, value = P.MESSAGE.unpack_from(self.report_buf)
            if tag == P.REFUSED:
                if len(self.report_buf) < P.MESSAGE.size + value:
                    return
                text = bytes(self.report_buf[P.MESSAGE.size : P.MESSAGE.size + value])
                self.setup_error = text.decode(errors="replace")
                self.report_buf = bytearray()
            else:
                del self.report_buf[: P.MESSAGE.size]
                if tag == P.ACCEPTED:
                    self.ready = True
                elif tag == P.EXITED:
                    self.reported = value
            self.progress()
            if self.closed:
                return

    def exited(self, status: int) -> None:
        self.launch_pid = 0  # reaped: its pid may be reused, never signal it again
        self.status = status
        self.progress()

    def progress(self) -> None:
        """Tell the client what it is owed: refused, accepted, its launcher's end."""
        if self.closed:
            return
        # Decided on what the launch said: its whole report is read (EOF) before its death
        # counts, since the kernel may tell of the exit before the pipe is drained.
        done_saying = self.report < 0
        if self.setup_error is not None or (not self.ready and done_saying):
            self.launch_pid = 0  # it ran nothing: no launcher of the client's to signal
            self.refuse(self.setup_error or "the launch died during set-up")
            return
        if not self.ready:
            return
        if not self.accepted:
            self.accepted = True
            self.server.served += 1
            if self.server.verbose:
                self.server.log(f"launch {self.pid_of_launch} for pid {self.peer_pid}")
            self.send(P.ACCEPTED, 0)
            self.buf = bytearray()
            self.server.loop.add(self.sock, self.on_message)
        end: tuple[bytes, int] | None = None
        if self.reported is not None:  # said right before it exited
            end = (P.EXITED, self.reported)
        elif self.status is not None:  # died otherwise (a signal), or said nothing
            if os.WIFSIGNALED(self.status):
                end = (P.KILLED, os.WTERMSIG(self.status))
            else:
                end = (P.EXITED, os.waitstatus_to_exitcode(self.status))
        if end is not None:
            if self.server.verbose:
                self.server.log(f"launch {self.pid_of_launch} ended: {end[0].decode()} {end[1]}")
            self.send(*end)
            self.launch_pid = 0 if self.status is not None else self.launch_pid
            self.close()

    def on_message(self) -> None:
        """A signal to forward, or EOF: the client went away, and its launcher with it."""
        if self.closed:
            return
        try:
            data = self.sock.recv(P.MESSAGE.size * 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.kill(signal.SIGKILL)
            self.close()
            return
        self.buf += data
        while len(self.buf) >= P.MESSAGE.size:
            tag, value = P.MESSAGE.unpack_from(self.buf)
            del self.buf[: P.MESSAGE.size]
            if value in signal.valid_signals() and tag in (P.SIGNAL_GROUP, P.SIGNAL_PROCESS):
                self.kill(value, group=tag == P.SIGNAL_GROUP)

    def kill(self, sig: int, *, group: bool = False) -> None:
        if not self.launch_pid:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                try:
                    os.killpg(self.launch_pid, sig)
                except ProcessLookupError:  # before its setsid(): the launch is the group
                    os.kill(self.launch_pid, sig)
            else:
                os.kill(self.launch_pid, sig)

    # -- ending

    def send(self, tag: bytes, value: int, extra: bytes = b"") -> None:
        # A few bytes into an empty socket buffer: never blocks; a client that does not
        # read loses them, and nothing else.
        with contextlib.suppress(OSError):
            self.sock.send(P.MESSAGE.pack(tag, value) + extra, socket.MSG_NOSIGNAL)

    def refuse(self, reason: str) -> None:
        self.server.refused += 1
        self.server.log(f"refused a launch for pid {self.peer_pid}: {reason}")
        text = reason.encode(errors="replace")[: P.MAX_REASON]
        self.send(P.REFUSED, len(text), text)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        loop = self.server.loop
        loop.remove(self.sock)
        self.sock.close()
        for fd in (*self.fds, self.pidfd, self.report):
            if fd >= 0:
                loop.remove(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fds, self.pidfd, self.report = [], -1, -1
        self.server.clients.discard(self)


class Server:
    def __init__(self, path: str, *, verbose: bool = False) -> None:
        self.path, self.verbose = path, verbose
        self.pid = os.getpid()
        self.me = peer.Server()
        if self.me.confined:
            raise ServeError(
                "the server runs with no_new_privs or under a seccomp filter: its launches "
                "would not be the cold launches of its clients"
            )
        self.identity = P.identity()
        self.package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
        self.loop = EventLoop()
        self.listener = listen(path)
        self.clients: set[Client] = set()
        self.launches: dict[int, Client] = {}
        self.spare: tuple[int, socket.socket] | None = None  # a launch forked ahead: pid, job
        self.served = 0
        self.refused = 0
        self.stopping = False
        self.stale = _Watch(self.package)
        if self.stale.fd >= 0:
            self.loop.add(self.stale.fd, self.stale.on_event)

    def log(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"sandbox serve: {message}", file=sys.stderr, flush=True)

    # -- accepting

    def on_accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.log(f"accept: {e.strerror}")
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    # Out of descriptors: stop listening a moment instead of spinning on a
                    # listener that stays readable.
                    self.loop.remove(self.listener)
                    self.loop.call_at(_now() + 0.1, self.resume_accepting)
                return
            sock.setblocking(False)
            pid, uid, _gid = _CRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
            )
            client = Client(self, sock, pid)
            if uid != self.me.euid:
                client.refuse(f"the client runs as uid {uid}, the server as {self.me.euid}")
                continue
            try:
                client.pidfd = peer.peer_pidfd(sock, pid)
            except OSError:
                client.refuse("the client exited")
                continue
            self.clients.add(client)
            self.loop.add(sock, client.on_request)
            client.timer = self.loop.call_at(_now() + REQUEST_TIMEOUT, client.close)

    def resume_accepting(self) -> None:
        if not self.stopping:
            self.loop.add(self.listener, self.on_accept)

    def why_not(self, request: P.Request, cwd: int) -> str | None:
        """Why this server cannot run the code a cold launch of `request` would run."""
        if request.identity != self.identity.encode():
            return "the client belongs to another installation of outheis-sandbox"
        if self.stale.changed:
            return "the server's code changed on disk since it started (restart sandbox serve)"
        env = dict(e.split(b"=", 1) for e in reversed(request.environ))
        if env.get(b"PYTHONHOME"):
            return "PYTHONHOME is set"
        for entry in env.get(b"PYTHONPATH", b"").split(b":"):
            found = _package_in(entry, cwd)
            if found is not None and found != self.package:
                return f"PYTHONPATH names another sandbox package ({found})"
        if threading.active_count() != 1:
            return "the server has threads (it cannot fork a clean launch)"
        return None

    # -- launching

    def fork_launch(self, client: Client, request: P.Request, inherited: peer.Inherited) -> None:
        """Hand the launch to the spare (forked ahead), or fork one now."""
        r, w = os.pipe2(os.O_CLOEXEC)
        fds = [*client.fds, w]
        pid = self._to_spare(request, inherited, fds)
        if pid == 0:
            pid = self._fork(lambda: launch.main(request, inherited, fds), detach=True)
        os.close(w)
        for fd in client.fds:
            os.close(fd)
        client.fds = []
        if pid < 0:
            os.close(r)
            client.refuse("fork failed")
            return
        client.launch_pid = client.pid_of_launch = pid
        client.report = r
        os.set_blocking(r, False)
        self.launches[pid] = client
        self.loop.add(r, client.on_report)
        if self.spare is None and not self.stopping:  # the next launch's, once this one runs
            self.loop.call_at(0.0, self.fork_spare)

    def _to_spare(self, request: P.Request, inherited: peer.Inherited, fds: list[int]) -> int:
        spare, self.spare = self.spare, None
        if spare is None:
            return 0
        pid, job = spare
        try:
            launch.send_job(job, request.payload, inherited, fds)
        except OSError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return 0
        finally:
            job.close()
        return pid

    def fork_spare(self) -> None:
        if self.spare is not None or self.stopping:
            return
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent_end.set_inheritable(False)
        pid = self._fork(
            lambda: launch.spare_main(child_end, self.pid, [parent_end.close, *self._closers()]),
            detach=False,
        )
        child_end.close()
        if pid < 0:
            parent_end.close()
            return
        self.spare = (pid, parent_end)

    def _closers(self) -> list[Callable[[], object]]:
        """Everything of the server's a launch must drop (every client's socket included)."""
        out: list[Callable[[], object]] = [c.sock.close for c in self.clients]
        if self.spare is not None:
            out.append(self.spare[1].close)
        out += [self.listener.close, self.loop.close, self.stale.close]
        return out

    def _fork(self, child: Callable[[], object], *, detach: bool) -> int:
        """Fork with every signal blocked; the child detaches and runs `child` (a spare
        detaches itself, later, in spare_main). -1 if fork failed."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            return -1
        if pid == 0:
            try:
                if detach:
                    launch.detach(self.pid, self._closers())
                child()
            finally:
                os._exit(3)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return pid

    def on_signals(self, got: set[int]) -> None:
        if signal.SIGCHLD in got:
            self.reap()
        if got & set(SHUTDOWN):
            if self.stopping:  # asked twice: end the launches in flight too
                for client in list(self.launches.values()):
                    client.kill(signal.SIGKILL)
            self.stop_listening()
        if self.stopping and not self.launches:
            self.loop.stop()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and self.spare[0] == pid:  # a spare that died
                self.spare[1].close()
                self.spare = None
            client = self.launches.pop(pid, None)
            if client is not None:
                client.exited(status)

    def stop_listening(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.loop.remove(self.listener)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.listener.fileno()).st_ino:
                os.unlink(self.path)
        self.listener.close()

    def run(self) -> None:
        self.loop.add(self.listener, self.on_accept)
        self.loop.on_signals(HANDLED, self.on_signals)
        gc.freeze()  # launches share the imported objects; a collection would copy them
        self.fork_spare()
        try:
            self.loop.run()
        finally:
            self.stop_listening()
            for client in list(self.clients):
                client.kill(signal.SIGKILL)
                client.close()
            if self.spare is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.spare[0], signal.SIGKILL)
                self.spare[1].close()
            self.loop.close()
            self.log(f"stopped after {self.served} warm launches ({self.refused} refused)")


class _Watch:
    """inotify on the package's directories: a server whose code changed on disk would run
    other code than a cold launch, so from then on it refuses (clients launch cold)."""

    # IN_MODIFY IN_ATTRIB IN_CLOSE_WRITE IN_MOVED_FROM IN_MOVED_TO IN_CREATE IN_DELETE
    IN_FLAGS = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200
    IN_ISDIR = 0x40000000
    _EVENT = struct.Struct("=iIII")

    def __init__(self, package: str) -> None:
        self.changed = False
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd < 0:
            return
        for directory, dirs, _files in os.walk(package):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if libc.inotify_add_watch(self.fd, os.fsencode(directory), self.IN_FLAGS) < 0:
                self.changed = True  # cannot watch: assume the worst

    def on_event(self) -> None:
        with contextlib.suppress(BlockingIOError):
            data = os.read(self.fd, 65536)
            offset = 0
            while offset + self._EVENT.size <= len(data):
                _wd, mask, _cookie, length = self._EVENT.unpack_from(data, offset)
                name = data[offset + self._EVENT.size : offset + self._EVENT.size + length]
                name = name.rstrip(b"\0")
                offset += self._EVENT.size + length
                if name.endswith((b".py", b".json")):
                    self.changed = True
                elif mask & self.IN_ISDIR and name != b"__pycache__":
                    self.changed = True  # a new package directory: its files are not watched

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _package_in(entry: bytes, cwd: int) -> str | None:
    """The real path of a `sandbox` module or package in PYTHONPATH entry `entry` (relative
    entries are relative to the client's cwd), None if it has none."""
    base = entry or b"."
    for name in (b"sandbox", b"sandbox.py"):
        try:
            fd = os.open(os.path.join(base, name), os.O_PATH | os.O_CLOEXEC, dir_fd=cwd)
        except OSError:
            continue
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    return None


def _now() -> float:
    import time

    return time.monotonic()


def _stdio_open() -> None:
    """Keep 0-2 open (on /dev/null if closed) so that received descriptors land above."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def parse_args(args: Sequence[str]) -> tuple[str | None, bool]:
    """(socket path, verbose) from `sandbox serve` arguments."""
    path: str | None = None
    verbose = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            print(USAGE, end="")
            raise SystemExit(0)
        name, eq, value = arg.partition("=")
        if name == "--socket":
            if not eq:
                if i + 1 >= len(args):
                    raise ServeError("--socket needs a path")
                i += 1
                value = args[i]
            path = value
        elif arg in ("-v", "--verbose"):
            verbose = True
        else:
            raise ServeError(f"unknown argument {arg} (see sandbox serve --help)")
        i += 1
    return path, verbose


def main(args: Sequence[str]) -> int:
    try:
        path, verbose = parse_args(args)
        path = path or P.socket_path(os.environ)
        if path is None:
            raise ServeError(
                "no socket: give --socket PATH, or set SANDBOX_SERVER or XDG_RUNTIME_DIR"
            )
        _stdio_open()
        preload()
        server = Server(path, verbose=verbose)
    except (ServeError, OSError) as e:
        print(f"sandbox serve: {e}", file=sys.stderr)
        return 1
    # One line on stdout once it accepts, for whoever started it (scripts, tests).
    print(f"listening {path}", flush=True)
    server.run()
    return 0
