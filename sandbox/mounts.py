"""Writable paths become non-executable, in a private mount namespace of the agent.

Why: without the promise prot_exec, the filter still lets the dynamic loader map files
read+execute (every dynamically linked program needs that), so the remaining hole would be
a file the agent writes and then maps executable. Landlock's execute right covers execve
only, not mmap. A noexec mount covers both: the kernel refuses PROT_EXEC mappings and exec
of any file reached through it. So every unveiled path with 'w' or 'c' and without 'x' is
bind-mounted onto itself with MOUNT_ATTR_NOEXEC (recursively, keeping every other flag).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence

from sandbox.errors import SetupError

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
SYS_MOUNT_SETATTR = 442
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def _fail(what: str) -> SetupError:
    err = ctypes.get_errno()
    return SetupError(f"{what}: {os.strerror(err)}")


def make_noexec(paths: Sequence[str]) -> None:
    """Enter a private mount namespace; mount each path onto itself noexec,nosuid,nodev."""
    if not paths:
        return
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _fail("unshare(CLONE_NEWNS) for noexec writable paths")
    # Private propagation, so nothing done here reaches the host's mounts.
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _fail("make / private")
    attr = struct.pack("=QQQQ", MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    for path in paths:
        bpath = os.fsencode(path)
        if _libc.mount(bpath, bpath, None, MS_BIND | MS_REC, None) != 0:
            raise _fail(f"bind-mount {path}")
        res = _libc.syscall(
            SYS_MOUNT_SETATTR, -100, bpath, AT_RECURSIVE, buf, ctypes.c_size_t(len(attr))
        )
        if res != 0:
            raise _fail(f"make {path} noexec")
