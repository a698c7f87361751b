"""Paths Landlock refused, named with their fix: `denied` records and hint lines.

Landlock fails a refused call with EACCES in the kernel and tells nobody; the program
prints its own "Permission denied", if anything. Two sources say which path it was:

- **Landlock's audit records** (ABI 7; root, with kernel audit on). The child restricts
  itself with LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON (by default a domain logs nothing
  after its creator's exec), and the launcher listens on the audit multicast group. Each
  refusal is an event: AUDIT_LANDLOCK_ACCESS (`domain=… blockers=fs.read_file
  path="/etc/gitconfig"`), AUDIT_LANDLOCK_DOMAIN (`status=allocated … pid=…`, after the
  domain's first refusal), the SYSCALL record (pid, comm, call number, arguments) and an
  end-of-event record, all with one serial. A domain is this agent's if its creator is
  the agent or a process in the agent's pid namespace; the records of other domains
  (other agents, other launchers) are ignored. These are facts the kernel states.
- **The parent's own reading** (`--trace-unveil`, for whoever cannot have the records):
  the path-taking calls the pledge allows are routed to the parent, which reads the path,
  resolves it as the agent would (its cwd, the dirfd), and compares the letters the call
  needs with what the unveils grant. It decides nothing: it answers every such call
  "continue" whatever it read, and Landlock, in the kernel, decides on what the call
  really names. A racing thread can at worst make the hint wrong, never change what is
  allowed. The record says `source: parent`.

Either way the record is `denied` (pid, comm, syscall, path or port, access, fix, source)
and stderr gets `sandbox: NAME[PID]: unveil refused openat /etc/gitconfig (read):
add '/etc/gitconfig: r'`. Each distinct refusal (what, access) is recorded once; after
MAX_DISTINCT of them the rest are counted, not recorded.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

from sandbox import kaudit, procfs
from sandbox.enforce.landlock import FS_RIGHT_NAMES, PERM_RIGHTS
from sandbox.enforce.promises import IMPLIED_UNVEILS
from sandbox.parent.audit import AuditError, AuditLog
from sandbox.parent.audit import _safe as terminal_safe
from sandbox.plain import field, plain
from sandbox.policy.model import Unveil, effective_perms, perm_string

AUDIT_SYSCALL = 1300
AUDIT_EOE = 1320
AUDIT_LANDLOCK_ACCESS = 1423
AUDIT_LANDLOCK_DOMAIN = 1424
WANTED = frozenset({AUDIT_SYSCALL, AUDIT_EOE, AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN})
MAX_DISTINCT = 256  # distinct refusals recorded per agent; the rest are only counted
MAX_PENDING = 512  # audit events being assembled at once
MAX_RECORD_TEXT = 8192
DRAIN_TIMEOUT = 0.5  # at the agent's exit: how long to wait for records still queued

# The letter of unveil that grants each Landlock right (one table: landlock.PERM_RIGHTS).
LETTER_OF: Mapping[str, str] = {
    name: letter
    for letter, mask in PERM_RIGHTS.items()
    for bit, name in FS_RIGHT_NAMES.items()
    if mask & bit
}
# What each right lets a call do, for the message.
WORDS: Mapping[str, str] = {
    "read_file": "read",
    "read_dir": "list",
    "write_file": "write",
    "truncate": "truncate",
    "execute": "execute",
    "ioctl_dev": "device ioctl",
    "make_reg": "create a file",
    "make_dir": "create a directory",
    "make_sym": "create a symlink",
    "make_sock": "create a socket file",
    "make_fifo": "create a fifo",
    "make_char": "create a character device",
    "make_block": "create a block device",
    "remove_file": "remove a file",
    "remove_dir": "remove a directory",
    "refer": "link or rename from another directory",
    "resolve_unix": "connect to a unix socket",
}
# Fields that the kernel logs as "untrusted strings": quoted, or hex when they contain a
# space, a quote or a control character (the agent chose them: parse, never trust).
UNTRUSTED = frozenset({"path", "name", "comm", "exe", "ocomm", "proctitle"})
_FIELD = re.compile(r'([a-z_][a-z0-9_]*)=("[^"]*"|\S*)')
_SERIAL = re.compile(r"audit\(\d+\.\d+:(\d+)\):")
_HEX = re.compile(r"(?:[0-9A-F]{2})+")

# x86-64 numbers of the path-taking calls, for the SYSCALL record (its `syscall=` field).
SYSCALL_NAMES: Mapping[int, str] = {
    0: "read",
    2: "open",
    4: "stat",
    16: "ioctl",
    42: "connect",
    49: "bind",
    59: "execve",
    62: "kill",
    76: "truncate",
    82: "rename",
    83: "mkdir",
    84: "rmdir",
    85: "creat",
    86: "link",
    87: "unlink",
    88: "symlink",
    133: "mknod",
    200: "tkill",
    234: "tgkill",
    257: "openat",
    258: "mkdirat",
    259: "mknodat",
    263: "unlinkat",
    264: "renameat",
    265: "linkat",
    266: "symlinkat",
    316: "renameat2",
    322: "execveat",
    437: "openat2",
}
O_ACCMODE, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0o3, 0o1, 0o2, 0o100, 0o1000
AT_FDCWD = -100


def parse_record(text: str) -> tuple[str | None, dict[str, str]]:
    """(serial, fields) of one audit record's text. Quoted values lose their quotes; hex
    values of untrusted-string fields are decoded. Never raises."""
    text = text[:MAX_RECORD_TEXT]
    m = _SERIAL.match(text)
    serial = m.group(1) if m else None
    fields: dict[str, str] = {}
    for key, raw in _FIELD.findall(text[m.end() if m else 0 :]):
        if key in fields:
            continue
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            value = raw[1:-1]
        elif key in UNTRUSTED and _HEX.fullmatch(raw):
            value = bytes.fromhex(raw).decode("utf-8", "backslashreplace")
        else:
            value = raw
        fields[key] = value
    return serial, fields


def _int(value: str | None, base: int = 10) -> int | None:
    if value is None:
        return None
    try:
        return int(value, base)
    except ValueError:
        return None


@plain(frozen=True)
class Refusal:
    """One refusal by Landlock, as the kernel reported it (or as the parent read it)."""

    blockers: tuple[str, ...]  # "fs.read_file", "net.connect_tcp", "scope.signal", ...
    pid: int | None = None
    comm: str | None = None
    syscall: str | None = None
    path: str | None = None  # fs: the file, or the directory for creation and removal
    port: int | None = None  # net
    target: str | None = None  # scope: the other process
    writes: bool = False  # an open for writing (creation then needs 'w' as well as 'c')
    domain: str | None = None
    source: str = "landlock"

    @property
    def rights(self) -> list[str]:
        return [b.partition(".")[2] for b in self.blockers if b.startswith("fs.")]

    def key(self) -> tuple[object, ...]:
        return (self.path, self.port, self.target, self.blockers)


_PROC_PID = re.compile(r"/proc/\d+(?:/|$)")


def _bringing(path: str, letters: set[str], held: Iterable[str]) -> tuple[str, str, str] | None:
    """(promise, its path, its letters) of a promise not held that brings `path` with
    `letters` (IMPLIED_UNVEILS): the fix that fits better than an unveil of one file."""
    held = set(held)
    for promise, files in IMPLIED_UNVEILS.items():
        if promise in held or promise == "ps":  # ps: all of /proc, too much to suggest
            continue
        for brought, perms in files:
            # tmppath is for temporary files made in /tmp itself (mkstemp), not for what
            # else lives beneath it (a work tree in /tmp is not a temporary file).
            beneath = promise != "tmppath" and path.startswith(brought.rstrip("/") + "/")
            inside = path == brought or beneath
            if inside and letters <= set(perms):
                return promise, brought, perms
    return None


def fix_for(r: Refusal, unveils: Iterable[Unveil], pledge: Iterable[str] = ()) -> tuple[str, str]:
    """(what was refused, how to allow it) in words, for the message and the record.
    `pledge`: the agent's promises (a file that another promise brings names it)."""
    call = r.syscall or "a call"
    kinds = {b.partition(".")[0] for b in r.blockers}
    if "fs" in kinds:
        rights = r.rights
        words = ", ".join(WORDS.get(x, x) for x in rights)
        letters = {LETTER_OF[x] for x in rights if x in LETTER_OF}
        if "c" in letters and r.writes:
            letters.add("w")
        what = f"unveil refused {call} {r.path} ({words})"
        if not letters:
            return what, "no unveil grants it (device nodes are never created)"
        path = r.path or ""
        if _PROC_PID.match(path):
            # Every process has a /proc/PID of its own, made when it starts: a rule on one
            # of them would never match the next run's. Only /proc as a whole reaches them.
            return what, (
                "add '/proc: r' or the promise 'ps', which brings it (each process gets a "
                "/proc/PID of its own when it starts, so it cannot be unveiled by itself; "
                "either way every process in /proc can be read)"
            )
        have: set[str] = set()
        for u in unveils:
            if u.path == r.path:
                have |= u.perms
        fix = f"add '{r.path}: {perm_string(letters | have)}'"
        brings = _bringing(path, letters, pledge)
        if brings is not None:
            promise, brought, perms = brings
            also = "it" if brought == path else f"{brought}: {perms}"
            fix += f" or the promise '{promise}', which brings {also}"
        return what, fix
    if "net" in kinds:
        bind = any(b == "net.bind_tcp" for b in r.blockers)
        verb, key = ("bind", "bind") if bind else ("connect to", "connect")
        return (
            f"Landlock refused {call} ({verb} TCP port {r.port})",
            f"add {r.port} to network.{key} (with the promise 'inet')",
        )
    target = f" {r.target}" if r.target else ""
    what = ", ".join(r.blockers)
    if "scope.signal" in r.blockers:
        what = f"a signal to{target} outside the sandbox"
    elif "scope.abstract_unix_socket" in r.blockers:
        what = "an abstract unix socket outside the sandbox"
    return f"Landlock refused {call}: {what}", "no policy allows it"


