"""Directory resources: operations the parent performs beneath a root, confined by the kernel.

The root is opened once (O_PATH|O_DIRECTORY). Every path beneath it is opened with
openat2(2) and RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV: the kernel refuses '..' that climbs out, any symlink (inside or out),
/proc magic links and mount crossings, atomically with the lookup. The string checks in
check_path() only give early, readable refusals; they are not the guard.

Operations that act on a name (remove, rename, mkdir) open the *parent* directory with
openat2 and then use the *at call on the last component, which check_path() proved to be
a plain name (no '/', not '.' or '..'), so the *at call cannot resolve anything itself.

What path resolution cannot stop: a hard link inside the tree to a file outside it. Such
a file is opened only if it has a single link (st_nlink == 1); see _open_checked().
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from sandbox.libc import libc as _libc
from sandbox.plain import plain

SYS_openat2: Final = 437  # the same number on every architecture (new-style syscall table)
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
CONFINED: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
RENAME_NOREPLACE: Final = 1

MAX_NAME = 255  # bytes of one component (NAME_MAX)
MAX_PATH = 4096  # bytes of a whole path (PATH_MAX)
MAX_LIST = 10_000  # entries returned by list(); more are cut and the reply says so
FILE_MODE = 0o600
DIR_MODE = 0o700


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# openat2 through its own prototype of syscall(2) (a separate function object: the shared
# one above keeps no argtypes): ctypes converts plain ints and bytes itself, and struct
# packs `struct open_how`, which the kernel only reads. Building ctypes objects for each
# argument cost more than the call (the broker opens a file for most requests).
_openat2_call = _libc["syscall"]
_openat2_call.restype = ctypes.c_long
_openat2_call.argtypes = [
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
]
_OPEN_HOW = struct.Struct("=QQQ")  # flags, mode, resolve (include/uapi/linux/openat2.h)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


class PathError(ValueError):
    """A path refused before it reaches the kernel (absolute, '..', NUL, too long, ...)."""


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = CONFINED) -> int:
    """openat2(2): a new descriptor, or OSError with the kernel's errno."""
    # The kernel refuses a mode (EINVAL) unless the call can create something.
    mode = mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0
    how = _OPEN_HOW.pack(flags | os.O_CLOEXEC, mode, resolve)
    fd = _openat2_call(SYS_openat2, dirfd, os.fsencode(path), how, _OPEN_HOW.size)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def check_path(path: object, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of a relative path, or PathError saying why it is refused.

    Empty components and '.' are dropped ("a//b/" is "a/b"); "" is the root itself,
    accepted only where allow_root (list, stat).
    """
    if not isinstance(path, str):
        raise PathError("path must be a string")
    if "\0" in path:
        raise PathError("path contains a NUL byte")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError("path is not valid UTF-8") from None
    if len(raw) > MAX_PATH:
        raise PathError(f"path is longer than {MAX_PATH} bytes")
    if path.startswith("/"):
        raise PathError("absolute path refused: paths are relative to the resource root")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    for p in parts:
        if p == "..":
            raise PathError("'..' refused: paths must stay beneath the resource root")
        if len(p.encode("utf-8")) > MAX_NAME:
            raise PathError(f"path component longer than {MAX_NAME} bytes")
    if not parts and not allow_root:
        raise PathError("empty path: name a file beneath the resource root")
    return parts


# Open modes as the agent names them (builtin open() without 'b'/'t'):
# (access flags, create flag wanted, exclusive, truncate, append).
@plain(frozen=True)
class OpenMode:
    access: int
    creates: bool  # O_CREAT wanted (subject to the 'create' right)
    exclusive: bool  # 'x': must create
    truncate: bool
    append: bool
    rights: frozenset[str]  # rights always needed


OPEN_MODES: Mapping[str, OpenMode] = MappingProxyType(
    {
        "r": OpenMode(os.O_RDONLY, False, False, False, False, frozenset({"read"})),
        "r+": OpenMode(os.O_RDWR, False, False, False, False, frozenset({"read", "write"})),
        "w": OpenMode(os.O_WRONLY, True, False, True, False, frozenset({"write"})),
        "w+": OpenMode(os.O_RDWR, True, False, True, False, frozenset({"read", "write"})),
        "a": OpenMode(os.O_WRONLY, True, False, False, True, frozenset({"write"})),
        "a+": OpenMode(os.O_RDWR, True, False, False, True, frozenset({"read", "write"})),
        "x": OpenMode(os.O_WRONLY, True, True, False, False, frozenset({"create"})),
        "x+": OpenMode(os.O_RDWR, True, True, False, False, frozenset({"read", "create"})),
    }
)


class Refused(PermissionError):
    """The operation is refused for a reason the parent records (not an ordinary error)."""


def _type_name(mode: int) -> str:
    for test, name in _TYPES:
        if test(mode):
            return name
    return "other"


_TYPES: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "chardev"),
    (stat.S_ISBLK, "blockdev"),
)


class DirResource:
    """One `type: dir` resource: its root descriptor and the operations beneath it."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = root
        self._rootfd: int | None = None

    def _root(self) -> int:
        if self._rootfd is None:
            try:
                self._rootfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise OSError(
                    e.errno, f"resource {self.name!r}: root {self.root} unavailable: {e.strerror}"
                ) from None
        return self._rootfd

    def close(self) -> None:
        if self._rootfd is not None:
            os.close(self._rootfd)
            self._rootfd = None

    def noexec(self) -> bool:
        """True if the root is on a noexec mount (descriptors we pass cannot be executed)."""
        return bool(os.statvfs(self._root()).f_flag & os.ST_NOEXEC)

    def _parent(self, parts: tuple[str, ...]) -> int:
        """An O_PATH descriptor of the directory holding parts[-1], opened confined."""
        sub = "/".join(parts[:-1]) or "."
        return openat2(self._root(), sub, os.O_PATH | os.O_DIRECTORY)

    # -- open: the one place that makes descriptors for the agent

    def open(
        self,
        path: str,
        mode: str,
        may_create: bool,
        want_create: bool = True,
        parts: tuple[str, ...] | None = None,
    ) -> int:
        """A descriptor of a regular file beneath the root, for the agent.

        `want_create`: the agent asks for O_CREAT (w/a modes); `may_create`: the policy
        promises RESOURCE:create. Wanted but not promised, a missing file is a denial.
        `parts`: check_path(path), when the caller has it already.
        """
        spec = OPEN_MODES.get(mode)
        if spec is None:
            raise ValueError(f"open mode {mode!r} unknown (one of {', '.join(OPEN_MODES)})")
        if parts is None:
            parts = check_path(path)
        flags = spec.access | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK
        if spec.append:
            flags |= os.O_APPEND
        if spec.exclusive:
            flags |= os.O_CREAT | os.O_EXCL
        elif spec.creates and may_create and want_create:
            flags |= os.O_CREAT
        try:
            return self._open_checked("/".join(parts), flags, spec.truncate)
        except FileNotFoundError:
            if spec.creates and want_create and not may_create:
                raise Refused(
                    f"{self.name}:create is not promised (the file {path!r} does not exist)"
                ) from None
            raise

    def _open_checked(self, sub: str, flags: int, truncate: bool) -> int:
        # O_NONBLOCK so that a FIFO cannot block the parent; cleared once we know it is a
        # regular file. O_TRUNC is applied after that check, never to a device.
        fd = openat2(self._root(), sub, flags, FILE_MODE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(f"{sub!r} is a {_type_name(st.st_mode)}, not a regular file")
            if st.st_nlink > 1:
                # A hard link may name a file outside the resource; path resolution cannot
                # tell, so a file with several names is refused.
                raise Refused(
                    f"{sub!r} has {st.st_nlink} hard links; refused because a hard link can "
                    "lead outside the resource"
                )
            # F_SETFL sets only the status flags (O_APPEND, O_NONBLOCK, ...): keep O_APPEND.
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & os.O_APPEND)
            if truncate:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- the other operations

    def list(self, path: str) -> tuple[list[tuple[str, str]], bool]:
        """(name, type) of the entries of a directory, sorted; True if cut at MAX_LIST."""
        parts = check_path(path, allow_root=True)
        fd = openat2(self._root(), "/".join(parts) or ".", os.O_RDONLY | os.O_DIRECTORY)
        entries: list[tuple[str, str]] = []
        truncated = False
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) >= MAX_LIST:
                        truncated = True
                        break
                    try:
                        kind = _type_name(entry.stat(follow_symlinks=False).st_mode)
                    except OSError:
                        kind = "other"  # vanished meanwhile
                    entries.append((entry.name, kind))
        finally:
            os.close(fd)
        entries.sort()
        return entries, truncated

    def stat(self, path: str) -> dict[str, Any]:
        parts = check_path(path, allow_root=True)
        fd = openat2(self._root(), "/".join(parts) or ".", os.O_PATH)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return {
            "size": st.st_size,
            "mtime": st.st_mtime,
            "type": _type_name(st.st_mode),
            "mode": stat.S_IMODE(st.st_mode),
        }

    def remove(self, path: str) -> None:
        parts = check_path(path)
        pfd = self._parent(parts)
        try:
            try:
                os.unlink(parts[-1], dir_fd=pfd)
            except IsADirectoryError:
                os.rmdir(parts[-1], dir_fd=pfd)
        finally:
            os.close(pfd)

    def rename(self, src: str, dst: str) -> None:
        sparts, dparts = check_path(src), check_path(dst)
        sfd = self._parent(sparts)
        try:
            dfd = self._parent(dparts)
            try:
                rc = _renameat2(
                    sfd, os.fsencode(sparts[-1]), dfd, os.fsencode(dparts[-1]), RENAME_NOREPLACE
                )
                if rc != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), dst)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def mkdir(self, path: str) -> None:
        parts = check_path(path)
        pfd = self._parent(parts)
        try:
            os.mkdir(parts[-1], DIR_MODE, dir_fd=pfd)
        finally:
            os.close(pfd)


# Kernel refusals that mean "this path tried to leave the resource": recorded as denials.
ESCAPE_ERRNOS: frozenset[int] = frozenset({errno.ELOOP, errno.EXDEV})
