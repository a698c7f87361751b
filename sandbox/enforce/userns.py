"""An ordinary user's user namespace: the launcher's uid and gid mapped onto themselves.

One id each, and setgroups denied (the kernel requires that of an unprivileged gid_map):
inside, the process is the same user as outside, with every capability of the new
namespace and none beyond it. Used by the holder of an agent's namespaces
(sandbox.parent.reaper) and by the probe that asks whether the kernel allows it
(sandbox.enforce.kernel).
"""

from __future__ import annotations

import ctypes
import os

from sandbox.errors import SetupError
from sandbox.libc import libc

CLONE_NEWUSER = 0x10000000


def enter() -> None:
    """unshare(CLONE_NEWUSER) and write the identity maps; SetupError saying which failed."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER) != 0:
        raise SetupError(f"unshare(CLONE_NEWUSER): {os.strerror(ctypes.get_errno())}")
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
                f.write(text)
        except OSError as e:
            raise SetupError(f"writing /proc/self/{name}: {e.strerror}") from e
