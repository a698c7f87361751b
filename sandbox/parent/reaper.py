"""The agent's init: a small reaper between the launcher and the agent, in a new pid namespace.

Why: a process the agent forks could otherwise outlive a launcher killed with SIGKILL (it
would be re-parented to the host's init, unsupervised). In a pid namespace, the reaper is
pid 1; it dies with the launcher (parent-death signal), and when a namespace's init dies
the kernel kills every process in it. The reaper is launcher code, never sandboxed, and
does nothing but wait: the agent cannot signal it (Landlock scope; and an init ignores
default-action signals from inside its namespace).

    root:           launcher ── fork ──► reaper (pid 1) ── fork ──► agent (pid 2)
    ordinary user:  launcher ── fork ──► holder ── fork ──► reaper (pid 1) ── fork ──► agent

An ordinary user cannot create a pid namespace in the launcher's user namespace. The
holder creates a user namespace first (the launcher cannot: it could not leave it again),
maps the launcher's uid and gid onto themselves in it (one id each: inside, the agent is
the same user as outside, so files, `id`, and the parent's view of its credentials agree;
it is not root in there, which programs would otherwise believe and act on), creates the
pid namespace, owned by that user namespace, and forks the reaper into it. The agent, the
reaper's child, inherits every capability of the new user namespace (and none outside it),
so the launcher's child code can make its mount namespace (noexec writable paths) and
network namespace (dns) exactly as root does, and then drops every capability, the
bounding set included. The holder only waits: it dies with the launcher, the reaper dies
with it. This is done here, not in the apply step, because a pid namespace takes effect
for children only: it must exist before the reaper is forked, long before the agent runs
apply().

The reaper reports the agent's wait status through a pipe only it holds, so the agent
cannot forge it. Without any pid namespace (best_effort), the reaper still reports the
status, and the launcher's cgroup (when it has one) finds the stragglers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import struct
from collections.abc import Callable
from typing import NoReturn

from sandbox.enforce import hygiene, userns
from sandbox.errors import SetupError
from sandbox.libc import libc as _libc
from sandbox.plain import plain

CLONE_NEWPID = 0x20000000
_STATUS = struct.Struct("=i")
_TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP)


@plain
class Reaper:
    pid: int  # the launcher's child (the reaper, or the holder of its user namespace)
    status_fd: int  # readable once the agent has exited (or the reaper died: EOF)
    go_fd: int  # the launcher writes here to let the reaper fork the agent
    pidns: bool
    holder: bool = False  # `pid` holds a user namespace; the reaper is its child
    reaper_pid: int = 0  # the reaper (pid 1 of the agent's namespace), as we see it
    agent_pid: int = 0  # the agent, as the launcher sees it

    def release(self, timeout: float = 30.0) -> int:
        """Let the reaper fork the agent; return the agent's pid (in our namespace)."""
        with contextlib.suppress(BrokenPipeError):  # a holder that failed has gone
            os.write(self.go_fd, b"g")
        os.close(self.go_fd)
        self.go_fd = -1
        ready, _, _ = select.select([self.status_fd], [], [], timeout)
        first = os.read(self.status_fd, 1) if ready else b""
        if first == b"E":  # the holder could not make the namespaces; the rest says why
            raise SetupError(os.read(self.status_fd, 4096).decode("utf-8", "replace"))
        if first != b"F":
            raise SetupError("the agent's reaper did not start the agent")
        self.reaper_pid = (
            _only_child(self.pid, "the holder of the agent's namespaces")
            if self.holder
            else self.pid
        )
        self.agent_pid = _only_child(self.reaper_pid, "the agent's reaper")
        return self.agent_pid

    def agent_status(self) -> int:
        """The agent's wait status once status_fd is readable; SIGKILL if the reaper died."""
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(self.status_fd, _STATUS.size)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        if len(data) == _STATUS.size:
            return int(_STATUS.unpack(data)[0])
        return signal.SIGKILL  # a wait status: terminated by SIGKILL

    def kill(self) -> None:
        """End the reaper; with a pid namespace the kernel then ends everything in it."""
        for pid in (self.reaper_pid, self.pid, self.agent_pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        for fd in (self.status_fd, self.go_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.status_fd = self.go_fd = -1


def _only_child(pid: int, what: str) -> int:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        children = f.read().split()
    if len(children) != 1:
        raise SetupError(f"{what} has {len(children)} children, expected 1")
    return int(children[0])


def start(agent_main: Callable[[int], NoReturn], *, pidns: bool, userns: bool = False) -> Reaper:
    """Fork the reaper (in a new pid namespace if `pidns`, inside a user namespace of its
    own if `userns`); it waits for release()."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    launcher = os.getpid()
    own_ns = -1
    if pidns and not userns:
        # unshare(CLONE_NEWPID) moves the caller's *next* child into a new namespace; setns
        # afterwards puts the launcher's later children back into its own.
        own_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if _libc.unshare(CLONE_NEWPID) != 0:
            err = ctypes.get_errno()
            os.close(own_ns)
            raise SetupError(f"unshare(CLONE_NEWPID): {os.strerror(err)}")
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:  # pragma: no cover - the reaper (or its holder); reports only through its pipe
        os.close(status_r)
        os.close(go_w)
        if userns:
            _holder_main(agent_main, launcher, go_r, status_w)
        # In a new pid namespace the parent lies outside it: getppid() says 0.
        _reaper_main(agent_main, 0 if pidns else launcher, go_r, status_w)
    if own_ns >= 0:
        restored = _libc.setns(own_ns, CLONE_NEWPID) == 0
        err = ctypes.get_errno()
        os.close(own_ns)
        if not restored:
            raise SetupError(f"setns back to the launcher's pid namespace: {os.strerror(err)}")
    if pid < 0:
        raise SetupError("fork of the agent's reaper failed")
    os.close(status_w)
    os.close(go_r)
    return Reaper(pid=pid, status_fd=status_r, go_fd=go_w, pidns=pidns, holder=userns)


def _holder_main(
    agent_main: Callable[[int], NoReturn], launcher: int, go_r: int, status_w: int
) -> NoReturn:  # pragma: no cover - the holder of an ordinary user's namespaces
    try:
        hygiene.set_parent_death_signal(launcher)
        for sig in _TERMINAL_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        # The namespaces while the launcher writes its start record; the reaper only once
        # the launcher lets us go, when we are in its cgroup (the reaper must be in it too).
        try:
            userns.enter()
            if _libc.unshare(CLONE_NEWPID) != 0:
                raise SetupError(f"unshare(CLONE_NEWPID): {os.strerror(ctypes.get_errno())}")
        except SetupError as e:
            os.write(status_w, b"E" + str(e).encode()[:4000])
            os._exit(3)
        if os.read(go_r, 1) != b"g":
            os._exit(3)
        reaper = os.fork()
        if reaper == 0:
            _reaper_main(agent_main, 0, -1, status_w)
        # The status pipe must reach EOF when the reaper dies: only the reaper holds it.
        os.close(status_w)
        os.close(go_r)
        hygiene.close_fds_from(3)
        while True:
            try:
                pid, _ = os.waitpid(reaper, 0)
            except ChildProcessError:
                os._exit(0)
            except InterruptedError:
                continue
            if pid == reaper:
                os._exit(0)
    except BaseException:
        os._exit(3)


def _reaper_main(
    agent_main: Callable[[int], NoReturn], launcher: int, go_r: int, status_w: int
) -> NoReturn:
    """`go_r` -1: released already (by the holder)."""
    try:
        hygiene.set_parent_death_signal(launcher)
        for sig in _TERMINAL_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # ^C reaches the agent; the reaper stays
        if go_r >= 0:
            if os.read(go_r, 1) != b"g":
                os._exit(3)
            os.close(go_r)
        me = os.getpid()  # 1 in a new pid namespace
        agent = os.fork()
        if agent == 0:
            os.close(status_w)
            for sig in _TERMINAL_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            agent_main(me)
        # Nothing of the launcher's stays open here but the status pipe.
        os.dup2(status_w, 3, inheritable=False)
        status_w = 3
        hygiene.close_fds_from(4)
        os.write(status_w, b"F")
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(0)
            except InterruptedError:
                continue
            if pid == agent:
                os.write(status_w, _STATUS.pack(status))
                os._exit(0)  # in a pid namespace, the kernel now ends every other process
    except BaseException:
        os._exit(3)
