"""The C library, once: raw system calls that Python's os module does not wrap.

Landlock, seccomp(2), mount_setattr, close_range, capset, pidfd_getfd, openat2 and the
namespace calls have no os.* wrapper. Every module reaches them through this handle, so
errno handling is the same everywhere: `syscall()` returns the result or raises OSError
with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def errno_now() -> int:
    """The errno of the last failed call made through `libc`."""
    return ctypes.get_errno()


def syscall(nr: int, *args: object, what: str = "") -> int:
    """syscall(2): the non-negative result, or OSError naming `what` with the errno."""
    res = int(libc.syscall(ctypes.c_long(nr), *args))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what or f'syscall {nr}'}: {os.strerror(err)}")
    return res


def check(res: int, what: str) -> int:
    """`res` of a libc function that sets errno: returned if >= 0, else OSError."""
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return res