@plain
class Reporter:
    """Writes one `denied` record and one stderr line per distinct refusal."""

    name: str  # the policy's
    audit: AuditLog
    unveils: tuple[Unveil, ...]
    agent_pid: int
    pledge: frozenset[str] = frozenset()  # the agent's promises (for the fixes they bring)
    seen: set[tuple[object, ...]] = field(default_factory=set)
    dropped: int = 0
    noticed: bool = False  # the first refusal has been reported
    # Said once, before the first refusal: why these are not Landlock's own records.
    first_note: str | None = None
    err: Callable[[str], None] = lambda line: print(line, file=sys.stderr)

    def report(self, r: Refusal) -> None:
        key = r.key()
        if key in self.seen:
            return
        if len(self.seen) >= MAX_DISTINCT:
            self.dropped += 1
            return
        self.seen.add(key)
        what, fix = fix_for(r, self.unveils, self.pledge)
        fields: dict[str, object] = {
            "pid": r.pid or self.agent_pid,
            "comm": r.comm,
            "syscall": r.syscall,
            "access": list(r.blockers),
            "fix": fix,
            "source": r.source,
        }
        if r.path is not None:
            fields["path"] = r.path
        if r.port is not None:
            fields["port"] = r.port
        if r.target is not None:
            fields["target"] = r.target
        if r.domain is not None:
            fields["domain"] = r.domain
        with contextlib.suppress(AuditError, ValueError):
            self.audit.record("denied", **fields)
        note = ""
        if r.source == "parent":
            note = " (as the parent read the call)"
        if self.first_note and not self.noticed:
            self.err(f"sandbox: {self.name}: {self.first_note}")
        # The path is the agent's choice: terminal escapes in it are shown, never sent.
        line = f"sandbox: {self.name}[{r.pid or self.agent_pid}]: {what}: {fix}{note}"
        self.err(terminal_safe(line))
        self.noticed = True


