"""What one run of a command did, for `sandbox learn`: the observing supervisor.

LEARNING IS NOT A SANDBOX. The command runs under a seccomp filter that allows in the
kernel what the promise `stdio` allows (every learned policy has it) and sends every other
call to the parent, which records it and lets it run: it answers CONTINUE after reading
the call's arguments from the agent's memory. The enforcing parent never does that (the
agent could change the memory between the read and the kernel's use of it, and so run a
call other than the one checked); here nothing is being enforced, so a race can only make
the record wrong, never let anything through that was not going through anyway. There is
no Landlock ruleset either: every path is reachable. Run `learn` only on what you would
run without a sandbox.

Three answers differ from CONTINUE, so that the run goes as it would under the policy:
- a call that a promise answers with ENOSYS (openat2, clone3, glibc's nscd and netlink
  probes) gets ENOSYS, so libc takes the fallback the policy will see, and the fallback is
  recorded too;
- a call that is never allowed, or that no promise allows, fails with EPERM and is
  reported: no policy can allow it.

Recorded per call: the call and the arguments that any rule of the promise table looks at
(one entry per distinct outcome of those rules), whether the calling process runs under
execpromises (it, or an ancestor below the agent, has exec'd), and, for calls that name a
path, the path resolved as the agent named it (relative to its cwd or dirfd, symlinks
resolved), with the unveil letters Landlock would ask of it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from sandbox import procfs
from sandbox.enforce import seccomp
from sandbox.enforce import syscalls as S
from sandbox.enforce.plan import EXEC_SYSCALLS
from sandbox.enforce.promises import (
    NEVER_ARGS,
    OWN_ID_CALLS,
    PROMISES,
    UNSUPPORTED,
    never_allowed,
)
from sandbox.enforce.rules import SELF_PID, Rule, rule_matches
from sandbox.enforce.syscalls import decode_args, read_path
from sandbox.parent.notify import Supervisor, no_id_change
from sandbox.plain import field as plain_field
from sandbox.plain import plain

Outcome = Literal["continue", "enosys", "eperm", "unsupported"]
# Handlers of notify rows whose calls the enforcing parent performs itself after checking
# them (sandbox.parent.notify PERFORMED): under the policy they happen, so they happen here.
PERFORMED_HANDLERS = frozenset({"perform", "setid", "unix"})
MAX_CALLS = 100_000  # distinct calls kept; a flood of distinct calls is not a program
MAX_ACCESSES = 200_000


@dataclass(frozen=True)
class Call:
    """A distinct system call of the run, as the promise table sees it."""

    name: str
    args: tuple[int, ...]
    self_pid: int | None  # the caller's own pid when it signals itself (SELF_PID rules)
    execd: bool  # made by a process under execpromises
    outcome: Outcome
    dns: bool  # a connect/sendto to a nameserver on port 53 over UDP (the 'dns' rows)
    text: str  # the call as people read it, for comments
    who: str  # "comm[pid]"
    # Promises of which the policy needs one, beyond what the filter sees: connect() looks
    # the same to seccomp for TCP and a unix socket, but means 'inet' or 'unix'.
    needs_any: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Access:
    """A path the run reached and the unveil letters Landlock asked of it."""

    path: str  # absolute, symlinks resolved
    letters: str
    text: str  # the call that asked, for comments


@dataclass
class Observations:
    command: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    accesses: list[Access] = field(default_factory=list)
    created: set[str] = field(default_factory=set)  # paths the run created
    replaced: set[str] = field(default_factory=set)  # existing files it removed or renamed over
    connect: dict[int, str] = field(default_factory=dict)  # TCP port -> first call
    bind: dict[int, str] = field(default_factory=dict)
    refused: list[Call] = field(default_factory=list)  # never allowed / no promise allows
    unexpressible: list[str] = field(default_factory=list)  # paths no policy can name
    tasks: int = 1  # processes and threads started, the agent included
    execd_any: bool = False  # something was exec'd after the command itself
    notes: list[str] = field(default_factory=list)  # what could not be observed


# --- the promise table, indexed for observation ----------------------------------------------


@functools.cache
def _rules_of(name: str) -> tuple[tuple[str, Rule], ...]:
    """(promise, rule) for every row of the table on this call."""
    return tuple((p.name, r) for p in PROMISES.values() for r in p.rules if r.syscall == name)


def _signature(name: str, args: Sequence[int], self_pid: int | None) -> tuple[bool, ...]:
    """Which rows of the table hold for this call: calls with the same signature are the
    same call for every policy, so one of them is recorded."""
    rows = [rule_matches(r, name, args, self_pid) for _, r in _rules_of(name)]
    rows += [rule_matches(r, name, args) for r, _ in NEVER_ARGS if r.syscall == name]
    return tuple(rows)


def outcome_of(name: str, args: Sequence[int], self_pid: int | None, dns: bool) -> Outcome:
    """What the learning run answers: ENOSYS where a promise answers so (libc's fallback is
    what the policy will see), the errno of a kernel without the feature where the parent
    answers so in every mode (UNSUPPORTED: TCP Fast Open, MPTCP), CONTINUE where some
    promise allows the call or the parent performs it, else EPERM."""
    if never_allowed(name, args):
        return "eperm"
    matching = [r for _, r in _rules_of(name) if rule_matches(r, name, args, self_pid)]
    if any(r.action == "enosys" for r in matching):
        return "enosys"
    if any(r.action == "allow" for r in matching):
        return "continue"
    handlers = {r.handler for r in matching if r.action == "notify"}
    if handlers & PERFORMED_HANDLERS or (dns and "dns" in handlers):
        return "continue"
    if "unsupported" in handlers:
        return "unsupported"
    return "eperm"


# --- paths --------------------------------------------------------------------------------------

# How a call names paths: (dirfd index or None, path index, what it asks of the path).
#   open    letters from the open flags (argument `flags`), creation when O_CREAT creates
#   create  'c' on the parent directory; the path is new
#   remove  'c' on the parent directory
#   write   'w' on the path (truncate; attribute changes the parent performs)
#   exec    'rx' on the program and on its interpreter (Landlock checks both)
PathUse = Literal["open", "create", "remove", "write", "exec"]
_AT = None  # no dirfd: relative to the cwd


@dataclass(frozen=True)
class PathArg:
    dirfd: int | None
    path: int
    use: PathUse
    flags: int | None = None  # index of open flags
    fixed_flags: int = 0  # the flags of a call that takes none (creat)


def _p(
    dirfd: int | None, path: int, use: PathUse, flags: int | None = None, fixed: int = 0
) -> PathArg:
    return PathArg(dirfd, path, use, flags, fixed)


PATH_CALLS: Mapping[str, tuple[PathArg, ...]] = MappingProxyType(
    {
        "open": (_p(_AT, 0, "open", 1),),
        "openat": (_p(0, 1, "open", 2),),
        "creat": (_p(_AT, 0, "open", fixed=S.O_CREAT | S.O_WRONLY | S.O_TRUNC),),
        "truncate": (_p(_AT, 0, "write"),),
        "mkdir": (_p(_AT, 0, "create"),),
        "mkdirat": (_p(0, 1, "create"),),
        "mknod": (_p(_AT, 0, "create"),),
        "mknodat": (_p(0, 1, "create"),),
        "symlink": (_p(_AT, 1, "create"),),
        "symlinkat": (_p(1, 2, "create"),),
        "link": (_p(_AT, 1, "create"),),
        "linkat": (_p(2, 3, "create"),),
        "unlink": (_p(_AT, 0, "remove"),),
        "unlinkat": (_p(0, 1, "remove"),),
        "rmdir": (_p(_AT, 0, "remove"),),
        "rename": (_p(_AT, 0, "remove"), _p(_AT, 1, "create")),
        "renameat": (_p(0, 1, "remove"), _p(2, 3, "create")),
        "renameat2": (_p(0, 1, "remove"), _p(2, 3, "create")),
        "execve": (_p(_AT, 0, "exec"),),
        "execveat": (_p(0, 1, "exec"),),
        # Attribute changes by path: Landlock does not check them; where the parent performs
        # them (issue 9) it asks for 'w' on the path, as writing its metadata.
        "chmod": (_p(_AT, 0, "write"),),
        "fchmodat": (_p(0, 1, "write"),),
        "fchmodat2": (_p(0, 1, "write"),),
        "chown": (_p(_AT, 0, "write"),),
        "lchown": (_p(_AT, 0, "write"),),
        "fchownat": (_p(0, 1, "write"),),
        "utime": (_p(_AT, 0, "write"),),
        "utimes": (_p(_AT, 0, "write"),),
        "futimesat": (_p(0, 1, "write"),),
        "utimensat": (_p(0, 1, "write"),),
        "setxattr": (_p(_AT, 0, "write"),),
        "lsetxattr": (_p(_AT, 0, "write"),),
        "removexattr": (_p(_AT, 0, "write"),),
        "lremovexattr": (_p(_AT, 0, "write"),),
    }
)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def resolve(pid: int, dirfd: int | None, path: str) -> str | None:
    """`path` as process `pid` names it, made absolute (relative to its cwd or to `dirfd`);
    None where it names no file path (a pipe, a socket, a deleted directory)."""
    if not path.startswith("/"):
        fd = S.AT_FDCWD if dirfd is None else _s32(dirfd)
        base = _readlink(f"/proc/{pid}/cwd" if fd == S.AT_FDCWD else f"/proc/{pid}/fd/{fd}")
        if base is None or not base.startswith("/") or base.endswith(" (deleted)"):
            return None
        path = os.path.join(base, path) if path else base
    return os.path.normpath(path)


def open_letters(flags: int) -> tuple[str, bool]:
    """(letters, creates) of an open with `flags`: r and/or w, and whether it may create."""
    if flags & S.O_PATH:
        return "", False  # O_PATH opens are checked by nothing: no file is read or written
    acc = flags & S.O_ACCMODE
    letters = ("r" if acc in (S.O_RDONLY, S.O_RDWR) else "") + (
        "w" if acc in (S.O_WRONLY, S.O_RDWR) or flags & S.O_TRUNC else ""
    )
    return letters, bool(flags & (S.O_CREAT | S.O_TMPFILE_BIT))


def interpreters(path: str, depth: int = 0) -> list[str]:
    """What the kernel also opens to execute `path`: a script's interpreter (and its own),
    an ELF program's dynamic loader (PT_INTERP). Landlock checks execute on each."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return []
    if head.startswith(b"#!") and depth < 4:
        words = head[2:].split(b"\n", 1)[0].split()
        if not words:
            return []
        interp = os.fsdecode(words[0])
        return [interp, *interpreters(interp, depth + 1)]
    if head[:4] != b"\x7fELF" or len(head) < 64 or head[4] != 2:  # 64-bit ELF only
        return []
    little = head[5] == 1
    e = "<" if little else ">"
    (phoff,) = struct.unpack_from(e + "Q", head, 32)
    phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
    for i in range(min(phnum, 64)):
        off = phoff + i * phentsize
        if off + 56 > len(head):
            break
        (p_type,) = struct.unpack_from(e + "I", head, off)
        if p_type == 3:  # PT_INTERP
            (p_offset,) = struct.unpack_from(e + "Q", head, off + 8)
            (p_filesz,) = struct.unpack_from(e + "Q", head, off + 32)
            if p_offset + p_filesz <= len(head) and 0 < p_filesz <= 4096:
                return [os.fsdecode(head[p_offset : p_offset + p_filesz].rstrip(b"\0"))]
    return []


