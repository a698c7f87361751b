"""The performer: one process per agent that makes the calls the parent decided, with the
agent's own standing, so that the kernel's own permission checks apply to them.

The parent is privileged (often root with every capability); an agent is not. A call the
parent decides for the agent (chmod of a path, an open that strips setuid bits, a connect
to a unix socket) must therefore not be made by the parent itself: a root launcher would
let a capless root agent chown what the agent could not. The parent forks this process
once per agent, on the first call that needs it. It

- joins the agent's user, mount and network namespaces (those that differ from the
  launcher's), so paths resolve against the agent's root and mounts (its noexec binds,
  its resolv.conf) and abstract sockets are those of the agent's network;
- takes the agent's uid, gid and supplementary groups, empties every capability set, sets
  no_new_privs and becomes non-dumpable (the agent cannot ptrace or read it: Landlock's
  ptrace rule and the lost dumpable flag both stand in the way);
- restricts itself with the agent's Landlock filesystem rules and TCP ports (no scopes:
  it must reach the agent's own abstract sockets, which live in the agent's own network
  namespace when they are allowed at all), so an open or mkdir it makes is checked by
  Landlock exactly as the agent's own would be;
- keeps its working directory at its own /proc/self/fd, so that a relative name "N" is
  the magic link of its descriptor N: the way to act by descriptor where the kernel only
  takes a path (setxattr, a unix socket address).

It takes requests from the parent only (a socketpair), never from the agent, and acts on
descriptors: a path is resolved once with openat2(RESOLVE_NO_MAGICLINKS) to an O_PATH
descriptor, the parent checks where that descriptor lies, and the change is made on that
same descriptor (fchmodat2/fchownat/utimensat with AT_EMPTY_PATH), so the decision holds
for the inode actually changed, whatever the agent renames meanwhile.

Frames on the channel: a 4-byte header length, the JSON header, then raw bytes (paths,
xattr values, datagrams); descriptors ride as SCM_RIGHTS.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sandbox import procfs
from sandbox.enforce import hygiene, landlock
from sandbox.errors import SetupError
from sandbox.libc import libc as _libc

# --- the channel -----------------------------------------------------------------------------

MAX_FRAME = 256 * 1024
MAX_FDS = 256  # SCM_RIGHTS of one sendmsg the parent performs (the kernel's SCM_MAX_FD: 253)
_INT = array.array("i").itemsize
_HEAD = struct.Struct("=I")


def send(
    sock: socket.socket, header: dict[str, Any], blob: bytes = b"", fds: Sequence[int] = ()
) -> None:
    head = json.dumps(header, separators=(",", ":")).encode()
    data = _HEAD.pack(len(head)) + head + blob
    if len(data) > MAX_FRAME:
        raise OSError(errno.EMSGSIZE, "performer frame too large")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any], bytes, list[int]]:
    """One frame; EOFError when the other end is gone; ValueError for a bad frame."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_FRAME, MAX_FDS)
    if not data and not fds:
        raise EOFError("performer channel closed")
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) < _HEAD.size:
            raise ValueError("truncated performer frame")
        (n,) = _HEAD.unpack_from(data)
        header = json.loads(data[_HEAD.size : _HEAD.size + n])
        if not isinstance(header, dict):
            raise ValueError("performer header is not an object")
    except (ValueError, UnicodeDecodeError):
        for fd in fds:
            os.close(fd)
        raise
    return header, data[_HEAD.size + n :], fds


# --- system calls Python does not wrap ---------------------------------------------------------

