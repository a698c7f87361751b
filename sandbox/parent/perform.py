"""The parent performs what the kernel cannot check (SPEC section 8).

Landlock checks opening, not chmod, chown, utimes or extended attributes, and on this
kernel (ABI < 9) not connecting to a pathname unix socket; a filter sees numbers, not the
strings behind pointers. Refusing those calls outright makes ordinary programs unusable
(cp -p, tar x, git init, a venv), so the filter routes them here, and one pattern decides
all of them:

1. The arguments are read once from the agent's memory (sandbox.parent.agentproc), and
   the notification is checked to be still pending (id_valid) before anything is done.
2. The path is resolved as the agent would resolve it, by the agent's performer
   (sandbox.parent.performer): in its mount namespace and root, from its cwd or the
   dirfd it passed (duplicated with pidfd_getfd), honouring AT_SYMLINK_NOFOLLOW and
   AT_EMPTY_PATH, refusing magic links, to one O_PATH descriptor. Where that descriptor
   lies (its name, checked to be a current name of the same inode) is what is decided.
3. The decision uses the plan: the promise (the filter routes only with it, and under
   execpromises it is checked again here), the unveil letter OpenBSD's kernel requires
   (`w` for chmod, chown, utimes and xattrs, as vfs_syscalls.c asks; `w` for connect to a
   unix socket, as unveil(2) says), the closest enclosing unveil deciding as on OpenBSD.
4. An `op` record is committed (write-ahead), then the performer makes the call on the
   same descriptor, with the agent's ids and no capabilities, so the kernel's own
   permission checks apply; the agent gets the result or the kernel's errno. The call is
   never let through ("continue") after its arguments were read.

The same machinery strips setuid/setgid bits (handler "setid": the filter routes every
mode-taking call whose mode has one, the parent performs it without them), and opens the
few files a promise brings for an agent that lacks rpath (handler "brought"), injecting
the descriptor with SECCOMP_IOCTL_NOTIF_ADDFD.

Each decision is a generator: it yields requests for the performer and gets its replies,
so the parent's loop never waits for the performer (which may itself wait, in a connect).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from sandbox.enforce import landlock, seccomp
from sandbox.enforce import syscalls as S
from sandbox.enforce.plan import effective_unveils, path_rules
from sandbox.enforce.promises import HANDLER_SUMMARY as HANDLER_SUMMARY  # re-exported
from sandbox.enforce.promises import SETID_BITS
from sandbox.enforce.rules import match
from sandbox.parent import agentproc, performer
from sandbox.parent.agentproc import int32
from sandbox.parent.audit import AuditError
from sandbox.plain import field, plain
from sandbox.policy.model import Unveil, beyond_resolved, resolve_unveils

if TYPE_CHECKING:
    from sandbox.enforce.plan import Plan
    from sandbox.parent.notify import Supervisor

AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
AT_EMPTY_PATH = 0x1000
AT_STATX_SYNC_TYPE = 0x6000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_CREATE, XATTR_REPLACE = 1, 2
SOCKADDR_STORAGE = 128
SUN_PATH_END = 110  # sizeof(struct sockaddr_un)
UIO_MAXIOV = 1024
SCM_MAX_FD = 253
MAX_SEND = 128 * 1024  # bytes the parent copies for one send (a stream gets a short write)
MAX_CONTROL = 64 * 1024
SCM_RIGHTS, SCM_CREDENTIALS = 1, 2
MSG_NOSIGNAL = 0x4000
_U64 = 0xFFFFFFFFFFFFFFFF
SYS_TGKILL = 234
READY_TIMEOUT = 10.0
ABSTRACT_REFUSED = (
    "an abstract socket: the agent shares the host's network namespace, where the parent "
    "cannot tell the sandbox's own abstract sockets from others"
)
MAX_RESTARTS = 3

# /proc/self/fd/N (and its aliases) names the agent's own descriptor N: resolved as that
# descriptor, since in the performer it would name the performer's.
_AGENT_FD = re.compile(rb"^/(?:proc/(?:self|thread-self)|dev)/fd/([0-9]{1,9})(/.*)?$", re.S)


# --- what a decision yields and returns ------------------------------------------------------


@plain
class Reply:
    header: dict[str, Any]
    blob: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def err(self) -> int:
        v = self.header.get("err", 0)
        return v if isinstance(v, int) and 0 <= v < 4096 else errno.EIO

    @property
    def ret(self) -> int:
        v = self.header.get("ret", 0)
        return v if isinstance(v, int) else 0

    def take_fd(self) -> int | None:
        return self.fds.pop(0) if self.fds else None

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


@plain(frozen=True)
class Call:
    """A request for the performer; `fds` are ours, closed once sent."""

    op: str
    header: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""
    fds: tuple[int, ...] = ()


@plain(frozen=True)
class Answer:
    """The result of the agent's call: a value, an errno, or a descriptor to inject."""

    value: int = 0
    error: int = 0
    fd: int | None = None
    cloexec: bool = False


@plain(frozen=True)
class Refer:
    """Not a call the parent performs: a violation, worded for an agent holding `have`."""

    have: frozenset[str]
    note: str | None = None


Outcome = Answer | Refer | None  # None: already dealt with (the agent is gone or killed)
Decision = Generator[Call, Reply, Outcome]


@plain(frozen=True)
class Resolved:
    handle: int
    path: str | None  # a current name of the inode in the agent's view, or None
    mode: int
    uid: int
    gid: int


class Unavailable(Exception):
    """The performer cannot be started (or died too often)."""


# --- the performer, seen from the parent -------------------------------------------------------