def _sockaddr(pid: int, addr: int, length: int) -> bytes | None:
    if not 0 < length <= 128 or addr <= 0:
        return None
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(addr)
            return mem.read(length)
    except (OSError, OverflowError, ValueError):
        return None


def _socket_of(pid: int, fd: int) -> tuple[int, int] | None:
    """(family, type) of the agent's descriptor `fd`, through a duplicate (pidfd_getfd)."""
    from sandbox.parent.dnsproxy import DnsEmulator

    dup = DnsEmulator._dup(procfs.status_int(f"/proc/{pid}/status", "Tgid") or pid, fd)
    if dup < 0:
        return None
    try:
        with socket.socket(fileno=dup) as s:
            return int(s.family), int(s.type)
    except OSError:
        os.close(dup)
        return None


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()[:32] or "?"
    except OSError:
        return "?"


# --- the observing supervisor ---------------------------------------------------------------


@plain  # as Supervisor, its base: a dataclass would not see the base's fields
class Learner(Supervisor):
    """Records what the run does and lets it (see the module's docstring)."""

    obs: Observations = plain_field(default_factory=Observations)
    _seen: set[tuple[object, ...]] = plain_field(default_factory=set)
    _nameservers: frozenset[str] | None = None

    def decide(self, n: seccomp.Notification) -> None:
        name = seccomp.syscall_name(n.nr)
        args = tuple(n.args)
        answer: Outcome = "continue"
        if not self.exec_done and n.pid == self.agent_pid:
            # Between the lock and the exec only the launcher's own code runs in the child;
            # its exec of the command needs no promise, but the program needs 'rx'.
            if name in EXEC_SYSCALLS:
                self.exec_done = True
                self._lock_record(n.pid)
                with contextlib.suppress(OSError, ValueError):
                    text = decode_args(name, args, pid=n.pid)
                    self._paths(n.pid, name, args, f"{text} (the command)")
        else:
            try:
                answer = self._observe(n, name, args)
            except Exception as e:  # a record lost, never the run: the call is answered
                self.obs.notes.append(f"{name}: not recorded ({e!r})")
        if answer == "continue":
            # CONTINUE after reading the agent's memory: only because learning enforces
            # nothing (module docstring). The enforcing parent never does this.
            seccomp.respond(self.listener, n.id, continue_=True)
        else:
            codes = {"enosys": errno.ENOSYS, "unsupported": UNSUPPORTED.get(name, (0,))[0]}
            seccomp.respond(self.listener, n.id, error=codes.get(answer) or errno.EPERM)

    def _observe(self, n: seccomp.Notification, name: str, args: tuple[int, ...]) -> Outcome:
        obs = self.obs
        if name in OWN_ID_CALLS and no_id_change(n.pid, name, args):
            return "continue"  # the ids it has: the enforcing parent answers it, no promise
        execd = self._under_execpromises(n.pid)
        self_pid = None
        if name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            own = procfs.status_int(f"/proc/{n.pid}/status", "NStgid", last=True)
            if own is not None and _s32(args[0]) == own:
                self_pid = own
        dns = name in ("connect", "sendto") and self._is_dns(n.pid, name, args)
        outcome = outcome_of(name, args, self_pid, dns)
        if name in EXEC_SYSCALLS and outcome == "continue":
            obs.execd_any = True
            tgid = procfs.status_int(f"/proc/{n.pid}/status", "Tgid") or n.pid
            self.execd.add(tgid)  # before the exec runs, as the enforcing parent does
        if outcome == "continue" and name in ("clone", "fork", "vfork"):
            obs.tasks += 1
        needs_any = (
            self._family_needs(n.pid, name, args, dns) if name in FAMILY_CALLS else frozenset()
        )
        key = (
            name,
            _signature(name, args, self_pid),
            self_pid is not None,
            execd,
            outcome,
            dns,
            needs_any,
        )
        first = key not in self._seen
        text = ""
        if first or name in PATH_CALLS or name in ("connect", "bind"):
            text = decode_args(name, args, pid=n.pid)
        who = f"{_comm(n.pid)}[{n.pid}]"
        if first and len(self._seen) < MAX_CALLS:
            self._seen.add(key)
            call = Call(name, args, self_pid, execd, outcome, dns, text, who, needs_any)
            obs.calls.append(call)
            if outcome == "eperm":
                obs.refused.append(call)
        if outcome == "continue":
            if name in PATH_CALLS:
                self._paths(n.pid, name, args, f"{text} by {who}")
            if name in ("connect", "bind"):
                self._address(n.pid, name, args, f"{text} by {who}")
        return outcome

    # -- paths

    def _paths(self, pid: int, name: str, args: tuple[int, ...], text: str) -> None:
        for spec in PATH_CALLS[name]:
            if name == "utimensat" and args[1] == 0:
                continue  # futimens(fd): a descriptor, no path
            raw = read_path(pid, args[spec.path])
            if raw is None:
                continue
            dirfd = None if spec.dirfd is None else args[spec.dirfd]
            if raw == "" and dirfd is not None:  # AT_EMPTY_PATH: the descriptor itself
                full = resolve(pid, dirfd, "")
            else:
                full = resolve(pid, dirfd, raw)
            if full is not None:
                flags = spec.fixed_flags if spec.flags is None else args[spec.flags]
                self._access(full, spec.use, flags, text)

    def _access(self, full: str, use: PathUse, flags: int | None, text: str) -> None:
        obs = self.obs
        if len(obs.accesses) >= MAX_ACCESSES:
            return
        parent = os.path.realpath(os.path.dirname(full)) if full != "/" else "/"
        real = os.path.realpath(full)
        here = os.path.join(parent, os.path.basename(full))  # the name itself, not its target
        exists = os.path.lexists(full)
        if use == "open":
            letters, creates = open_letters(flags or 0)
            if creates and flags is not None and flags & S.O_TMPFILE_BIT:
                self._add(real, "c" + letters, text)  # an unnamed file in this directory
            elif creates and not exists:
                obs.created.add(here)
                self._add(parent, "c", text)
                self._add(here, letters, text)
            elif exists:  # absent and not created: ENOENT whatever the policy
                self._add(real, letters, text)
        elif use == "create":
            if exists and not os.path.isdir(here):
                obs.replaced.add(here)  # rename over an existing file: a new inode
            elif not exists:
                obs.created.add(here)
            self._add(parent, "c", text)
        elif use == "remove":
            if exists:
                obs.replaced.add(here)
            self._add(parent, "c", text)
        elif use == "write":
            if exists:
                self._add(real, "w", text)
        elif use == "exec":
            if not (os.path.isfile(real) and os.access(real, os.X_OK)):
                return  # a PATH search that missed: execve fails with ENOENT/EACCES
            self._add(real, "rx", text)
            for interp in interpreters(real):
                if os.path.exists(interp):
                    self._add(os.path.realpath(interp), "rx", f"{text} (its interpreter)")

    def _add(self, path: str, letters: str, text: str) -> None:
        if letters:
            self.obs.accesses.append(Access(path, letters, text))

    # -- addresses

    def _family_needs(
        self, pid: int, name: str, args: tuple[int, ...], dns: bool
    ) -> frozenset[str]:
        """The promises one of which this socket call means, by the socket's family."""
        family: int | None = None
        addr = {"connect": (1, 2), "bind": (1, 2), "sendto": (4, 5)}.get(name)
        if addr is not None and args[addr[0]]:
            raw = _sockaddr(pid, args[addr[0]], args[addr[1]])
            if raw is not None and len(raw) >= 2:
                family = struct.unpack_from("=H", raw)[0]
        if family is None:
            kind = _socket_of(pid, args[0] & 0xFFFFFFFF)
            family = None if kind is None else kind[0]
        if family == socket.AF_UNIX:
            return frozenset({"unix"})
        if family in (socket.AF_INET, socket.AF_INET6):
            # An address in the call: TCP or UDP to it (dns only for a nameserver's port 53);
            # a call on a socket already made: either promise that makes such sockets.
            plain = dns or name not in ADDRESS_CALLS
            return frozenset({"inet", "dns"} if plain else {"inet"})
        return frozenset()

    def _is_dns(self, pid: int, name: str, args: tuple[int, ...]) -> bool:
        addr, length = (args[1], args[2]) if name == "connect" else (args[4], args[5])
        raw = _sockaddr(pid, addr, length)
        if raw is None:
            return False
        from sandbox.parent.dnsproxy import nameservers, parse_sockaddr

        parsed = parse_sockaddr(raw)
        if parsed is None or parsed[2] != 53:
            return False
        if self._nameservers is None:
            self._nameservers = nameservers()
        kind = _socket_of(pid, args[0] & 0xFFFFFFFF)
        return parsed[1] in self._nameservers and kind is not None and kind[1] == socket.SOCK_DGRAM

    def _address(self, pid: int, name: str, args: tuple[int, ...], text: str) -> None:
        raw = _sockaddr(pid, args[1], args[2])
        if raw is None or len(raw) < 2:
            return
        family = struct.unpack_from("=H", raw)[0]
        if family == socket.AF_UNIX:
            path = raw[2:].split(b"\0", 1)[0]
            if raw[2:3] == b"\0" or not path:
                return  # abstract or unnamed: no path (Landlock scopes decide)
            full = resolve(pid, None, os.fsdecode(path))
            if full is not None:
                self._access(full, "create" if name == "bind" else "write", None, text)
            return
        if family not in (socket.AF_INET, socket.AF_INET6) or len(raw) < 4:
            return
        kind = _socket_of(pid, args[0] & 0xFFFFFFFF)
        if kind is None or kind[1] != socket.SOCK_STREAM:
            return  # Landlock rules are for TCP only; UDP is not limited by port
        port = struct.unpack_from("!H", raw, 2)[0]
        table = self.obs.connect if name == "connect" else self.obs.bind
        table.setdefault(port, text)


# Socket calls whose meaning depends on the socket's family (see Call.needs_any).
FAMILY_CALLS = frozenset({"connect", "bind", "listen", "accept", "accept4", "sendto", "setsockopt"})
ADDRESS_CALLS = frozenset({"connect", "bind", "sendto"})


def stdio_fast_rules() -> list[Rule]:
    """The rows the learning filter allows in the kernel, unobserved: those of `stdio`
    (always learned) and of the calls allowed whatever is promised. Rows naming the caller's
    pid are left to the parent, which knows the caller."""
    from sandbox.enforce.promises import ALWAYS, rules_for

    rows = [*ALWAYS, *rules_for({"stdio"})]
    return [
        r
        for r in dict.fromkeys(rows)
        if r.action == "allow"
        and r.syscall not in EXEC_SYSCALLS
        and not any(a.value == SELF_PID for a in r.args)
    ]