def _pidns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


class AuditReader:
    """Landlock's audit records for one agent, read from the audit multicast group."""

    def __init__(self, reporter: Reporter, sock: socket.socket | None = None) -> None:
        self.sock = sock
        self.reporter = reporter
        self.agent_pidns = _pidns(reporter.agent_pid)
        self.domains: set[str] = set()  # this agent's Landlock domains
        self.events: OrderedDict[str, list[tuple[int, dict[str, str]]]] = OrderedDict()
        self.lost = 0  # datagrams the kernel dropped (receive buffer full)

    @classmethod
    def open(cls, reporter: Reporter) -> AuditReader | None:
        """Listening before the agent runs, so that no record is missed; None if not allowed."""
        try:
            return cls(reporter, kaudit.listen())
        except OSError:
            return None

    def on_readable(self) -> None:
        if self.sock is None:
            return
        for _ in range(256):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: the kernel dropped records for this socket
                self.lost += 1
                continue
            for mtype, text in kaudit.records(data):
                self.add(mtype, text)

    def add(self, mtype: int, text: str) -> None:
        if mtype not in WANTED:
            return
        serial, fields = parse_record(text)
        if serial is None:
            return
        self.events.setdefault(serial, []).append((mtype, fields))
        if mtype == AUDIT_EOE:
            self._event(self.events.pop(serial))
        while len(self.events) > MAX_PENDING:
            self._event(self.events.popitem(last=False)[1])

    def _ours(self, creator: int | None) -> bool:
        if creator is None:
            return False
        if creator == self.reporter.agent_pid:
            return True
        ns = _pidns(creator)  # a process of the agent's that made a nested domain
        return ns is not None and ns == self.agent_pidns

    def _event(self, records: Sequence[tuple[int, dict[str, str]]]) -> None:
        for mtype, f in records:
            if (
                mtype == AUDIT_LANDLOCK_DOMAIN
                and f.get("status") == "allocated"
                and self._ours(_int(f.get("pid")))
            ):
                self.domains.add(f.get("domain", ""))
        syscall = next((f for t, f in records if t == AUDIT_SYSCALL), {})
        for mtype, f in records:
            if mtype == AUDIT_LANDLOCK_ACCESS and f.get("domain") in self.domains:
                self.reporter.report(refusal_of(f, syscall))

    def finish(self, deadline: float = DRAIN_TIMEOUT) -> None:
        """At the agent's exit: take what the kernel still has queued, then every event
        being assembled. Audit sends records asynchronously (kauditd), so the last refusals
        may still be queued; AUDIT_GET's backlog says when the queue is empty."""
        end = time.monotonic() + deadline
        with contextlib.suppress(OSError):
            while self.sock is not None and time.monotonic() < end:
                self.on_readable()
                if kaudit.status().backlog == 0:
                    time.sleep(0.002)  # the record just dequeued is on its way to us
                    self.on_readable()
                    break
                time.sleep(0.005)
        while self.events:
            self._event(self.events.popitem(last=False)[1])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def refusal_of(access: Mapping[str, str], syscall: Mapping[str, str]) -> Refusal:
    """A Refusal from an AUDIT_LANDLOCK_ACCESS record and its event's SYSCALL record."""
    blockers = tuple(b for b in access.get("blockers", "").split(",") if b)[:32]
    nr = _int(syscall.get("syscall"))
    name = SYSCALL_NAMES.get(nr, f"syscall {nr}") if nr is not None else None
    writes = False
    if name in ("open", "openat"):
        flags = _int(syscall.get("a1" if name == "open" else "a2"), 16) or 0
        writes = flags & O_ACCMODE in (O_WRONLY, O_RDWR)
    elif name == "creat":
        writes = True
    port = _int(access.get("dest") or access.get("src"))
    target = None
    if "opid" in access:
        target = f"pid {access['opid']}" + (f" ({access['ocomm']})" if "ocomm" in access else "")
    return Refusal(
        blockers=blockers,
        pid=_int(syscall.get("pid")),
        comm=syscall.get("comm"),
        syscall=name,
        path=access.get("path") or access.get("name"),
        port=port,
        target=target,
        writes=writes,
        domain=access.get("domain"),
    )


