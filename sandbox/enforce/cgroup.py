"""Limits on the agent's whole process tree: cgroup pids and memory controllers.

RLIMIT_NPROC counts every process of a user (and binds root not at all), RLIMIT_AS counts
per process: neither limits a tree. A cgroup does, whatever the uids inside it, and it also
gives the parent a reliable list of every process to kill at the end (the agent cannot
leave it: cgroup files are outside every unveil and need privileges it has dropped).

cgroup v2 is used where this launcher may create a cgroup with the memory and pids
controllers (a delegated subtree, found by sandbox.enforce.kernel.delegated_cgroup_v2: a
systemd user scope with Delegate=yes, for example); otherwise v1 hierarchies, which need
root (as on the CI machine, whose v2 hierarchy has no controllers).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from sandbox.enforce.kernel import CGROUP_DELEGATE_HINT, Features
from sandbox.errors import SetupError
from sandbox.plain import field, plain

V1_ROOT = "/sys/fs/cgroup"


def _own_path(controller: str) -> str | None:
    """This process's cgroup in the v1 hierarchy of `controller` (or '' for v2)."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return path
    except OSError:
        return None
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


@plain
class Cgroup:
    """One cgroup per controller hierarchy, created for one run and removed after it."""

    dirs: dict[str, str] = field(default_factory=dict)  # controller -> directory
    version: int = 1

    def add(self, pid: int) -> None:
        for d in self._unique_dirs():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def _unique_dirs(self) -> list[str]:
        # v2 has one directory for every controller; v1 one per hierarchy.
        return sorted(set(self.dirs.values()))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self._unique_dirs():
            try:
                with open(os.path.join(d, "cgroup.procs"), encoding="ascii") as f:
                    found.update(int(x) for x in f.read().split())
            except OSError:
                continue
        return found

    def kill_all(self) -> None:
        """SIGKILL every process in the tree; freeze first so nothing forks in between."""
        if self.version == 2 and "pids" in self.dirs:
            with contextlib.suppress(OSError):
                _write(os.path.join(self.dirs["pids"], "cgroup.kill"), "1")
        freezer = self.dirs.get("freezer")
        if freezer:
            with contextlib.suppress(OSError):
                _write(os.path.join(freezer, "freezer.state"), "FROZEN")
        for _ in range(100):
            procs = self.pids()
            if not procs:
                break
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if freezer:
                with contextlib.suppress(OSError):
                    _write(os.path.join(freezer, "freezer.state"), "THAWED")
            time.sleep(0.002)

    def memory_events(self) -> int:
        """How many processes the OOM killer ended in this cgroup (v1 memory.oom_control,
        v2 memory.events: both have an oom_kill line; failcnt and 'max' also count limits
        that were reached without a kill)."""
        d = self.dirs.get("memory")
        if not d:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            with open(os.path.join(d, name), encoding="ascii") as f:
                for line in f:
                    key, _, val = line.partition(" ")
                    if key == "oom_kill":
                        return int(val)
        except (OSError, ValueError):
            return 0
        return 0

    def remove(self) -> None:
        self.kill_all()
        for d in self._unique_dirs():
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.002)


def needed(memory: int | None, processes: int | None) -> bool:
    return memory is not None or processes is not None


def create(
    name: str, memory: int | None, processes: int | None, feats: Features, *, tracking: bool = True
) -> Cgroup:
    """A fresh cgroup with the limits set, or SetupError naming what is missing.

    `tracking`: also join the pids and freezer hierarchies (v1) to find and stop every
    process at the end; not needed when a pid namespace ends them. Each v1 hierarchy joined
    costs ~4 ms of launch time.
    """
    leaf = f"outheis-sandbox-{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    if feats.cgroup_v2_place is not None:
        return _create_v2(
            feats.cgroup_v2_place, feats.cgroup_v2_move_launcher, leaf, memory, processes
        )
    needs = {
        "pids": tracking or processes is not None,
        "memory": memory is not None,
        "freezer": tracking,
    }
    wanted = [c for c, needed in needs.items() if needed]
    missing = [c for c in ("pids", "memory") if needs[c] and c not in feats.cgroup_v1]
    if missing:
        raise SetupError(f"cgroup controllers not available: {', '.join(missing)}")
    if not feats.root:
        raise SetupError(f"cgroup limits: {feats.cgroups_refused}")
    cg = Cgroup(version=1)
    try:
        for ctrl in wanted:
            if ctrl not in feats.cgroup_v1:
                continue
            own = _own_path(ctrl)
            if own is None:
                continue
            d = os.path.join(V1_ROOT, ctrl, own.lstrip("/"), leaf)
            os.mkdir(d, 0o700)
            cg.dirs[ctrl] = d
        if processes is not None:
            _write(os.path.join(cg.dirs["pids"], "pids.max"), str(processes))
        if memory is not None:
            mem = cg.dirs["memory"]
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory))
            # Without swap accounting the limit could be dodged by swapping out.
            with contextlib.suppress(OSError):
                _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(memory))
    except OSError as e:
        cg.remove()
        raise SetupError(f"cgroup: {e.filename}: {e.strerror}") from e
    return cg


# The cgroup this launcher made hand out memory and pids (moving itself into a leaf of it
# first if it was its own): later agents' cgroups go there without asking again.
_moved_into: str | None = None


def _hand_out_controllers(place: str, move_launcher: bool) -> None:
    """Make `place` hand memory and pids to its children. A cgroup with processes in it
    cannot (the no-internal-process rule; the root cgroup is exempt), so when `place` is
    the launcher's own cgroup the launcher first moves into a leaf of it."""
    global _moved_into
    if _moved_into == place:
        return
    control = os.path.join(place, "cgroup.subtree_control")
    with open(control, encoding="ascii") as f:
        if {"memory", "pids"} <= set(f.read().split()):
            return
    if move_launcher:
        leaf = os.path.join(place, f"outheis-sandbox-launcher-{os.getpid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(leaf, 0o755)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
    try:
        _write(control, "+memory +pids")
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise SetupError(
                f"cgroup v2: other processes share the launcher's cgroup {place}, so it "
                f"cannot hand memory and pids to children; start sandbox in a scope of its "
                f"own: {CGROUP_DELEGATE_HINT}"
            ) from e
        raise
    _moved_into = place


def _create_v2(
    place: str, move_launcher: bool, leaf: str, memory: int | None, processes: int | None
) -> Cgroup:
    d = os.path.join(place, leaf)
    try:
        _hand_out_controllers(place, move_launcher)
        os.mkdir(d, 0o700)
        cg = Cgroup(dirs={"pids": d, "memory": d}, version=2)
        if processes is not None:
            _write(os.path.join(d, "pids.max"), str(processes))
        if memory is not None:
            _write(os.path.join(d, "memory.max"), str(memory))
            with contextlib.suppress(OSError):
                _write(os.path.join(d, "memory.swap.max"), "0")
    except OSError as e:
        with contextlib.suppress(OSError):
            os.rmdir(d)
        raise SetupError(f"cgroup v2: {e.filename}: {e.strerror}") from e
    return cg
