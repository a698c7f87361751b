"""pledge(2) and unveil(2) for the calling Python process, with OpenBSD's semantics.

- unveil(path, perms) accumulates; unveil() with no arguments, or the first pledge(),
  locks the view (Landlock). After the lock unveil fails with EPERM. Unlike OpenBSD, the
  view takes effect at the lock, not at the first unveil: Landlock cannot add rules to a
  domain once it is enforced, only stack a narrower one.
- pledge(promises, execpromises) can only narrow: a promise not held fails with EPERM and
  changes nothing; an unknown promise fails with EINVAL. None leaves a set unchanged.
- Under `sandbox run` with `lock: agent`, the first pledge installs the filter whose
  listener goes to the parent, with the declaration (pledge, execpromises, unveil); the
  parent checks it lies within the policy, records it, and ends the agent otherwise.
  Outside the launcher a violation kills the process (as on OpenBSD).

Threads: Landlock restricts only the calling thread on this kernel (ABI < 8), so locking
unveil with other threads alive would leave them unrestricted: it fails with EBUSY naming
them. seccomp filters are synchronised to every thread (TSYNC).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Iterable

from sandbox import procfs, wire
from sandbox.enforce import landlock, seccomp
from sandbox.enforce.apply import Steps, apply
from sandbox.enforce.plan import seccomp_rules
from sandbox.enforce.promises import PROMISE_NAMES, rules_for
from sandbox.enforce.rules import Rule
from sandbox.plain import replace
from sandbox.policy.model import PERM_LETTERS, perm_string
from sandbox.protocol import (
    ENV_AGENT,
    ENV_BROKER_FD,
    ENV_LANDLOCK_FLAGS,
    ENV_LOCK,
    ENV_VIOLATION,
    LOCK_ID,
    Op,
)

_lock = threading.Lock()
_unveils: dict[str, str] = {}
_unveil_locked = False
_promises: frozenset[str] | None = None  # plain promises held (None: never pledged)
_capabilities: frozenset[str] = frozenset()  # RESOURCE:RIGHT words declared to the parent
_execpromises: frozenset[str] | None = None
_routed: frozenset[Rule] = frozenset()  # the first filter's notify rows (the parent decides)


def _err(code: int, message: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {message}")


def _other_threads() -> list[str]:
    """Live threads other than the caller, named. Read from /proc (whose pids may belong to
    another namespace than os.getpid()'s, under the launcher). A thread Python has just
    joined can stay in /proc/self/task for a moment; that is waited out briefly."""
    for _ in range(1000):
        try:
            me = os.readlink("/proc/thread-self").rsplit("/", 1)[-1]
            tids = [t for t in os.listdir("/proc/self/task") if t != me]
        except OSError:
            return ["(cannot list threads)"]
        if not tids or threading.active_count() > 1:
            break
        time.sleep(0.001)
    names = {t.native_id: t.name for t in threading.enumerate()}
    return [f"{names.get(_own_tid(t), '?')} (tid {t})" for t in tids]


def _own_tid(tid: str) -> int:
    """The thread's id in our own pid namespace (the innermost of NSpid), as Python knows it."""
    own = procfs.status_int(f"/proc/self/task/{tid}/status", "NSpid", last=True)
    return int(tid) if own is None else own


def unveil(path: str | None = None, permissions: str | None = None) -> None:
    """unveil(path, perms) adds a path; unveil() locks the view."""
    global _unveil_locked
    with _lock:
        if path is None and permissions is None:
            _lock_unveil()
            return
        if path is None or permissions is None:
            raise _err(errno.EINVAL, "unveil needs both a path and permissions, or neither")
        if _unveil_locked:
            raise _err(errno.EPERM, "unveil is locked")
        if not set(permissions) <= set(PERM_LETTERS):
            raise _err(errno.EINVAL, f"unknown permission in {permissions!r} (use r w x c)")
        full = os.path.abspath(path)
        if not os.path.exists(full):
            raise _err(errno.ENOENT, full)
        _unveils[full] = perm_string({*_unveils.get(full, ""), *permissions})


def _lock_unveil() -> None:
    global _unveil_locked
    if _unveil_locked:
        return
    # pledge() may need pyseccomp and libseccomp, which the view about to be locked may
    # not contain (read now, run only for a program the cache lacks), and the first pledge
    # the compiled-filter cache (files too).
    seccomp.read_pyseccomp()
    if _promises is None:
        seccomp.prefetch()
    # Under the launcher the view is always locked, empty if nothing was unveiled: the
    # policy's unveil is a ceiling, and an agent that unveils nothing sees nothing.
    if _unveils or _launched():
        others = _other_threads()
        if others:
            raise _err(
                errno.EBUSY, "Landlock cannot restrict other live threads: " + ", ".join(others)
            )
        abi = landlock.abi_version()
        if abi < 1:
            raise _err(errno.ENOSYS, "Landlock is not available on this kernel")
        scopes = (
            landlock.SCOPE_ABSTRACT_UNIX_SOCKET | landlock.SCOPE_SIGNAL
            if abi >= landlock.SCOPE_ABI
            else 0
        )
        view = landlock.LandlockPlan(
            handled_fs=landlock.all_fs_rights(abi),
            paths=tuple(
                landlock.PathRule(p, landlock.rights_for(perms)) for p, perms in _unveils.items()
            ),
            scopes=scopes,
            # The launcher asks for refusals after an exec to be logged when it reads them.
            restrict_flags=_landlock_flags() if _launched() else 0,
        )
        apply(Steps(landlock=view))
    _unveil_locked = True


def _landlock_flags() -> int:
    value = os.environ.get(ENV_LANDLOCK_FLAGS, "0")
    return int(value) & landlock.RESTRICT_SELF_LOG_NEW_EXEC_ON if value.isdigit() else 0


def _parse(promises: str | Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    words = promises.split() if isinstance(promises, str) else list(promises)
    plain = frozenset(w for w in words if ":" not in w)
    caps = frozenset(w for w in words if ":" in w)
    unknown = sorted(plain - PROMISE_NAMES)
    if unknown:
        raise _err(errno.EINVAL, f"unknown promise {unknown[0]!r}")
    return plain, caps


def _launched() -> bool:
    """Under `sandbox run` with lock: agent: the first pledge is the lock."""
    return os.environ.get(ENV_LOCK) == "agent" and ENV_BROKER_FD in os.environ


def _launched_exec() -> bool:
    """Under `sandbox run` with lock: exec: the launcher locked; a pledge only narrows,
    and the parent is told so that it records it (and explains a kernel kill)."""
    return (
        os.environ.get(ENV_LOCK) is None
        and ENV_BROKER_FD in os.environ
        and (ENV_AGENT in os.environ)
    )


def pledge(
    promises: str | Iterable[str] | None, execpromises: str | Iterable[str] | None = None
) -> None:
    """Restrict the process to `promises` (and programs it execs to `execpromises`)."""
    global _promises, _execpromises, _capabilities
    with _lock:
        held = _promises
        new = held if promises is None else None
        caps = _capabilities
        if promises is not None:
            new, caps = _parse(promises)
            if held is not None and not new <= held:
                raise _err(errno.EPERM, f"promise {sorted(new - held)[0]!r} is not held")
            if held is not None and not caps <= _capabilities:
                raise _err(
                    errno.EPERM, f"capability {sorted(caps - _capabilities)[0]!r} is not held"
                )
        exe = _execpromises
        if execpromises is not None:
            exe, ecaps = _parse(execpromises)
            if ecaps:
                raise _err(errno.EINVAL, "execpromises cannot name capabilities")
            if _execpromises is not None and not exe <= _execpromises:
                raise _err(
                    errno.EPERM, f"execpromise {sorted(exe - _execpromises)[0]!r} is not held"
                )
        if new is None:
            if exe is not None:
                raise _err(errno.EINVAL, "execpromises need promises on the first pledge")
            return
        if exe is not None and not exe <= new:
            # Filters only stack, so an exec'd program can never hold more than its parent:
            # execpromises wider than the promises would kill it at its first such call.
            # Refused as Cosmopolitan does (EINVAL), and as the policy loader does.
            raise _err(errno.EINVAL, f"execpromise {sorted(exe - new)[0]!r} is not in the promises")
        first = held is None
        # Every refusal comes before anything is locked: a failed pledge changes nothing.
        if _launched() and not first and exe != _execpromises:
            # The parent routes the calls beyond execpromises from the first filter only.
            raise _err(
                errno.EOPNOTSUPP, "under `sandbox run`, execpromises are fixed by the first pledge"
            )
        if not _launched() and exe is not None and "exec" in new and not new <= exe:
            # Without a parent nobody can tell which process has exec'd: refuse rather than
            # let exec'd programs keep the full pledge.
            raise _err(
                errno.EOPNOTSUPP, "execpromises narrower than the promises need `sandbox run`"
            )
        # Read pyseccomp, and make sure the compiled-filter cache has the first filter, before
        # Landlock hides the files a lazy import (and the cache) would read.
        seccomp.read_pyseccomp()
        if first and not _launched_exec() and not _unveil_locked:
            seccomp.warm(*_filter_for(new, exe))
        _lock_unveil()
        if _launched() and first:
            _lock_with_parent(new, caps, exe)
        elif _launched_exec():
            # lock: exec: the parent records the narrowing before it takes effect and says
            # which violation mode the kernel applies. If the channel is gone (the program
            # closed fd 3), the narrowing still holds, with the strictest mode.
            violation = "kill"
            with contextlib.suppress(OSError, wire.WireError):
                if _channel_is_ours():
                    reply = _tell_parent(new, caps, exe, listener=None)
                    violation = str(reply.get("violation", "kill"))
            _install_local(new, violation)
        else:
            _install_local(new)
            if _launched():
                _tell_parent(new, caps, exe, listener=None)
        _promises, _capabilities, _execpromises = new, caps, exe


def _filter_for(
    new: frozenset[str], exe: frozenset[str] | None, violation: str | None = None
) -> tuple[list[Rule], seccomp.ViolationAction, seccomp.NeverAction]:
    """The rules and actions of the filter a pledge of `new` installs: under the launcher
    the first one routes to the parent (notify); any other lets the kernel itself apply the
    violation action."""
    if _launched() and _promises is None:
        rules = seccomp_rules(
            new,
            exe,
            resolve_unix=landlock.abi_version() >= landlock.FS_RIGHT_ABI[landlock.RESOLVE_UNIX],
            # Its own pid, as it sees it (sound without 'proc': nothing can fork; see plan).
            self_pid=os.getpid(),
        )
        return list(rules), "notify", "notify"
    if violation is None:
        violation = os.environ.get(ENV_VIOLATION, "kill") if _launched() else "kill"
    return (
        _local_rules(new),
        seccomp.KERNEL_ACTIONS.get(violation, "kill"),
        seccomp.NEVER_KERNEL_ACTIONS.get(violation, "kill"),
    )


def _install_local(new: frozenset[str], violation: str | None = None) -> None:
    """A filter with no listener: the kernel itself applies the violation action. Built
    after the view is locked: only the first pledge looks in the compiled-filter cache (a
    narrowing one takes no call beyond those it always took), and only at what was read
    before the lock."""
    rules, action, never = _filter_for(new, None, violation)
    program = seccomp.program(
        rules,
        violation=action,
        self_pid=os.getpid(),
        never_action=never,
        cache=_promises is None,
        files=False,
    )
    apply(Steps(seccomp=program, tsync=True))


def _local_rules(new: frozenset[str]) -> list[Rule]:
    rules = list(rules_for(new))
    if _launched():
        # The calls the parent decides (notify rows) stay routed by the first filter, whose
        # listener the parent holds: of two filters' answers the kernel takes the stricter,
        # so "allow" here leaves the first filter's "notify" in charge. Only rows the first
        # filter routes too: a row it allows outright would be allowed by both filters, and
        # the parent would never see the call; such rows fall to the violation action.
        # Without this, a notify row in a filter with no listener would fail with ENOSYS.
        rules = [
            replace(r, action="allow") if r.action == "notify" else r
            for r in rules
            if r.action != "notify" or r in _routed
        ]
    return rules


def _lock_with_parent(
    new: frozenset[str], caps: frozenset[str], exe: frozenset[str] | None
) -> None:
    rules, action, never = _filter_for(new, exe)
    program = seccomp.program(
        rules, violation=action, self_pid=os.getpid(), never_action=never, files=False
    )
    listener = apply(Steps(seccomp=program, listener=True, tsync=True))
    global _routed
    _routed = frozenset(r for r in rules if r.action == "notify")
    try:
        _tell_parent(new, caps, exe, listener=listener)
    finally:
        if listener is not None:
            os.close(listener)


def _channel_is_ours() -> bool:
    """Under lock: exec the program may have closed fd 3 and reused the number: only a
    unix seqpacket socket there is (still) the channel to the parent."""
    fd = int(os.environ[ENV_BROKER_FD])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
    try:
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        domain = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    except OSError:
        return False
    finally:
        sock.detach()
    return kind == socket.SOCK_SEQPACKET and domain == socket.AF_UNIX


def _tell_parent(
    new: frozenset[str], caps: frozenset[str], exe: frozenset[str] | None, listener: int | None
) -> dict[str, object]:
    fd = int(os.environ[ENV_BROKER_FD])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=fd)
    try:
        request = {
            "id": LOCK_ID,
            "op": Op.LOCK,
            "pledge": " ".join(sorted(new | caps)),
            "execpromises": None if exe is None else " ".join(sorted(exe)),
            "unveil": dict(_unveils),
        }
        wire.send(sock, request, fd=listener)
        reply, rfd = wire.recv(sock, reply=True)
        if rfd is not None:
            os.close(rfd)
        if not reply.get("ok"):
            # The parent ends an agent whose declaration exceeds its policy; if we are
            # still here, fail closed all the same.
            raise _err(errno.EPERM, str(reply.get("message", "lock refused by the parent")))
        return reply
    finally:
        sock.detach()