# --- the parent's own reading of a call (--trace-unveil) -------------------------------------

# call -> (index of its dirfd argument or None, index of its path argument, what it does)
# for each path it names. "open" checks the file (or its directory when it creates it),
# "make" and "remove" the directory the entry is made in or removed from.
TRACED: Mapping[str, tuple[tuple[int | None, int, str], ...]] = {
    "open": ((None, 0, "open"),),
    "openat": ((0, 1, "open"),),
    "creat": ((None, 0, "create"),),
    "truncate": ((None, 0, "write"),),
    "mkdir": ((None, 0, "make"),),
    "mkdirat": ((0, 1, "make"),),
    "mknod": ((None, 0, "make"),),
    "mknodat": ((0, 1, "make"),),
    "symlink": ((None, 1, "make"),),
    "symlinkat": ((1, 2, "make"),),
    "link": ((None, 1, "make"),),
    "linkat": ((2, 3, "make"),),
    "unlink": ((None, 0, "remove"),),
    "unlinkat": ((0, 1, "remove"),),
    "rmdir": ((None, 0, "remove"),),
    "rename": ((None, 0, "remove"), (None, 1, "make")),
    "renameat": ((0, 1, "remove"), (2, 3, "make")),
    "renameat2": ((0, 1, "remove"), (2, 3, "make")),
}
_FLAGS_ARG = {"open": 1, "openat": 2}
_MAKE = {"mkdir": "make_dir", "mkdirat": "make_dir", "mknod": "make_fifo", "mknodat": "make_fifo"}
_MAKE.update(symlink="make_sym", symlinkat="make_sym")