class PerformerLink:
    """The parent's end of one agent's performer, started on first use."""

    def __init__(
        self,
        agent_pid: int,
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
    ) -> None:
        self.agent_pid = agent_pid
        self.watch, self.unwatch = watch, unwatch
        self.sock: socket.socket | None = None
        self.pid = 0
        self.key: object = None  # what the running performer was restricted to
        self.pending: dict[int, Callable[[Reply], None]] = {}
        self.next_id = 1
        self.failures = 0  # performers that died or did not start
        self.why = ""

    def ensure(self, key: object, ll: landlock.LandlockPlan | None) -> None:
        """A performer restricted to `ll` (restarted when the restriction changed)."""
        if self.sock is not None and self.key == key:
            return
        self.stop()  # a new restriction (a narrowing lock): a new performer
        if self.failures >= MAX_RESTARTS:
            raise Unavailable(self.why or "the performer died too often")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (mine, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, performer.MAX_FRAME * 2)
        launcher = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the performer
            try:
                mine.close()
                from sandbox.enforce import hygiene

                hygiene.set_parent_death_signal(launcher)
                os.dup2(theirs.fileno(), 3, inheritable=False)
                hygiene.close_fds_from(4)
                chan = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=3)
                performer.main(chan, self.agent_pid, ll, launcher)
            finally:
                os._exit(3)
        theirs.close()
        self.pid = pid
        try:
            ready, _, _ = select.select([mine], [], [], READY_TIMEOUT)
            header, _, fds = performer.recv(mine) if ready else ({}, b"", [])
            for fd in fds:
                os.close(fd)
        except (OSError, ValueError, EOFError) as e:
            header = {"why": f"no answer from the performer: {e}"}
        if header.get("ready") is not True:
            self.why = str(header.get("why", "the performer did not start in time"))[:500]
            self.failures += 1
            mine.close()
            self._reap(kill=True)
            raise Unavailable(self.why)
        mine.setblocking(False)
        self.sock, self.key = mine, key
        self.watch(mine.fileno(), self.on_readable)

    def call(self, call: Call, then: Callable[[Reply], None]) -> None:
        assert self.sock is not None
        rid = self.next_id
        self.next_id += 1
        try:
            self._send({**call.header, "op": call.op, "id": rid}, call.blob, call.fds)
        except OSError as e:
            then(Reply({"err": e.errno or errno.EIO}))
            return
        self.pending[rid] = then

    def post(self, call: Call) -> None:
        """Send without waiting for an answer (the performer sends none for these)."""
        with contextlib.suppress(OSError):
            self._send({**call.header, "op": call.op, "id": 0, "noreply": True})

    def _send(self, header: dict[str, Any], blob: bytes = b"", fds: tuple[int, ...] = ()) -> None:
        """One frame; our `fds` are closed once sent. The socket stays non-blocking (the
        loop reads it); a full buffer (a performer that stopped reading) waits at most 5 s."""
        assert self.sock is not None
        try:
            for _ in range(2):
                try:
                    performer.send(self.sock, header, blob, list(fds))
                    return
                except BlockingIOError:
                    select.select([], [self.sock], [], 5.0)
            raise OSError(errno.EAGAIN, "the performer does not read its requests")
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def on_readable(self) -> None:
        assert self.sock is not None
        while self.sock is not None:
            try:
                header, blob, fds = performer.recv(self.sock)
            except BlockingIOError:
                return
            except (EOFError, OSError):
                self._died()
                return
            except ValueError:
                continue
            rid = header.get("id")
            then = self.pending.pop(rid, None) if isinstance(rid, int) else None
            reply = Reply(header, blob, fds)
            if then is None:
                reply.close()
            else:
                then(reply)

    def _died(self) -> None:
        self.why = "the performer exited"
        self.failures += 1
        self.stop()

    def stop(self) -> None:
        if self.sock is not None:
            self.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None
        self._reap(kill=True)
        pending, self.pending = self.pending, {}
        for then in pending.values():
            then(Reply({"err": errno.EIO}))

    def _reap(self, *, kill: bool) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                if kill:
                    os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0


# --- argument layouts -------------------------------------------------------------------------


@plain(frozen=True)
class PathArgs:
    """Where a call keeps its dirfd, path and AT_* flags (indices; None: absent)."""

    path: int
    dirfd: int | None = None
    at_flags: int | None = None
    follow: bool = True
    allowed: int = 0  # AT_* flags the call accepts (others: EINVAL)
    null_is_fd: bool = False  # futimesat: a NULL path means the dirfd itself


_AT_BOTH = AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH

# Attribute calls (handler "perform"): layout, what they change, and the argument indices
# of their values.
ATTR_CALLS: dict[str, tuple[PathArgs, str, tuple[int, ...]]] = {
    "chmod": (PathArgs(0), "chmod", (1,)),
    "fchmodat": (PathArgs(1, dirfd=0), "chmod", (2,)),
    "fchmodat2": (PathArgs(1, dirfd=0, at_flags=3, allowed=_AT_BOTH), "chmod", (2,)),
    "chown": (PathArgs(0), "chown", (1, 2)),
    "lchown": (PathArgs(0, follow=False), "chown", (1, 2)),
    "fchownat": (PathArgs(1, dirfd=0, at_flags=4, allowed=_AT_BOTH), "chown", (2, 3)),
    "utime": (PathArgs(0), "utime", (1,)),
    "utimes": (PathArgs(0), "utimes", (1,)),
    "futimesat": (PathArgs(1, dirfd=0, null_is_fd=True), "utimes", (2,)),
    "utimensat": (PathArgs(1, dirfd=0, at_flags=3, allowed=_AT_BOTH), "utimensat", (2,)),
    "setxattr": (PathArgs(0), "setxattr", (1, 2, 3, 4)),
    "lsetxattr": (PathArgs(0, follow=False), "setxattr", (1, 2, 3, 4)),
    "removexattr": (PathArgs(0), "removexattr", (1,)),
    "lremovexattr": (PathArgs(0, follow=False), "removexattr", (1,)),
    "setxattrat": (PathArgs(1, dirfd=0, at_flags=2, allowed=_AT_BOTH), "setxattrat", (3, 4, 5)),
    "removexattrat": (PathArgs(1, dirfd=0, at_flags=2, allowed=_AT_BOTH), "removexattr", (3,)),
}
_CHOWN_KINDS = frozenset({"chown"})

