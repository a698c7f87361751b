"""What this kernel (and this launcher's privileges) can enforce: the facts behind `doctor`.

Probes read files and make harmless calls only; they never change the calling process.
The one probe that must try something (can an ordinary user create namespaces?) tries it
in a throwaway child, which exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from typing import NoReturn

from sandbox.enforce import landlock, userns
from sandbox.errors import SetupError
from sandbox.libc import libc
from sandbox.plain import plain

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
NOBODY = 65534

# Settings that keep ordinary users from creating user namespaces: (file, the value that
# refuses, the setting's name, how an administrator allows it).
USERNS_SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "/proc/sys/kernel/unprivileged_userns_clone",
        "0",
        "sysctl kernel.unprivileged_userns_clone=0 (Debian's and Ubuntu's switch)",
        "sysctl -w kernel.unprivileged_userns_clone=1",
    ),
    (
        "/proc/sys/user/max_user_namespaces",
        "0",
        "sysctl user.max_user_namespaces=0",
        "sysctl -w user.max_user_namespaces=15000",
    ),
    (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "1",
        "AppArmor's kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10 and later)",
        "an AppArmor profile with `userns,` for the interpreter that runs sandbox, or "
        "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
    ),
)
CGROUP_DELEGATE_HINT = "systemd-run --user --scope -p Delegate=yes sandbox run ..."
CGROUP_NEED = frozenset({"memory", "pids"})


@plain(frozen=True)
class Features:
    landlock_abi: int
    seccomp_actions: frozenset[str]
    root: bool
    cgroup_v1: frozenset[str]  # controllers mounted as v1 hierarchies
    cgroup_v2: frozenset[str]  # controllers of the unified hierarchy's root
    cgroup_v2_path: str | None  # where the unified hierarchy is mounted
    memfd_noexec: bool  # MFD_NOEXEC_SEAL known (Linux 6.3)
    # An ordinary user's namespaces: None if the kernel lets one create a user namespace
    # (and pid, mount, network namespaces in it), else why not, naming the setting. Root
    # needs none (it has the namespaces without one); probed for root only by `doctor`.
    userns_refused: str | None = "not probed"
    # A cgroup v2 directory where this launcher may create the agent's cgroup with the
    # memory and pids controllers (a delegated subtree), else None and why not.
    cgroup_v2_place: str | None = None
    cgroup_v2_move_launcher: bool = False  # the place is our own cgroup: leave it first
    cgroup_v2_refused: str = ""
    # Landlock's audit records (sandbox.parent.denials): None if this launcher can read
    # them, else why not.
    kernel_audit_refused: str | None = "not probed"

    @property
    def user_notif(self) -> bool:
        return "user_notif" in self.seccomp_actions

    @property
    def userns(self) -> bool:
        return self.userns_refused is None

    @property
    def namespaces(self) -> bool:
        """The agent gets pid, mount and network namespaces: root has them, an ordinary
        user through a user namespace of the agent's own."""
        return self.root or self.userns

    @property
    def namespaces_refused(self) -> str:
        return f"not root, and {self.userns_refused}" if not self.namespaces else ""

    @property
    def mount_ns(self) -> bool:
        # Making writable paths noexec needs a private mount namespace.
        return self.namespaces

    @property
    def cgroups(self) -> bool:
        """limits.memory and limits.processes can be enforced for the whole tree."""
        return self.cgroup_v2_place is not None or (self.root and self.cgroup_v1 >= CGROUP_NEED)

    @property
    def cgroups_refused(self) -> str:
        if self.cgroups:
            return ""
        v1 = "cgroup v1 needs root" if not self.root else "no cgroup v1 memory and pids"
        return (
            f"no delegated cgroup v2 subtree with memory and pids ({self.cgroup_v2_refused}), "
            f"and {v1}; get one with: {CGROUP_DELEGATE_HINT}"
        )

    @property
    def landlock_audit(self) -> bool:
        """Landlock refusals are reported, path and letter (audit records, ABI 7)."""
        return self.kernel_audit_refused is None and self.landlock_abi >= landlock.LOG_ABI


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


def own_cgroup_v2() -> str | None:
    """This process's cgroup in the unified hierarchy ("0::/path"), None if unknown."""
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def _controllers(directory: str, name: str) -> frozenset[str]:
    return frozenset((_read(os.path.join(directory, name)) or "").split())


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def delegated_cgroup_v2(mount: str | None) -> tuple[str | None, bool, str]:
    """Where the agent's cgroup v2 can go: (directory, move the launcher first, why not).

    Delegation (systemd's Delegate=yes, or an administrator's chown) makes a cgroup and its
    cgroup.procs and cgroup.subtree_control writable by a user. Two cases work:
    - our cgroup's parent already enables memory and pids for its children and we may
      write there: the agent's cgroup becomes our sibling;
    - our own cgroup is delegated and offers memory and pids: the launcher first moves
      into a leaf of it (a cgroup with processes cannot enable controllers for children),
      then enables them, then creates the agent's cgroup beside that leaf.
    """
    if mount is None:
        return None, False, "no cgroup v2 hierarchy is mounted"
    own = own_cgroup_v2()
    if own is None:
        return None, False, "this process has no cgroup v2 (no 0:: line in /proc/self/cgroup)"
    cur = os.path.join(mount, own.lstrip("/")).rstrip("/") or "/"
    parent = os.path.dirname(cur)
    if (
        own != "/"
        and _controllers(parent, "cgroup.subtree_control") >= CGROUP_NEED
        and _writable(parent)
        and _writable(os.path.join(parent, "cgroup.procs"))
        and _writable(os.path.join(cur, "cgroup.procs"))
    ):
        return parent, False, ""
    available = _controllers(cur, "cgroup.controllers")
    files = (cur, os.path.join(cur, "cgroup.procs"), os.path.join(cur, "cgroup.subtree_control"))
    if not all(_writable(f) for f in files):
        owner = "?"
        with contextlib.suppress(OSError):
            owner = str(os.stat(cur).st_uid)
        return None, False, f"{cur} is not delegated to uid {os.geteuid()} (owner uid {owner})"
    missing = sorted(CGROUP_NEED - available)
    if missing:
        return (
            None,
            False,
            f"{', '.join(missing)} not available in {cur} "
            f"(cgroup.controllers: {' '.join(sorted(available)) or 'none'})",
        )
    return cur, own != "/", ""


