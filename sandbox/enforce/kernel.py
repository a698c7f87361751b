"""What this kernel (and this launcher's privileges) can enforce: the facts behind `doctor`.

Probes read files and make harmless calls only; they never change the calling process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from sandbox.enforce import landlock


@dataclass(frozen=True)
class Features:
    landlock_abi: int
    seccomp_actions: frozenset[str]
    root: bool
    cgroup_v1: frozenset[str]  # controllers mounted as v1 hierarchies
    cgroup_v2: frozenset[str]  # controllers enabled in the unified hierarchy we can use
    cgroup_v2_path: str | None
    memfd_noexec: bool  # MFD_NOEXEC_SEAL known (Linux 6.3)

    @property
    def user_notif(self) -> bool:
        return "user_notif" in self.seccomp_actions

    @property
    def mount_ns(self) -> bool:
        # Making writable paths noexec needs a private mount namespace: root can make one.
        return self.root


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cgroup_mounts() -> tuple[frozenset[str], frozenset[str], str | None]:
    v1: set[str] = set()
    v2: set[str] = set()
    v2_path: str | None = None
    text = _read("/proc/self/mounts") or ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mnt, fstype, opts = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup":
            v1.update(o for o in opts if o in ("memory", "pids", "freezer", "cpu"))
        elif fstype == "cgroup2" and v2_path is None:
            ctrl = _read(os.path.join(mnt, "cgroup.controllers"))
            if ctrl is not None:
                v2_path = mnt
                v2.update(ctrl.split())
    return frozenset(v1), frozenset(v2), v2_path


@functools.lru_cache(maxsize=1)
def probe() -> Features:
    actions = frozenset((_read("/proc/sys/kernel/seccomp/actions_avail") or "").split())
    v1, v2, v2_path = _cgroup_mounts()
    release = os.uname().release.split("-")[0].split(".")
    try:
        major, minor = int(release[0]), int(release[1])
    except (ValueError, IndexError):
        major, minor = 0, 0
    return Features(
        landlock_abi=landlock.abi_version(),
        seccomp_actions=actions,
        root=os.geteuid() == 0,
        cgroup_v1=v1,
        cgroup_v2=v2,
        cgroup_v2_path=v2_path,
        memfd_noexec=(major, minor) >= (6, 3),
    )