SYS_OPENAT2 = 437
SYS_FCHMODAT2 = 452
SYS_FCHOWNAT = 260
SYS_UTIMENSAT = 280
SYS_NEWFSTATAT = 262
SYS_STATX = 332
SYS_FACCESSAT2 = 439
SYS_SETNS = 308
SYS_CAPSET = 126
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
PR_SET_DUMPABLE = 4
NAMESPACES = (("user", 0x10000000), ("mnt", 0x00020000), ("net", 0x40000000))
STAT_SIZE = 144  # struct stat on x86-64
STATX_SIZE = 256
# openat2 refuses flags it does not know (openat ignores them): pass only real ones.
VALID_OPEN_FLAGS = 0o37777777 & ~0o10000000  # every O_* bit up to __O_TMPFILE; O_PATH kept below
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _sys(nr: int, *args: Any) -> int:
    res = int(_syscall(ctypes.c_long(nr), *args))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def openat2(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _sys(SYS_OPENAT2, dirfd, ctypes.c_char_p(path), ctypes.byref(how), ctypes.sizeof(how))


# --- the process -------------------------------------------------------------------------------


class Performer:
    """The performer's side: its state and its operations (each returns a reply)."""

    def __init__(self, sock: socket.socket, selffd: int) -> None:
        self.sock = sock
        self.selffd = selffd  # our own /proc/self/fd (also our cwd)
        self.held: dict[int, int] = {}  # handle -> O_PATH descriptor resolved for the parent
        self.next_handle = 1
        self.send_lock = threading.Lock()

    # -- serving

    def serve(self) -> NoReturn:
        while True:
            try:
                header, blob, fds = recv(self.sock)
            except EOFError:
                os._exit(0)
            except (ValueError, OSError):
                continue
            op = header.get("op")
            fn = OPS.get(op) if isinstance(op, str) else None
            if fn is None:
                for fd in fds:
                    os.close(fd)
                self.reply(header, {"err": errno.ENOSYS})
                continue
            if op in THREADED:
                # May block (a TCP connect, a full socket buffer, a FIFO): the other calls
                # of the agent go on meanwhile.
                threading.Thread(target=self.run, args=(fn, header, blob, fds), daemon=True).start()
            else:
                self.run(fn, header, blob, fds)

    def run(self, fn: Op, header: dict[str, Any], blob: bytes, fds: list[int]) -> None:
        out_fds: list[int] = []
        try:
            result, out_blob, out_fds = fn(self, header, blob, fds)
        except OSError as e:
            result, out_blob = {"err": e.errno or errno.EIO}, b""
        except Exception as e:  # a defect must not end the performer: answer EIO
            result, out_blob = {"err": errno.EIO, "why": repr(e)[:200]}, b""
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if header.get("last"):  # the parent's last use of a resolved descriptor
                held = self.held.pop(int(header.get("h", 0)), None)
                if held is not None:
                    os.close(held)
        if header.get("noreply"):
            return
        try:
            self.reply(header, result, out_blob, out_fds)
        finally:
            for fd in out_fds:
                os.close(fd)

    def reply(
        self,
        header: dict[str, Any],
        result: dict[str, Any],
        blob: bytes = b"",
        fds: list[int] = (),  # type: ignore[assignment]
    ) -> None:
        result["id"] = header.get("id")
        with self.send_lock, contextlib.suppress(OSError):
            send(self.sock, result, blob, list(fds))

    # -- handles

    def keep(self, fd: int) -> int:
        if len(self.held) >= 256:  # the parent forgot some: drop the oldest
            old = next(iter(self.held))
            os.close(self.held.pop(old))
        h = self.next_handle
        self.next_handle += 1
        self.held[h] = fd
        return h

    def fd_of(self, header: dict[str, Any]) -> int:
        fd = self.held.get(int(header.get("h", 0)))
        if fd is None:
            raise OSError(errno.EBADF, "unknown handle")
        return fd

    def canonical(self, fd: int) -> bytes | None:
        """The path of `fd` in the agent's view, if it is a current name of that inode:
        readlink of the magic link, then the name resolved again without any symlink must
        reach the same inode (not so for deleted files and names outside the root)."""
        try:
            path = os.readlink(str(fd), dir_fd=self.selffd).encode("utf-8", "surrogateescape")
        except OSError:
            return None
        if not path.startswith(b"/"):
            return None
        try:
            again = openat2(
                -100,
                path,
                os.O_PATH | os.O_NOFOLLOW,
                0,
                RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
            )
        except OSError:
            return None
        try:
            a, b = os.fstat(fd), os.fstat(again)
        finally:
            os.close(again)
        return path if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else None


Op = Callable[
    [Performer, dict[str, Any], bytes, list[int]], tuple[dict[str, Any], bytes, list[int]]
]


def _ok(ret: int = 0) -> tuple[dict[str, Any], bytes, list[int]]:
    return {"ret": ret}, b"", []


def _start(fds: list[int], path: bytes) -> int:
    """Where a path starts: the descriptor the parent passed, or for an absolute path our
    root (the agent's, since we joined its mount namespace)."""
    if fds:
        return fds[0]
    if path.startswith(b"/"):
        return -100  # AT_FDCWD: ignored for an absolute path
    raise OSError(errno.EBADF, "no directory descriptor")


def op_resolve(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    """Resolve a path as the agent would (fds[0]: its cwd or dirfd) to an O_PATH descriptor
    we keep; reply with where it lies and what it is."""
    dirfd = _start(fds, blob)
    if blob == b"":
        if not h.get("empty"):
            raise OSError(errno.ENOENT, "empty path")
        fd = os.dup(dirfd)  # AT_EMPTY_PATH: the descriptor itself
    else:
        flags = os.O_PATH | (0 if h.get("follow", True) else os.O_NOFOLLOW)
        if h.get("directory"):
            flags |= os.O_DIRECTORY
        fd = openat2(dirfd, blob, flags, 0, RESOLVE_NO_MAGICLINKS)
    st = os.fstat(fd)
    path = p.canonical(fd)
    handle = p.keep(fd)
    info = {
        "h": handle,
        "mode": st.st_mode,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "rdev": st.st_rdev,
        "named": path is not None,
    }
    return info, path or b"", []


def op_close(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    fd = p.held.pop(int(h.get("h", 0)), None)
    if fd is not None:
        os.close(fd)
    return _ok()


def op_chmod(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    fd = p.fd_of(h)
    flags = AT_EMPTY_PATH | (0 if h.get("follow", True) else AT_SYMLINK_NOFOLLOW)
    try:
        return _ok(_sys(SYS_FCHMODAT2, fd, ctypes.c_char_p(b""), int(h["mode"]), flags))
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    # Before fchmodat2 (Linux 6.6): the magic link of the O_PATH descriptor.
    if stat.S_ISLNK(os.fstat(fd).st_mode):
        raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
    os.chmod(str(fd), int(h["mode"]))
    return _ok()


def op_chown(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    fd = p.fd_of(h)
    uid, gid = int(h["uid"]) & 0xFFFFFFFF, int(h["gid"]) & 0xFFFFFFFF
    return _ok(
        _sys(
            SYS_FCHOWNAT,
            fd,
            ctypes.c_char_p(b""),
            ctypes.c_uint32(uid),
            ctypes.c_uint32(gid),
            AT_EMPTY_PATH,
        )
    )


def op_utimens(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    fd = p.fd_of(h)
    times = h.get("times")
    ts = None if times is None else (ctypes.c_long * 4)(*(int(v) for p in times for v in p))
    return _ok(_sys(SYS_UTIMENSAT, fd, ctypes.c_char_p(b""), ts, AT_EMPTY_PATH))


def _xattr_target(p: Performer, h: dict[str, Any], blob_path: bytes) -> tuple[str, bool]:
    """The relative name (under our /proc/self/fd) that reaches the resolved file, and
    whether the final component must not be followed."""
    fd = p.fd_of(h)
    if h.get("follow", True) or not stat.S_ISLNK(os.fstat(fd).st_mode):
        return str(fd), True  # the magic link itself reaches the inode
    # lsetxattr of a symlink: the kernel offers no descriptor form, so go through its
    # directory (pinned by a descriptor) and check that the name is still this symlink.
    path = blob_path
    if not path.startswith(b"/"):
        raise OSError(errno.EACCES, "the symlink has no name")
    parent, _, base = path.rpartition(b"/")
    pfd = openat2(-100, parent or b"/", os.O_PATH | os.O_DIRECTORY, 0, RESOLVE_NO_SYMLINKS)
    p.keep(pfd)
    st, now = os.fstat(fd), os.stat(base, dir_fd=pfd, follow_symlinks=False)
    if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
        raise OSError(errno.ENOENT, "the symlink was replaced")
    return f"{pfd}/{os.fsdecode(base)}", False


def op_setxattr(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    name_len = int(h["name_len"])
    name, value = blob[:name_len], blob[name_len:]
    target, follow = _xattr_target(p, h, bytes.fromhex(h.get("path", "")))
    os.setxattr(target, os.fsdecode(name), value, int(h.get("flags", 0)), follow_symlinks=follow)
    return _ok()


def op_removexattr(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    target, follow = _xattr_target(p, h, bytes.fromhex(h.get("path", "")))
    os.removexattr(target, os.fsdecode(blob), follow_symlinks=follow)
    return _ok()


def op_stat(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    """The raw struct the agent's call would have written (stat or statx)."""
    fd = p.fd_of(h)
    if h.get("kind") == "statx":
        buf = ctypes.create_string_buffer(STATX_SIZE)
        flags = AT_EMPTY_PATH | (int(h.get("flags", 0)) & 0x6000)  # AT_STATX_SYNC_TYPE
        _sys(SYS_STATX, fd, ctypes.c_char_p(b""), flags, ctypes.c_uint(int(h["mask"])), buf)
        return {"ret": 0}, buf.raw, []
    buf = ctypes.create_string_buffer(STAT_SIZE)
    _sys(SYS_NEWFSTATAT, fd, ctypes.c_char_p(b""), buf, AT_EMPTY_PATH)
    return {"ret": 0}, buf.raw, []


def op_access(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    fd = p.fd_of(h)
    flags = AT_EMPTY_PATH | (int(h.get("flags", 0)) & AT_EACCESS)
    return _ok(_sys(SYS_FACCESSAT2, fd, ctypes.c_char_p(b""), int(h["mode"]), flags))


def op_reopen(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    """A real open of the resolved file (through its magic link: the same inode), checked by
    our Landlock rules as the agent's open would be; the descriptor goes to the parent."""
    fd = p.fd_of(h)
    flags = int(h["flags"]) & VALID_OPEN_FLAGS & ~(os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)
    new = os.open(str(fd), flags | os.O_CLOEXEC, dir_fd=p.selffd)
    return {"ret": 0}, b"", [new]


def op_open(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    """An open that creates (its mode already stripped of setuid/setgid by the parent),
    made with the agent's umask applied by the parent (ours is 0)."""
    dirfd = _start(fds, blob)
    flags = int(h["flags"])
    flags = flags & (VALID_OPEN_FLAGS | os.O_PATH) & ~os.O_CLOEXEC
    new = openat2(dirfd, blob, flags, int(h["mode"]) & 0o7777, RESOLVE_NO_MAGICLINKS)
    return {"ret": 0}, b"", [new]


def op_mkdir(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    if not fds:
        raise OSError(errno.EBADF, "no directory descriptor")
    os.mkdir(blob, int(h["mode"]) & 0o7777, dir_fd=fds[0])
    return _ok()


def op_mknod(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    os.mknod(blob, int(h["mode"]), int(h.get("dev", 0)), dir_fd=_start(fds, blob))
    return _ok()


def op_fchmod(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    if not fds:
        raise OSError(errno.EBADF, "no descriptor")
    os.fchmod(fds[0], int(h["mode"]) & 0o7777)
    return _ok()


# Sockets: the raw calls, on a duplicate of the agent's socket (fds[0]); the address is the
# parent's copy, or for a pathname socket the magic link of the resolved inode ("N"
# relative to our cwd, /proc/self/fd), so the agent cannot swap the file in between.

_libc.connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.sendto.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint32,
]
_libc.sendto.restype = ctypes.c_ssize_t
_libc.sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.sendmsg.restype = ctypes.c_ssize_t


def _address(p: Performer, h: dict[str, Any]) -> bytes:
    if "h" in h:  # a pathname socket we resolved
        name = str(p.fd_of(h)).encode()
        return struct.pack("=H", socket.AF_UNIX) + name + b"\0"
    return bytes.fromhex(h.get("addr", ""))


def _check(res: int) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def op_connect(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    addr = _address(p, h)
    return _ok(_check(_libc.connect(fds[0], addr, len(addr))))


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def op_send(
    p: Performer, h: dict[str, Any], blob: bytes, fds: list[int]
) -> tuple[dict[str, Any], bytes, list[int]]:
    """sendto/sendmsg of the parent's copy of the data (and control messages, with the
    agent's descriptors, duplicated by the parent, in place of SCM_RIGHTS numbers)."""
    sock, rights = fds[0], fds[1:]
    addr = _address(p, h) if ("h" in h or h.get("addr")) else b""
    flags = int(h.get("flags", 0))
    control = b""
    for cmsg in h.get("control", ()):
        level, typ = int(cmsg["level"]), int(cmsg["type"])
        if "rights" in cmsg:
            n = int(cmsg["rights"])
            data = array.array("i", rights[:n]).tobytes()
            rights = rights[n:]
        else:
            data = bytes.fromhex(cmsg["data"])
        control += struct.pack("=QII", socket.CMSG_LEN(len(data)), level, typ) + data
        control += b"\0" * (socket.CMSG_SPACE(len(data)) - socket.CMSG_LEN(len(data)))
    data_buf = ctypes.create_string_buffer(blob, max(1, len(blob)))
    name_buf = ctypes.create_string_buffer(addr, max(1, len(addr)))
    ctl_buf = ctypes.create_string_buffer(control, max(1, len(control)))
    iov = _Iovec(ctypes.cast(data_buf, ctypes.c_void_p), len(blob))
    msg = _Msghdr(
        ctypes.cast(name_buf, ctypes.c_void_p) if addr else None,
        len(addr),
        ctypes.cast(ctypes.pointer(iov), ctypes.c_void_p),
        1,
        ctypes.cast(ctl_buf, ctypes.c_void_p) if control else None,
        len(control),
        0,
    )
    return _ok(_check(_libc.sendmsg(sock, ctypes.byref(msg), flags)))


OPS: dict[str, Op] = {
    "resolve": op_resolve,
    "close": op_close,
    "chmod": op_chmod,
    "chown": op_chown,
    "utimens": op_utimens,
    "setxattr": op_setxattr,
    "removexattr": op_removexattr,
    "stat": op_stat,
    "access": op_access,
    "reopen": op_reopen,
    "open": op_open,
    "mknod": op_mknod,
    "fchmod": op_fchmod,
    "connect": op_connect,
    "send": op_send,
}
# Operations that may block: served in a thread of their own.
THREADED = frozenset({"reopen", "open", "mknod", "connect", "send"})


# --- becoming the agent's performer ----------------------------------------------------------


def _status_ids(pid: int, key: str) -> list[int]:
    values = procfs.status_field(f"/proc/{pid}/status", key)
    if values is None:
        raise SetupError(f"/proc/{pid}/status has no {key}")
    return [int(v) for v in values]


def _join_namespaces(agent: int) -> None:
    for name, flag in NAMESPACES:
        mine = os.stat(f"/proc/self/ns/{name}").st_ino
        theirs = os.stat(f"/proc/{agent}/ns/{name}").st_ino
        if mine == theirs:
            continue
        fd = os.open(f"/proc/{agent}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, flag) != 0:
                raise SetupError(f"setns({name}): {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)


def _become_agent(agent: int) -> None:
    """The agent's ids, no capabilities, no_new_privs, not dumpable."""
    uid = _status_ids(agent, "Uid")[1]  # effective ids: the ones the kernel checks
    gid = _status_ids(agent, "Gid")[1]
    groups = _status_ids(agent, "Groups")
    if os.geteuid() == 0 and hygiene.no_new_privs() is False:
        with contextlib.suppress(SetupError):
            hygiene.drop_bounding_set()  # while CAP_SETPCAP is there; harmless if it fails
    if sorted(os.getgroups()) != sorted(groups):
        os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise SetupError("prctl(PR_SET_DUMPABLE, 0) failed")
    hygiene.set_no_new_privs()
    with contextlib.suppress(SetupError):
        hygiene.drop_capabilities()  # the bounding set may stay for an unprivileged launcher
    for field in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        values = procfs.status_field("/proc/self/status", field)
        if not values or int(values[0], 16):
            raise SetupError(f"the performer kept capabilities ({field})")
    if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3:
        raise SetupError("the performer did not take the agent's ids")


def main(
    sock: socket.socket, agent: int, plan: landlock.LandlockPlan | None, launcher: int
) -> NoReturn:
    """The performer's life, in the forked child. Never returns."""
    try:
        # The launcher's signal wake-up descriptor is not ours: a signal must not write a
        # byte into whatever descriptor later takes its number.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the terminal's signals are the agent's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()  # secrets of the launcher's environment have no use here
        selffd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _join_namespaces(agent)
        _become_agent(agent)
        # A change of ids clears the parent-death signal: set it again.
        hygiene.set_parent_death_signal(launcher)
        os.umask(0)  # the parent applies the agent's umask to every mode it passes
        if plan is not None:
            landlock.apply(plan)
        os.fchdir(selffd)
        send(sock, {"id": 0, "ready": True})
    except (OSError, SetupError) as e:
        with contextlib.suppress(OSError):
            send(sock, {"id": 0, "ready": False, "why": str(e)[:500]})
        os._exit(3)
    except BaseException:
        os._exit(3)
    try:
        Performer(sock, selffd).serve()
    except BaseException:
        os._exit(3)