def _needs(call: str, what: str, flags: int, full: str) -> tuple[str, list[str], bool]:
    """(the path Landlock checks, the rights it needs there, an open for writing).

    No rights for a path that does not exist and that the call does not create: the
    lookup fails with ENOENT before Landlock is asked (as it would unsandboxed), so
    naming it would send the user to unveil a file that is not there."""
    writes = what in ("create", "write") or flags & O_ACCMODE in (O_WRONLY, O_RDWR)
    exists = os.path.lexists(full)
    creates = what in ("create", "make") or (what == "open" and bool(flags & O_CREAT))
    if not exists and (not creates or not os.path.isdir(os.path.dirname(full))):
        return full, [], writes
    if what in ("open", "create") and not exists and (what == "create" or flags & O_CREAT):
        return os.path.dirname(full), ["make_reg"], writes
    if what in ("open", "create", "write"):
        if os.path.isdir(full):
            return full, ["read_dir"], False
        rights = [] if flags & O_ACCMODE == O_WRONLY or what != "open" else ["read_file"]
        if writes or flags & O_TRUNC:
            rights.append("write_file")
        return full, rights, writes
    if what == "make":
        return os.path.dirname(full), [_MAKE.get(call, "make_reg")], False
    is_dir = call == "rmdir" or (os.path.isdir(full) and not os.path.islink(full))
    return os.path.dirname(full), ["remove_dir" if is_dir else "remove_file"], False


def _resolve(pid: int, dirfd: int | None, path: str) -> str | None:
    """`path` as the calling thread `pid` names it, absolute (symlinks kept). /proc/self is
    the caller's, not the parent's."""
    if path.startswith("/"):
        path = os.path.normpath(path)
        head, _, rest = path[len("/proc/") :].partition("/")
        if path.startswith("/proc/") and head in ("self", "thread-self"):
            tgid = procfs.status_int(f"/proc/{pid}/status", "Tgid") or pid
            mine = f"/proc/{tgid}" if head == "self" else f"/proc/{tgid}/task/{pid}"
            path = f"{mine}/{rest}".rstrip("/")
        return path
    try:
        if dirfd is None or dirfd == AT_FDCWD:
            base = os.readlink(f"/proc/{pid}/cwd")
        else:
            base = os.readlink(f"/proc/{pid}/fd/{dirfd}")
    except OSError:
        return None
    if not base.startswith("/"):
        return None  # a descriptor that is no directory (a pipe, a socket)
    return os.path.normpath(os.path.join(base, path))


