"""The agent's process as the parent reaches it: its memory, its descriptors, its cwd.

A seccomp notification names a thread and gives six registers; everything behind a pointer
lives in the agent's memory, which its other threads may change at any moment. The parent
therefore copies what it needs exactly once (process_vm_readv, else /proc/PID/mem), checks
the copy, and never lets the original be used by the kernel afterwards: it performs the
call itself from the copy. Descriptors named by the call are duplicated with
pidfd_getfd(2), so the parent acts on the agent's own open file description, not on a
number the agent could reuse.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from sandbox import procfs
from sandbox.libc import libc as _libc

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438
SYS_PROCESS_VM_READV = 310
SYS_PROCESS_VM_WRITEV = 311
PIDFD_THREAD = 0o200  # O_EXCL: a pidfd for one thread (Linux 6.9), no tgid lookup needed
PATH_MAX = 4096
AT_FDCWD = -100


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def tgid(tid: int) -> int:
    """The process a thread belongs to (pidfd_open and /proc/PID/mem want the process)."""
    return procfs.status_int(f"/proc/{tid}/status", "Tgid") or tid


def read_memory(tid: int, addr: int, size: int) -> bytes:
    """Up to `size` bytes at `addr` in the agent (fewer if the range ends in unmapped
    memory); OSError(EFAULT) if not even the first byte can be read."""
    if size <= 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _Iovec(ctypes.c_void_p(addr), size)
    n = int(
        _libc.syscall(SYS_PROCESS_VM_READV, tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    )
    if n >= 0:
        if n == 0:
            raise OSError(errno.EFAULT, "bad address in the agent")
        return buf.raw[:n]
    err = ctypes.get_errno()
    if err in (errno.EFAULT, errno.ESRCH):
        raise OSError(err, os.strerror(err))
    # process_vm_readv may be refused where /proc/PID/mem is not (or the reverse).
    with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
        try:
            mem.seek(addr)
            data = mem.read(size)
        except (OverflowError, ValueError):
            raise OSError(errno.EFAULT, "bad address in the agent") from None
    if not data:
        raise OSError(errno.EFAULT, "bad address in the agent")
    return data


def read_exact(tid: int, addr: int, size: int) -> bytes:
    """Exactly `size` bytes or OSError(EFAULT), as the kernel's copy_from_user."""
    data = read_memory(tid, addr, size)
    if len(data) != size:
        raise OSError(errno.EFAULT, "bad address in the agent")
    return data


def read_string(tid: int, addr: int, limit: int = PATH_MAX) -> bytes:
    """A NUL-terminated string (without the NUL), as the kernel's strncpy_from_user:
    EFAULT for a bad pointer, ENAMETOOLONG if no NUL within `limit` bytes."""
    if addr == 0:
        raise OSError(errno.EFAULT, "NULL path")
    out = b""
    while len(out) < limit:
        # Read to the end of the page first: the next page may be unmapped.
        want = min(limit - len(out), 4096 - ((addr + len(out)) & 4095))
        chunk = read_memory(tid, addr + len(out), want)
        nul = chunk.find(b"\0")
        if nul >= 0:
            return out + chunk[:nul]
        out += chunk
    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))


def write_memory(tid: int, addr: int, data: bytes) -> None:
    """Copy `data` to `addr` in the agent (a result buffer, as copy_to_user): EFAULT if
    it does not all land."""
    if not data:
        return
    buf = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = _Iovec(ctypes.c_void_p(addr), len(data))
    n = int(
        _libc.syscall(
            SYS_PROCESS_VM_WRITEV, tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0
        )
    )
    if n == len(data):
        return
    if n < 0 and ctypes.get_errno() not in (errno.EFAULT, errno.ESRCH):
        with open(f"/proc/{tid}/mem", "r+b", buffering=0) as mem:
            try:
                mem.seek(addr)
                if mem.write(data) == len(data):
                    return
            except (OverflowError, ValueError, OSError):
                pass
    raise OSError(errno.EFAULT, "bad address in the agent")


def pidfd(tid: int) -> int:
    """A pidfd for the thread's process (the caller closes it)."""
    fd = int(_libc.syscall(SYS_PIDFD_OPEN, tid, PIDFD_THREAD))
    if fd >= 0:
        return fd
    fd = int(_libc.syscall(SYS_PIDFD_OPEN, tgid(tid), 0))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def dup_fd(tid: int, fd: int) -> int:
    """A duplicate of the agent's descriptor `fd` (close-on-exec, ours to close): the same
    open file description. OSError(EBADF) if the agent has no such descriptor."""
    if not 0 <= fd < 1 << 31:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    pfd = pidfd(tid)
    try:
        res = int(_libc.syscall(SYS_PIDFD_GETFD, pfd, fd, 0))
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return res
    finally:
        os.close(pfd)


def cwd_fd(tid: int) -> int:
    """The thread's working directory, opened O_PATH (it may differ per thread)."""
    return os.open(f"/proc/{tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def dirfd_of(tid: int, dirfd: int) -> int:
    """What a *at call's dirfd names, as our own descriptor: the cwd for AT_FDCWD, else a
    duplicate of the agent's descriptor."""
    if dirfd == AT_FDCWD:
        return cwd_fd(tid)
    return dup_fd(tid, dirfd)


def umask_of(tid: int) -> int:
    """The thread's umask (creating calls performed for it apply it)."""
    values = None
    with contextlib.suppress(OSError):
        values = procfs.status_field(f"/proc/{tid}/status", "Umask")
    return int(values[0], 8) if values else 0o022


def int32(register: int) -> int:
    """An `int` argument as the kernel reads it: the low 32 bits, signed."""
    v = register & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v