# Calls whose files a promise brings (handler "brought"): layout, kind, value indices.
BROUGHT_CALLS: dict[str, tuple[PathArgs, str, tuple[int, ...]]] = {
    "open": (PathArgs(0), "open", (1,)),
    "openat": (PathArgs(1, dirfd=0), "open", (2,)),
    "stat": (PathArgs(0), "stat", (1,)),
    "lstat": (PathArgs(0, follow=False), "stat", (1,)),
    "newfstatat": (PathArgs(1, dirfd=0, at_flags=3, allowed=_AT_BOTH | 0x800), "stat", (2,)),
    "statx": (
        PathArgs(1, dirfd=0, at_flags=2, allowed=_AT_BOTH | 0x800 | AT_STATX_SYNC_TYPE),
        "statx",
        (3, 4),
    ),
    "access": (PathArgs(0), "access", (1,)),
    "faccessat": (PathArgs(1, dirfd=0), "access", (2,)),
    "faccessat2": (PathArgs(1, dirfd=0, at_flags=3, allowed=_AT_BOTH | AT_EACCESS), "access", (2,)),
}

# Mode-taking calls (handler "setid"): layout (None: the call takes a descriptor), index
# of the mode, index of the open flags (None: fixed), fixed flags.
O_CREAT, O_EXCL, O_TRUNC, O_TMPFILE_BIT = 0o100, 0o200, 0o1000, 0o20000000
O_NOFOLLOW, O_CLOEXEC, O_PATH, O_DIRECTORY = 0o400000, 0o2000000, 0o10000000, 0o200000
SETID_CALLS: dict[str, tuple[PathArgs | None, int, int | None, int]] = {
    "fchmod": (None, 1, None, 0),
    "open": (PathArgs(0), 2, 1, 0),
    "openat": (PathArgs(1, dirfd=0), 3, 2, 0),
    "creat": (PathArgs(0), 1, None, O_CREAT | 0o1 | O_TRUNC),
    "mknod": (PathArgs(0), 1, None, 0),
    "mknodat": (PathArgs(1, dirfd=0), 2, None, 0),
}


def _utimes(raw: bytes) -> list[list[int]]:
    """struct timeval[2] as timespecs; EINVAL for microseconds out of range (as the kernel)."""
    secs_a, usec_a, secs_m, usec_m = struct.unpack("=qqqq", raw)
    if not (0 <= usec_a < 1_000_000 and 0 <= usec_m < 1_000_000):
        raise OSError(errno.EINVAL, "tv_usec out of range")
    return [[secs_a, usec_a * 1000], [secs_m, usec_m * 1000]]


def _timespecs(raw: bytes) -> list[list[int]]:
    a_s, a_ns, m_s, m_ns = struct.unpack("=qqqq", raw)
    for ns in (a_ns, m_ns):
        if ns not in (UTIME_NOW, UTIME_OMIT) and not 0 <= ns < 1_000_000_000:
            raise OSError(errno.EINVAL, "tv_nsec out of range")
    return [[a_s, a_ns], [m_s, m_ns]]


def _fsdecode(path: bytes) -> str:
    return os.fsdecode(path)


# --- the decisions ------------------------------------------------------------------------------


@plain
class Ctx:
    n: seccomp.Notification
    name: str
    args: list[int]

    @property
    def tid(self) -> int:
        return self.n.pid


# What each handler does: HANDLER_SUMMARY, kept with the table that names the handlers
# (sandbox.enforce.promises), so that `sandbox explain` need not import this module.