def predict(
    pid: int,
    call: str,
    args: Sequence[int],
    unveils: Sequence[Unveil],
    read_path: Callable[[int, int], str | None],
) -> list[Refusal]:
    """The refusals Landlock will make for this call, as the parent reads it (for hints)."""
    out: list[Refusal] = []
    for dir_index, path_index, what in TRACED.get(call, ()):
        raw = read_path(pid, args[path_index])
        if raw is None:
            continue
        dirfd = None
        if dir_index is not None:
            dirfd = args[dir_index] & 0xFFFFFFFF
            dirfd = dirfd - (1 << 32) if dirfd >= 1 << 31 else dirfd
        full = _resolve(pid, dirfd, raw)
        if full is None:
            continue
        flags = args[_FLAGS_ARG[call]] if call in _FLAGS_ARG else 0
        target, rights, writes = _needs(call, what, flags, full)
        # Landlock decides on the file a path reaches: name that file in the hint (but
        # not through /proc's magic links, which would resolve as the parent's).
        if not target.startswith("/proc/"):
            target = os.path.realpath(target)
        have = effective_perms(target, unveils)
        missing = [x for x in rights if LETTER_OF.get(x) not in have]
        if missing:
            out.append(
                Refusal(
                    blockers=tuple(f"fs.{x}" for x in missing),
                    pid=pid,
                    syscall=call,
                    path=target,
                    writes=writes,
                    source="parent",
                )
            )
    return out


# connect and bind, for Landlock's TCP port rules: (what it refuses, the call's port list).
TRACED_NET: Mapping[str, str] = {"connect": "net.connect_tcp", "bind": "net.bind_tcp"}
_AF_INET, _AF_INET6, _SOCK_STREAM, _IPPROTO_TCP = 2, 10, 1, 6
_SOCKADDR_PORT = 4  # family (2 bytes) and port (2 bytes, big-endian) lead both sockaddr_in*


def _tcp_socket(pid: int, fd: int) -> bool:
    """Is the agent's descriptor `fd` a TCP socket (the only kind Landlock's port rules
    see)? Asked of a duplicate of it (pidfd_getfd), never of a number the agent may reuse."""
    from sandbox.parent import agentproc

    try:
        dup = agentproc.dup_fd(pid, fd)
    except OSError:
        return False
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return False
    try:
        return (
            s.family in (_AF_INET, _AF_INET6) and s.type == _SOCK_STREAM and s.proto == _IPPROTO_TCP
        )
    finally:
        s.close()


def predict_net(
    pid: int,
    call: str,
    args: Sequence[int],
    ports: Sequence[int] | None,
    read: Callable[[int, int, int], bytes | None],
) -> list[Refusal]:
    """The refusal Landlock will make of this connect or bind, as the parent reads it:
    a TCP socket, an inet address, a port outside `ports` (the policy's network.connect or
    network.bind; None when Landlock does not restrict TCP)."""
    blocker = TRACED_NET.get(call)
    if blocker is None or ports is None or len(args) < 3 or args[2] < _SOCKADDR_PORT:
        return []
    data = read(pid, args[1], _SOCKADDR_PORT)
    if data is None or len(data) < _SOCKADDR_PORT:
        return []
    family = int.from_bytes(data[:2], "little")
    port = int.from_bytes(data[2:4], "big")
    if family not in (_AF_INET, _AF_INET6) or port in ports:
        return []
    if not _tcp_socket(pid, args[0] & 0xFFFFFFFF):
        return []  # UDP and others: Landlock's port rules do not see them
    return [Refusal(blockers=(blocker,), pid=pid, syscall=call, port=port, source="parent")]
