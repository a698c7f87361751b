"""Writable paths become non-executable, in a private mount namespace of the agent.

Why: without the promise prot_exec, the filter still lets the dynamic loader map files
read+execute (every dynamically linked program needs that), so the remaining hole would be
a file the agent writes and then maps executable. Landlock's execute right covers execve
only, not mmap. A noexec mount covers both: the kernel refuses PROT_EXEC mappings and exec
of any file reached through it. So every unveiled path with 'w' or 'c' and without 'x' is
bind-mounted onto itself with MOUNT_ATTR_NOEXEC (recursively, keeping every other flag).

Mount points are chosen by noexec_points(): each writable path is lifted to its highest
ancestor on the same filesystem beneath which nothing else is unveiled, so that two
writable directories share one mount and a rename between them is not refused with EXDEV.
Raising it is harmless: what lies beneath and is not unveiled is invisible anyway.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence

from sandbox.errors import SetupError
from sandbox.libc import libc as _libc
from sandbox.policy.model import path_within

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
SYS_MOUNT_SETATTR = 442
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NOEXEC = 0x8


_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]


def _fail(what: str) -> SetupError:
    err = ctypes.get_errno()
    return SetupError(f"{what}: {os.strerror(err)}")


def noexec_points(writable: Sequence[str], others: Sequence[str]) -> list[str]:
    """Mount points covering every writable path (real, absolute) and no other unveiled
    path (`others`: unveiled paths that are read-only or executable)."""

    def blocked(candidate: str) -> bool:
        # Lifting must not cover a read-only or executable unveil (libraries are mapped
        # executable from those), nor climb into one.
        return any(path_within(o, candidate) or path_within(candidate, o) for o in others)

    points: set[str] = set()
    for w in writable:
        best = w  # always covered; only the lifting stops at other unveils
        if os.path.isdir(w):
            dev = os.stat(w).st_dev
            parent = os.path.dirname(best)
            while (
                parent not in (best, "/") and os.stat(parent).st_dev == dev and not blocked(parent)
            ):
                best, parent = parent, os.path.dirname(parent)
        points.add(best)
    # Drop points that lie inside another point.
    return sorted(p for p in points if not any(p != q and path_within(p, q) for q in points))


_private = False


def _private_namespace() -> None:
    """Enter a mount namespace of our own, once, with private propagation so nothing done
    in it reaches the host's mounts."""
    global _private
    if _private:
        return
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise _fail("unshare(CLONE_NEWNS)")
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _fail("make / private")
    _private = True


def bind_file(source: str, target: str) -> None:
    """Show `source` at `target` (a file), in the agent's own mount namespace."""
    _private_namespace()
    if (
        _libc.mount(os.fsencode(source), os.fsencode(os.path.realpath(target)), None, MS_BIND, None)
        != 0
    ):
        raise _fail(f"bind-mount {source} on {target}")


def make_noexec(paths: Sequence[str]) -> None:
    """Mount each path onto itself noexec,nosuid, in the agent's own mount namespace."""
    if not paths:
        return
    _private_namespace()
    # No MOUNT_ATTR_NODEV: it would make unveiled devices (/dev/null: rw) unusable, and
    # adds nothing (device nodes can never be created: Landlock, seccomp, no CAP_MKNOD).
    attr = struct.pack("=QQQQ", MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOSUID, 0, 0, 0)
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