def _userns_child(report: int) -> NoReturn:  # pragma: no cover - runs in the probe's child
    step = "switch to nobody"
    try:
        if os.geteuid() == 0:
            # Root asks on behalf of ordinary users: the settings bind them, not root.
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self/*_map stay ours
        step = "user namespace"
        userns.enter()
        # The pid namespace is what every launch needs (the holder makes one); a network
        # namespace costs ~1 ms more to make and to tear down, and the agent makes its own
        # mount and network namespaces later, failing closed with the kernel's errno.
        step = "unshare(CLONE_NEWPID|CLONE_NEWNS)"
        if libc.unshare(CLONE_NEWPID | CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "")
        step = "mount in the new mount namespace"
        if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
            raise OSError(ctypes.get_errno(), "")
        os.write(report, b"ok")
    except SetupError as e:
        os.write(report, str(e).encode()[:512])
    except OSError as e:
        os.write(report, f"{step}: {os.strerror(e.errno or errno.EPERM)}".encode()[:512])
    except BaseException:
        os.write(report, f"{step}: unexpected error".encode())
    os._exit(0)


@functools.lru_cache(maxsize=1)
def probe_userns() -> str | None:
    """None if an ordinary user can create a user namespace with pid and mount namespaces
    in it; else why not, naming the setting that refuses it. Tried in a
    throwaway child (the caller's namespaces never change)."""
    for path, refusing, name, fix in USERNS_SETTINGS:
        value = _read(path)
        if value is not None and value.strip() == refusing:
            return f"unprivileged user namespaces are disabled by {name}; to allow: {fix}"
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        return f"cannot fork to probe user namespaces: {e.strerror}"
    if pid == 0:  # pragma: no cover - the probe's child
        os.close(r)
        _userns_child(w)
    os.close(w)
    try:
        answer = b""
        while chunk := os.read(r, 512):
            answer += chunk
    finally:
        os.close(r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if answer == b"ok":
        return None
    why = answer.decode("utf-8", "replace") or "the probe's child died"
    return (
        f"unprivileged user namespaces are refused ({why}): a seccomp filter or security "
        "module of the launcher's environment (a container's, for example) forbids them"
    )


def probe_kernel_audit(root: bool, abi: int) -> str | None:
    """None if this launcher can read Landlock's audit records, else why not (and how)."""
    if abi < landlock.LOG_ABI:
        return f"Landlock ABI {abi} writes no audit records (needs ABI {landlock.LOG_ABI})"
    if not root:
        return "reading the kernel's audit records needs root (CAP_AUDIT_READ)"
    from sandbox import kaudit  # only root pays for the netlink round trip

    try:
        st = kaudit.status()
    except OSError as e:
        return f"the kernel's audit netlink is not usable here: {e.strerror}"
    if not st.enabled:
        return (
            "kernel audit is off (AUDIT_GET enabled=0); root may turn it on host-wide: "
            "sandbox doctor --enable-kernel-audit"
        )
    return None


@functools.lru_cache(maxsize=1)
def probe() -> Features:
    actions = frozenset((_read("/proc/sys/kernel/seccomp/actions_avail") or "").split())
    v1, v2, v2_path = _cgroup_mounts()
    release = os.uname().release.split("-")[0].split(".")
    try:
        major, minor = int(release[0]), int(release[1])
    except (ValueError, IndexError):
        major, minor = 0, 0
    root = os.geteuid() == 0
    abi = landlock.abi_version()
    place, move, refused = delegated_cgroup_v2(v2_path)
    return Features(
        landlock_abi=abi,
        seccomp_actions=actions,
        root=root,
        cgroup_v1=v1,
        cgroup_v2=v2,
        cgroup_v2_path=v2_path,
        memfd_noexec=(major, minor) >= (6, 3),
        # Root needs no user namespace: the fork of the probe is paid by ordinary users only.
        userns_refused="root needs none (see sandbox doctor)" if root else probe_userns(),
        cgroup_v2_place=place,
        cgroup_v2_move_launcher=move,
        cgroup_v2_refused=refused,
        kernel_audit_refused=probe_kernel_audit(root, abi),
    )