class Perform:
    """The calls a Supervisor hands over: decided here, performed by the agent's performer."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.link: PerformerLink | None = None
        self._resolved: tuple[object, tuple[tuple[str, Unveil], ...]] = (None, ())
        self._restriction: tuple[object, object, landlock.LandlockPlan | None] = (None, None, None)
        self._said: set[tuple[str, str]] = set()

    def close(self) -> None:
        if self.link is not None:
            self.link.stop()
            self.link = None

    # -- routing

    def start(self, n: seccomp.Notification, name: str, args: list[int], handler: str) -> None:
        c = Ctx(n, name, args)
        decide: Callable[[Ctx], Decision] = {
            "perform": self._attr,
            "setid": self._setid,
            "unix": self._unix,
            "brought": self._brought,
        }[handler]
        self._advance(c, decide(c), None)

    def _advance(self, c: Ctx, gen: Decision, reply: Reply | None) -> None:
        try:
            call = gen.send(reply)  # type: ignore[arg-type]  # None starts the generator
        except StopIteration as stop:
            self._finish(c, stop.value)
            return
        except Unavailable as e:
            self._unavailable(c, str(e))
            return
        except Exception as e:  # a defect must not end the parent: refuse, record, go on
            self._record(c, "internal", None, "deny", f"internal error: {e!r}"[:500])
            self._finish(c, Answer(error=errno.EPERM))
            return
        finally:
            if reply is not None:
                reply.close()
        try:
            link = self._link()
        except Unavailable as e:
            for fd in call.fds:
                os.close(fd)
            gen.close()
            self._unavailable(c, str(e))
            return
        link.call(call, lambda r: self._advance(c, gen, r))

    def _link(self) -> PerformerLink:
        plan = self.sup.plan
        if self._restriction[0] is not plan:
            self._restriction = (plan, *_restriction(plan))
        _, key, own = self._restriction
        if self.link is None:
            loop = self.sup.loop
            if loop is None:
                raise Unavailable("no event loop to serve the performer")
            self.link = PerformerLink(self.sup.agent_pid, loop.add, loop.remove)
        self.link.ensure(key, own)
        return self.link

    def _finish(self, c: Ctx, outcome: Outcome) -> None:
        listener = self.sup.listener
        if outcome is None:
            return
        if isinstance(outcome, Refer):
            self.sup.refuse(c.n, c.name, c.args, outcome.have, note=outcome.note)
            return
        if outcome.fd is not None:
            try:
                seccomp.add_fd(listener, c.n.id, outcome.fd, send=True, cloexec=outcome.cloexec)
            except OSError as e:
                seccomp.respond(listener, c.n.id, error=e.errno or errno.EMFILE)
            finally:
                os.close(outcome.fd)
            return
        seccomp.respond(listener, c.n.id, val=outcome.value, error=outcome.error)

    def _unavailable(self, c: Ctx, why: str) -> None:
        if ("performer", why) not in self._said:
            self._said.add(("performer", why))
            print(
                f"sandbox: {self.sup.name}[{c.tid}]: cannot perform {c.name} for the agent: {why}",
                file=sys.stderr,
            )
        self._record(c, "performer", None, "deny", f"the performer is unavailable: {why}")
        self._finish(c, Answer(error=errno.EPERM))

    # -- shared steps

    def _held(self, tid: int) -> frozenset[str]:
        pol = self.sup.plan.policy
        if pol.execpromises is not None and self.sup.under_execpromises(tid):
            return pol.execpromises & pol.pledge
        return pol.pledge

    def _unveils(self) -> tuple[tuple[str, Unveil], ...]:
        """What the attribute and socket checks decide by: the policy's unveils (and
        tmppath's /tmp), not the files a promise brings: /dev/null is unveiled 'rw' to be
        written, not to have its mode changed."""
        plan = self.sup.plan
        if self._resolved[0] is not plan:
            own = effective_unveils(plan.policy, brought=False)
            self._resolved = (plan, resolve_unveils(own))
        return self._resolved[1]

    def _record(
        self, c: Ctx, resource: str, path: str | None, decision: str, reason: str, **extra: Any
    ) -> bool:
        """The op record, durable before the effect reaches the agent; on failure the agent
        is ended (write-ahead: nothing unrecorded happens)."""
        try:
            self.sup.audit.record(
                "op",
                pid=c.tid,
                op=c.name,
                resource=resource,
                path=path,
                decision=decision,
                reason=reason,
                **extra,
            )
        except AuditError as e:
            print(f"sandbox: audit log failed ({e}); ending {self.sup.name}", file=sys.stderr)
            self.sup.killed_for_violation = True
            self.sup.kill_tree()
            return False
        return True

    def _refuse_unveil(self, c: Ctx, path: str | None, letter: str, **extra: Any) -> Outcome:
        what = {"w": "write", "r": "read", "c": "create"}[letter]
        if path is None:
            reason = "the file has no name beneath the agent's root (deleted, or reached "
            reason += "through a descriptor of a file outside it)"
        else:
            reason = f"not beneath an unveil with '{letter}'"
        if not self._record(c, "unveil", path, "deny", reason, **extra):
            return None
        if path is not None and (c.name, path) not in self._said and len(self._said) < 1024:
            self._said.add((c.name, path))
            print(
                f"sandbox: {self.sup.name}[{c.tid}]: unveil refused {c.name} {path} ({what}): "
                f"add '{path}: {letter}'",
                file=sys.stderr,
            )
        return Answer(error=errno.EACCES)

    def _allowed(self, path: str | None, letter: str) -> bool:
        return path is not None and beyond_resolved(path, letter, self._unveils()) is None

    def _dirfd(self, c: Ctx, layout: PathArgs, path: bytes) -> tuple[int, bytes, bool]:
        """Our descriptor for where `path` starts, the path from there, and whether the
        result is that descriptor itself (an agent's /proc/self/fd/N)."""
        m = _AGENT_FD.match(path)
        if m is not None:
            rest = (m.group(2) or b"").lstrip(b"/")
            return agentproc.dup_fd(c.tid, int(m.group(1))), rest, rest == b""
        if path.startswith(b"/"):
            return -1, path, False  # the performer resolves it from its root (the agent's)
        dirfd = int32(c.args[layout.dirfd]) if layout.dirfd is not None else agentproc.AT_FDCWD
        return agentproc.dirfd_of(c.tid, dirfd), path, False

    def _resolve(
        self,
        c: Ctx,
        layout: PathArgs,
        path: bytes,
        *,
        follow: bool,
        empty: bool,
        directory: bool = False,
    ) -> Generator[Call, Reply, Resolved | Answer]:
        try:
            fd, rest, itself = self._dirfd(c, layout, path)
        except OSError as e:
            return Answer(error=e.errno or errno.EBADF)
        if itself and not follow:
            os.close(fd)
            return Answer(error=errno.ELOOP)  # the magic link itself: nothing to act on
        header = {"follow": follow, "empty": empty or itself, "directory": directory}
        reply = yield Call("resolve", header, rest, (fd,) if fd >= 0 else ())
        if reply.err:
            return Answer(error=reply.err)
        h = reply.header
        named = bool(h.get("named")) and reply.blob.startswith(b"/")
        return Resolved(
            handle=int(h.get("h", 0)),
            path=_fsdecode(reply.blob) if named else None,
            mode=int(h.get("mode", 0)),
            uid=int(h.get("uid", -1)),
            gid=int(h.get("gid", -1)),
        )

    def _release(self, r: Resolved | int) -> None:
        """Let the performer close a resolved descriptor (no answer awaited)."""
        if self.link is not None and self.link.sock is not None:
            self.link.post(Call("close", {"h": r.handle if isinstance(r, Resolved) else r}))

    def _path_arg(self, c: Ctx, layout: PathArgs) -> bytes:
        addr = c.args[layout.path]
        if addr == 0 and layout.null_is_fd:
            return b""
        return agentproc.read_string(c.tid, addr)

    def _pending(self, c: Ctx) -> bool:
        """After reading the agent's memory: is it still waiting for this answer?"""
        return seccomp.id_valid(self.sup.listener, c.n.id)

    # -- attributes: chmod, chown, utimes, xattrs (SPEC section 8)

    def _attr(self, c: Ctx) -> Decision:
        layout, kind, value_at = ATTR_CALLS[c.name]
        at = int32(c.args[layout.at_flags]) if layout.at_flags is not None else 0
        if at & ~layout.allowed:
            return Answer(error=errno.EINVAL)
        held = self._held(c.tid)
        need = ("fattr", "chown") if kind in _CHOWN_KINDS else ("fattr",)
        if "rpath" not in held or not held & set(need):
            return Refer(held)
        follow = layout.follow and not at & AT_SYMLINK_NOFOLLOW
        empty = bool(at & AT_EMPTY_PATH) or (layout.null_is_fd and c.args[layout.path] == 0)
        try:
            values = self._attr_values(c, kind, value_at)
            path = self._path_arg(c, layout)
        except OSError as e:
            return Answer(error=e.errno or errno.EFAULT)
        if not self._pending(c):
            return None
        res = yield from self._resolve(c, layout, path, follow=follow, empty=empty)
        if isinstance(res, Answer):
            return res
        extra = {k: v for k, v in values.items() if k in ("mode", "uid", "gid", "times", "name")}
        if "mode" in extra:
            extra["mode"] = f"{extra['mode'] & 0o7777:o}"
        for key in ("uid", "gid"):  # -1 (keep) as the agent wrote it
            if key in extra:
                extra[key] = int32(extra[key])
        if not self._allowed(res.path, "w"):
            self._release(res)
            return self._refuse_unveil(c, res.path, "w", **extra)
        reason = "beneath an unveil with 'w'"
        if kind == "chmod":
            asked = values["mode"]
            values["mode"] = asked & 0o7777 & ~SETID_BITS
            if values["mode"] != asked & 0o7777:
                reason += f"; setuid/setgid stripped ({asked & 0o7777:o} -> {values['mode']:o})"
            extra["mode"] = f"{values['mode']:o}"
        if kind == "chown" and "chown" not in held:
            # fattr alone: OpenBSD's pledge_chown, own uid and own groups only.
            uid, gid = values["uid"], values["gid"]
            own_gids = self._groups(c.tid)
            if (uid != 0xFFFFFFFF and uid != self._euid(c.tid)) or (
                gid != 0xFFFFFFFF and gid not in own_gids
            ):
                self._release(res)
                if not self._record(
                    c,
                    "promise",
                    res.path,
                    "deny",
                    "'fattr' changes owners to the agent's own "
                    "uid and groups only; other ids need 'chown'",
                    **extra,
                ):
                    return None
                return Answer(error=errno.EPERM)
        if not self._record(c, "unveil", res.path, "allow", reason, **extra):
            return None
        op = {"utime": "utimens", "utimes": "utimens", "utimensat": "utimens",
              "setxattrat": "setxattr"}.get(kind, kind)  # fmt: skip
        header: dict[str, Any] = {"h": res.handle, "follow": follow}
        blob = b""
        if op == "chmod":
            header["mode"] = values["mode"]
        elif op == "chown":
            header["uid"], header["gid"] = values["uid"], values["gid"]
        elif op == "utimens":
            header["times"] = values["times"]
        elif op == "setxattr":
            blob = values["name_raw"] + values["value"]
            header.update(name_len=len(values["name_raw"]), flags=values["flags"])
            header["path"] = (res.path or "").encode("utf-8", "surrogateescape").hex()
        elif op == "removexattr":
            blob = values["name_raw"]
            header["path"] = (res.path or "").encode("utf-8", "surrogateescape").hex()
        header["last"] = True  # the performer closes the descriptor after acting
        reply = yield Call(op, header, blob)
        return Answer(value=reply.ret if not reply.err else 0, error=reply.err)

    def _attr_values(self, c: Ctx, kind: str, at: tuple[int, ...]) -> dict[str, Any]:
        """The call's other arguments, read (once) and validated as the kernel would,
        before the path lookup."""
        tid, a = c.tid, c.args
        if kind == "chmod":
            return {"mode": a[at[0]] & 0xFFFFFFFF}
        if kind == "chown":
            return {"uid": a[at[0]] & 0xFFFFFFFF, "gid": a[at[1]] & 0xFFFFFFFF}
        if kind in ("utime", "utimes", "utimensat"):
            ptr = a[at[0]]
            if ptr == 0:
                return {"times": None}
            if kind == "utime":
                actime, modtime = struct.unpack("=qq", agentproc.read_exact(tid, ptr, 16))
                return {"times": [[actime, 0], [modtime, 0]]}
            raw = agentproc.read_exact(tid, ptr, 32)
            return {"times": _utimes(raw) if kind == "utimes" else _timespecs(raw)}
        if kind == "setxattr":
            flags = int32(a[at[3]])
            if flags & ~(XATTR_CREATE | XATTR_REPLACE):
                raise OSError(errno.EINVAL, "xattr flags")
            return self._xattr(tid, a[at[0]], a[at[1]], a[at[2]] & 0xFFFFFFFFFFFFFFFF, flags)
        if kind == "setxattrat":
            size = a[at[2]] & 0xFFFFFFFFFFFFFFFF
            if size < 16:
                raise OSError(errno.EINVAL, "struct xattr_args too small")
            if size > 4096:
                raise OSError(errno.E2BIG, "struct xattr_args too large")
            raw = agentproc.read_exact(tid, a[at[1]], size)
            if any(raw[16:]):
                raise OSError(errno.E2BIG, "unknown fields in struct xattr_args")
            value_ptr, vsize, flags = struct.unpack_from("=QII", raw)
            if flags & ~(XATTR_CREATE | XATTR_REPLACE):
                raise OSError(errno.EINVAL, "xattr flags")
            return self._xattr(tid, a[at[0]], value_ptr, vsize, flags)
        if kind == "removexattr":
            name = self._xattr_name(tid, a[at[0]])
            return {"name_raw": name, "name": _fsdecode(name)}
        raise ValueError(kind)

    def _xattr_name(self, tid: int, ptr: int) -> bytes:
        try:
            name = agentproc.read_string(tid, ptr, XATTR_NAME_MAX + 1)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise OSError(errno.ERANGE, "xattr name too long") from None
            raise
        if not name:
            raise OSError(errno.ERANGE, "empty xattr name")
        return name

    def _xattr(
        self, tid: int, name_ptr: int, value_ptr: int, size: int, flags: int
    ) -> dict[str, Any]:
        name = self._xattr_name(tid, name_ptr)
        if size > XATTR_SIZE_MAX:
            raise OSError(errno.E2BIG, "xattr value too large")
        value = agentproc.read_exact(tid, value_ptr, size) if size else b""
        return {"name_raw": name, "name": _fsdecode(name), "value": value, "flags": flags}

    def _euid(self, tid: int) -> int:
        from sandbox import procfs

        values = procfs.status_field(f"/proc/{tid}/status", "Uid")
        return int(values[1]) if values else -1

    def _groups(self, tid: int) -> set[int]:
        from sandbox import procfs

        gids = procfs.status_field(f"/proc/{tid}/status", "Gid") or []
        groups = procfs.status_field(f"/proc/{tid}/status", "Groups") or []
        return {int(g) for g in [*gids[1:2], *groups]}

    # -- setuid and setgid bits: performed with them stripped

    def _setid(self, c: Ctx) -> Decision:
        layout, mode_at, flags_at, fixed = SETID_CALLS[c.name]
        asked = c.args[mode_at] & 0xFFFFFFFF
        stripped = list(c.args)
        stripped[mode_at] = asked & ~SETID_BITS
        rule = match(self.sup.plan.rules, c.name, stripped)
        held = self._held(c.tid)
        ok = rule is not None and (
            rule.action == "allow"
            or (rule.handler == "execpromises" and held == self.sup.plan.policy.pledge)
        )
        if not ok:
            return Refer(held)
        mode = asked & 0o7777 & ~SETID_BITS
        reason = f"setuid/setgid stripped ({asked & 0o7777:o} -> {mode:o})"
        if layout is None:  # fchmod
            try:
                fd = agentproc.dup_fd(c.tid, int32(c.args[0]))
            except OSError as e:
                return Answer(error=e.errno or errno.EBADF)
            where = None
            with contextlib.suppress(OSError):
                where = os.readlink(f"/proc/self/fd/{fd}")
            if not self._record(c, "setid", where, "allow", reason, mode=f"{mode:o}"):
                os.close(fd)
                return None
            reply = yield Call("fchmod", {"mode": mode}, b"", (fd,))
            return Answer(error=reply.err)
        flags = int32(c.args[flags_at]) if flags_at is not None else fixed
        try:
            path = self._path_arg(c, layout)
            umask = agentproc.umask_of(c.tid)
        except OSError as e:
            return Answer(error=e.errno or errno.EFAULT)
        if not self._pending(c):
            return None
        try:
            fd, rest, _ = self._dirfd(c, layout, path)
        except OSError as e:
            return Answer(error=e.errno or errno.EBADF)
        kind = c.args[mode_at] & 0o170000
        fds = (fd,) if fd >= 0 else ()
        if not self._record(c, "setid", _fsdecode(path), "allow", reason, mode=f"{mode:o}"):
            for f in fds:
                os.close(f)
            return None
        effective = mode & ~umask
        if c.name in ("open", "openat", "creat"):
            reply = yield Call("open", {"flags": flags, "mode": effective}, rest, fds)
            new = reply.take_fd()
            if reply.err or new is None:
                return Answer(error=reply.err or errno.EIO)
            return Answer(fd=new, cloexec=bool(flags & O_CLOEXEC))
        dev = c.args[mode_at + 1]
        reply = yield Call("mknod", {"mode": kind | effective, "dev": dev}, rest, fds)
        return Answer(error=reply.err)

    # -- files a promise brings (SPEC section 5)

    def _brought(self, c: Ctx) -> Decision:
        layout, kind, value_at = BROUGHT_CALLS[c.name]
        held = self._held(c.tid)
        violation = Refer(held)
        at = int32(c.args[layout.at_flags]) if layout.at_flags is not None else 0
        if at & ~layout.allowed:
            return violation
        follow = layout.follow and not at & AT_SYMLINK_NOFOLLOW
        need = "r"
        flags = 0
        if kind == "open":
            flags = int32(c.args[value_at[0]])
            if flags & O_TMPFILE_BIT:
                return violation
            if flags & 0o3 != 0 or flags & O_TRUNC:
                need = "w"
            if flags & O_NOFOLLOW and not flags & O_PATH:
                follow = False
        elif kind == "access" and int32(c.args[value_at[0]]) & 0o2:
            need = "w"
        try:
            path = self._path_arg(c, layout)
        except OSError:
            return violation
        if not self._pending(c):
            return None
        brought = [b for b in self.sup.plan.brought if b[2] in held]
        res = yield from self._resolve(
            c, layout, path, follow=follow, empty=bool(at & AT_EMPTY_PATH),
            directory=bool(flags & O_DIRECTORY),
        )  # fmt: skip
        if isinstance(res, Answer):
            # A file the promise names that this host lacks: the kernel's answer. Any other
            # path was never the promise's to open.
            asked = os.path.normpath(_fsdecode(path)) if path.startswith(b"/") else None
            creating = kind == "open" and flags & O_CREAT  # creating one needs cpath
            if asked and not creating and any(_within(asked, b[0]) for b in brought if b[1]):
                return res
            return violation
        entry = next((b for b in brought if _brings(b, res.path, kind, need)), None)
        if entry is None:
            self._release(res)
            return violation
        if kind == "open" and flags & O_CREAT and flags & O_EXCL:
            self._release(res)
            return Answer(error=errno.EEXIST)
        if kind == "open" and not follow and (res.mode & 0o170000) == 0o120000:
            self._release(res)
            return Answer(error=errno.ELOOP)
        reason = f"a file the promise '{entry[2]}' brings"
        if not self._record(c, entry[2], res.path, "allow", reason):
            return None
        if kind == "open":
            reply = yield Call(
                "reopen", {"h": res.handle, "flags": flags & ~O_NOFOLLOW, "last": True}
            )
            new = reply.take_fd()
            if reply.err or new is None:
                return Answer(error=reply.err or errno.EIO)
            return Answer(fd=new, cloexec=bool(flags & O_CLOEXEC))
        if kind in ("stat", "statx"):
            header: dict[str, Any] = {"h": res.handle, "kind": kind, "last": True}
            buf = c.args[value_at[0]]
            if kind == "statx":
                header.update(flags=at, mask=c.args[value_at[0]] & 0xFFFFFFFF)
                buf = c.args[value_at[1]]
            reply = yield Call("stat", header)
            if reply.err:
                return Answer(error=reply.err)
            try:
                agentproc.write_memory(c.tid, buf, reply.blob)
            except OSError as e:
                return Answer(error=e.errno or errno.EFAULT)
            return Answer()
        mode = int32(c.args[value_at[0]])
        reply = yield Call("access", {"h": res.handle, "mode": mode, "flags": at, "last": True})
        return Answer(error=reply.err)

    # -- unix sockets without Landlock's resolve_unix

    def _unix(self, c: Ctx) -> Decision:
        tid, a = c.tid, c.args
        try:
            sock = agentproc.dup_fd(tid, int32(a[0]))
        except OSError as e:
            return Answer(error=e.errno or errno.EBADF)
        msgs: list[Message] = []
        try:
            if c.name == "connect":
                alen = int32(a[2])
                if not 0 <= alen <= SOCKADDR_STORAGE:
                    raise _Refused(errno.EINVAL)
                addr = agentproc.read_exact(tid, a[1], alen) if alen else b""
                msgs.append(Message(addr))
            elif c.name == "sendto":
                alen = int32(a[5])
                if not 0 <= alen <= SOCKADDR_STORAGE:
                    raise _Refused(errno.EINVAL)
                addr = agentproc.read_exact(tid, a[4], alen)
                data = self._payload(tid, [(a[1], a[2] & _U64)], sock)
                msgs.append(Message(addr, data, flags=int32(a[3])))
            elif c.name == "sendmsg":
                msgs.append(self._msghdr(tid, a[1], int32(a[2]), sock))
            else:  # sendmmsg
                for i in range(min(a[2] & 0xFFFFFFFF, UIO_MAXIOV)):
                    msgs.append(self._msghdr(tid, a[1] + 64 * i, int32(a[3]), sock))
        except (OSError, _Refused) as e:
            os.close(sock)
            for m in msgs:
                m.close()
            return Answer(error=e.errno or errno.EFAULT)
        if not self._pending(c):
            os.close(sock)
            for m in msgs:
                m.close()
            return None
        try:
            outcome = yield from self._send_all(c, sock, msgs)
        finally:
            os.close(sock)
            for m in msgs:
                m.close()
        return outcome

    def _send_all(self, c: Ctx, sock: int, msgs: list[Message]) -> Decision:
        """Each message in turn, as sendmmsg does: the count sent, or the first error."""
        sent = 0
        last = Answer()
        for i, m in enumerate(msgs):
            if m.flags & S.MSG_FASTOPEN:
                # The filter refuses Fast Open before it gets here; never perform one (it
                # connects past Landlock's TCP port rules).
                return Answer(error=errno.EOPNOTSUPP)
            dest = yield from self._destination(c, m.addr)
            if not isinstance(dest, dict):
                if sent:
                    break
                return dest
            call = "connect" if c.name == "connect" else "send"
            header = {**dest, "flags": m.flags, "control": m.control}
            fds = (os.dup(sock), *(os.dup(fd) for fd in m.fds))
            reply = yield Call(call, header, m.data, fds)
            if "h" in dest:
                self._release(int(dest["h"]))
            if reply.err:
                if reply.err == errno.EPIPE and call == "send" and not m.flags & MSG_NOSIGNAL:
                    _tgkill(agentproc.tgid(c.tid), c.tid, signal.SIGPIPE)  # as the kernel
                if sent:
                    break
                return Answer(error=reply.err)
            if c.name == "sendmmsg":
                with contextlib.suppress(OSError):  # msg_len, as the kernel writes it
                    agentproc.write_memory(
                        c.tid, c.args[1] + 64 * i + 56, struct.pack("=I", reply.ret)
                    )
            sent += 1
            last = Answer(value=reply.ret)
        return Answer(value=sent) if c.name == "sendmmsg" else last

    def _payload(self, tid: int, iov: list[tuple[int, int]], sock: int) -> bytes:
        """The bytes of an iovec list, at most MAX_SEND (a stream gets a short write; a
        larger datagram is refused with EMSGSIZE, as no kernel buffer would take it)."""
        out = bytearray()
        for base, length in iov:
            if length == 0:
                continue
            take = min(length, MAX_SEND - len(out))
            if take < length and _sock_type(sock) != socket.SOCK_STREAM:
                raise _Refused(errno.EMSGSIZE)
            if take:
                out += agentproc.read_exact(tid, base, take)
            if len(out) >= MAX_SEND:
                break
        return bytes(out)

    def _msghdr(self, tid: int, ptr: int, flags: int, sock: int) -> Message:
        name, namelen, iov, iovlen, control, controllen, _ = struct.unpack(
            "=QI4xQQQQi4x", agentproc.read_exact(tid, ptr, 56)
        )
        addr = b""
        if name and namelen:
            addr = agentproc.read_exact(tid, name, min(namelen, SOCKADDR_STORAGE))
        if iovlen > UIO_MAXIOV:
            raise _Refused(errno.EMSGSIZE)
        vec = agentproc.read_exact(tid, iov, 16 * iovlen) if iovlen else b""
        pairs = [struct.unpack_from("=QQ", vec, 16 * i) for i in range(iovlen)]
        m = Message(addr, self._payload(tid, pairs, sock), flags=flags)
        if control and controllen:
            if controllen > MAX_CONTROL:
                raise _Refused(errno.ENOBUFS)
            try:
                _cmsgs(tid, agentproc.read_exact(tid, control, controllen), m)
            except BaseException:
                m.close()
                raise
        return m

    def _destination(
        self, c: Ctx, addr: bytes
    ) -> Generator[Call, Reply, dict[str, Any] | Answer | Refer]:
        """What the performer is to send to: the parent's copy of the address, or for a
        pathname unix socket the inode it resolved; or the refusal."""
        if len(addr) < 2:
            return {"addr": addr.hex()} if addr else {}
        family = struct.unpack_from("=H", addr)[0]
        held = self._held(c.tid)
        if family == socket.AF_UNIX:
            if "unix" not in held:
                return Refer(held, note="a unix socket address")
            if len(addr) > SUN_PATH_END:
                return Answer(error=errno.EINVAL)
            sun = addr[2:]
            if sun[:1] == b"\0":
                shown = "@" + sun[1:].split(b"\0")[0].decode("utf-8", "backslashreplace")
                if not self.sup.plan.own_netns or not _own_network(c.tid):
                    self._record(c, "unix", shown, "deny", ABSTRACT_REFUSED)
                    return Answer(error=errno.EPERM)
                return {"addr": addr.hex()}
            name = sun.split(b"\0")[0]
            if not name:
                return {"addr": addr.hex()}
            res = yield from self._resolve(c, PathArgs(0), name, follow=True, empty=False)
            if isinstance(res, Answer):
                return res
            if not self._allowed(res.path, "w"):
                self._release(res)
                out = self._refuse_unveil(c, res.path, "w")
                return out if out is not None else Answer(error=errno.EACCES)
            if not self._record(
                c, "unix", res.path, "allow", "a socket beneath an unveil with 'w'"
            ):
                self._release(res)
                return Answer(error=errno.EPERM)
            return {"h": res.handle}
        if family in (socket.AF_INET, socket.AF_INET6):
            if "inet" in held:
                return {"addr": addr.hex()}
            dns = self.sup.dns
            if "dns" in held and dns is not None:
                from sandbox.parent.dnsproxy import parse_sockaddr

                parsed = parse_sockaddr(addr)
                if parsed is not None and parsed[2] == 53 and parsed[1] in dns.servers:
                    return {"addr": addr.hex()}
                return Refer(held, note="not a nameserver on port 53")
            return Refer(held)
        return {"addr": addr.hex()}


def _restriction(plan: Plan) -> tuple[object, landlock.LandlockPlan | None]:
    """What the agent's performer is restricted to: the agent's Landlock filesystem rules
    (from its current unveils: under lock: agent, the ones it declared) and TCP ports, no
    scopes. The key changes when the restriction does (the performer is then restarted)."""
    unveils = tuple(effective_unveils(plan.policy))
    ll = plan.landlock
    if ll is None:
        return (unveils, None), None
    own = landlock.LandlockPlan(
        handled_fs=ll.handled_fs,
        paths=path_rules(unveils),
        handled_net=ll.handled_net,
        connect_ports=ll.connect_ports,
        bind_ports=ll.bind_ports,
        scopes=0,
        abi=ll.abi,
    )
    return (unveils, ll.handled_fs, ll.handled_net, ll.connect_ports, ll.bind_ports), own


class _Refused(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


def _own_network(tid: int) -> bool:
    """The agent is in another network namespace than ours (checked, not assumed)."""
    try:
        return os.stat(f"/proc/{tid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _brings(entry: tuple[str, str, str], path: str | None, kind: str, need: str) -> bool:
    """Whether a brought entry covers this use of `path`: a file or directory with its
    letters, or (no letters) the stat of that very path."""
    where, letters, _ = entry
    if path is None:
        return False
    if not letters:
        return path == where and kind in ("stat", "statx")
    return need in letters and _within(path, where)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _sock_type(fd: int) -> int:
    s = socket.socket(fileno=os.dup(fd))
    try:
        return int(s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))
    finally:
        s.close()


@plain
class Message:
    """One message to send, as the parent copied it: destination, data, control messages
    (SCM_RIGHTS numbers replaced by our duplicates of the agent's descriptors)."""

    addr: bytes
    data: bytes = b""
    control: list[dict[str, Any]] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    flags: int = 0

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _cmsgs(tid: int, raw: bytes, m: Message) -> None:
    """The control messages of a sendmsg into `m`: descriptors of SCM_RIGHTS duplicated
    from the agent; SCM_CREDENTIALS refused (the kernel accepts only the sender's own pid,
    and the performer is another process); others passed as they are."""
    off = 0
    while off + 16 <= len(raw):
        length, level, typ = struct.unpack_from("=QiI", raw, off)
        if length < 16 or off + length > len(raw):
            raise _Refused(errno.EINVAL)
        data = raw[off + 16 : off + length]
        if level == socket.SOL_SOCKET and typ == SCM_RIGHTS:
            numbers = struct.unpack(f"={len(data) // 4}i", data[: len(data) // 4 * 4])
            if len(numbers) + len(m.fds) > SCM_MAX_FD:
                raise _Refused(errno.EINVAL)
            for fdnum in numbers:
                try:
                    m.fds.append(agentproc.dup_fd(tid, fdnum))
                except OSError:
                    raise _Refused(errno.EBADF) from None
            m.control.append({"level": level, "type": typ, "rights": len(numbers)})
        elif level == socket.SOL_SOCKET and typ == SCM_CREDENTIALS:
            raise _Refused(errno.EPERM)
        else:
            m.control.append({"level": level, "type": typ, "data": data.hex()})
        off += (length + 7) & ~7


def _tgkill(tgid: int, tid: int, sig: int) -> None:
    from sandbox.libc import libc

    libc.syscall(ctypes.c_long(SYS_TGKILL), tgid, tid, sig)
