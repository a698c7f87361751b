"""The per-launch process: forked from the server, it becomes what a cold `sandbox run` of
the client would have been, then runs exactly that code (sandbox.cli.main's run path).

Two steps. `detach` drops the server: its own session and process group (the client's
terminal signals are sent to that group), death with the server (a launcher whose
supervisor is gone is killed, like a cold launcher killed by SIGKILL), none of the
server's objects, descriptors or signal handlers. The server does this ahead of time in a
spare process, which then waits for its launch. `become` takes on the client: argv,
environment, cwd (a descriptor, so a renamed or removed directory is the same one), stdio
and terminal (descriptors), and from the kernel's view of the client (sandbox.serve.peer)
umask, ignored and blocked signals, rlimits, priorities, CPU affinity.

The launch reports on its `report` pipe: READY once it has become the client's launcher
(a failure before that is reported instead, so the server refuses the launch and the
client launches cold: a warm launch either reproduces the client's state or does not
happen), and the exit status right before it exits.
"""

from __future__ import annotations

import array
import contextlib
import io
import locale
import marshal
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sandbox import libc
from sandbox.enforce import hygiene
from sandbox.parent import launcher
from sandbox.serve import protocol as P
from sandbox.serve.peer import IOPRIO_WHO_PROCESS, SYS_IOPRIO_GET, Inherited

# Python ignores these at start-up, so every cold launcher has them ignored.
PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
SYS_CLOSE_RANGE = hygiene.SYS_CLOSE_RANGE
LOCALE_VARS = ("LC_ALL", "LC_CTYPE", "LANG", "PYTHONCOERCECLOCALE")
# The report pipe, moved out of the way of the numbers the launcher uses.
REPORT_FD_MIN = 100
# What the server sends a spare: lengths of the payload and of the inherited state.
JOB = struct.Struct("=II")
_STARTUP_LOCALE = {k: os.environ.get(k) for k in LOCALE_VARS}


def detach(server_pid: int, closers: Sequence[Callable[[], object]]) -> None:
    """Leave the server behind (signals are blocked on entry: the server forks so)."""
    os.setsid()  # its own session and group: the client's terminal signals go to the group
    hygiene.set_parent_death_signal(server_pid)
    for close in closers:
        close()
    signal.set_wakeup_fd(-1)


def spare_main(
    job: socket.socket, server_pid: int, closers: Sequence[Callable[[], object]]
) -> NoReturn:
    """A launch forked ahead of its request: detach, then wait for the request."""
    try:
        detach(server_pid, closers)
        request, inherited, fds = receive_job(job)
    except BaseException:  # the server sees a spare that died and forks another
        os._exit(3)
    job.close()
    main(request, inherited, fds)


def send_job(job: socket.socket, payload: bytes, inherited: Inherited, fds: Sequence[int]) -> None:
    """The server's side: a request (and the report pipe, last of `fds`) for a spare."""
    state = marshal.dumps(tuple(inherited))
    job.sendmsg(
        [JOB.pack(len(payload), len(state))],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
    )
    job.sendall(state + payload)


def receive_job(job: socket.socket) -> tuple[P.Request, Inherited, list[int]]:
    fds = array.array("i")
    data, anc, _flags, _ = job.recvmsg(JOB.size, socket.CMSG_SPACE((P.MAX_FDS + 1) * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if len(data) != JOB.size:
        raise EOFError("the server closed the spare's channel")
    length, state_length = JOB.unpack(data)
    rest = bytearray()
    while len(rest) < length + state_length:
        chunk = job.recv(length + state_length - len(rest))
        if not chunk:
            raise EOFError("the job was cut short")
        rest += chunk
    inherited = Inherited(*marshal.loads(bytes(rest[:state_length])))
    return P.decode_payload(bytes(rest[state_length:])), inherited, list(fds)


def main(request: P.Request, inherited: Inherited, fds: Sequence[int]) -> NoReturn:
    """Become the client's launcher and run `sandbox run`. Never returns.

    `fds`: the cwd, the client's stdio as the request's fd mask names them, the report
    pipe. Signals are blocked on entry; the client's mask is set last.
    """
    report = _out_of_the_way(fds[-1])
    try:
        _become(request, inherited, fds[:-1], report)
    except BaseException as e:  # nothing of the launch has run: the server refuses it
        with contextlib.suppress(BaseException):
            import traceback

            where = traceback.extract_tb(e.__traceback__)[-1]
            why = str(e) if isinstance(e, ColdOnly) else f"set-up failed in {where.name}: {e}"
            text = why.encode(errors="replace")[:4000]
            os.write(report, P.MESSAGE.pack(P.REFUSED, len(text)) + text)
        os._exit(3)
    os.write(report, P.MESSAGE.pack(P.ACCEPTED, 0))
    signal.pthread_sigmask(signal.SIG_SETMASK, inherited.sig_blocked)
    _run([os.fsdecode(a) for a in request.argv], report)


def _out_of_the_way(fd: int) -> int:
    """`fd` moved above the numbers the launcher uses (the same one if that fails)."""
    import fcntl

    try:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, REPORT_FD_MIN)
    except OSError:
        return fd
    os.close(fd)
    return moved


def _become(request: P.Request, inherited: Inherited, fds: Sequence[int], report: int) -> None:
    """Take on the client's state (`report` stays open)."""
    # Descriptors: the client's stdio at 0-2 (the server's own 0-2 are always open, so the
    # received ones are above them), the cwd, then nothing else but the report pipe.
    cwd, stdio = fds[0], list(fds[1:])
    present = P.passed_fds(request.flags)
    for target, fd in zip(present, stdio, strict=True):
        os.dup2(fd, target)
    for target in (0, 1, 2):
        if target not in present:
            os.close(target)
    os.fchdir(cwd)
    _close_all_but(report)
    _environment(request.environ)
    os.umask(inherited.umask)
    _limits(inherited)
    _signals(inherited.sig_ignored)
    _stdio(present)
    # The launcher asks its terminal whether the terminal's signals reach its agent: the
    # client's terminal, in another session, cannot tell the launch; the client did.
    launcher.terminal_foreground = bool(request.flags & P.FOREGROUND)
    if request.flags & P.CTTY and _promises_tty(request.argv[2:]):
        raise ColdOnly(
            "the policy promises tty and the client has a controlling terminal: /dev/tty and "
            "the terminal's foreground group are a cold launch's only"
        )


class ColdOnly(Exception):
    """A launch that only a cold launcher can be (the client then launches cold)."""


def _promises_tty(args: Sequence[bytes]) -> bool:
    """Whether the run's pledge holds `tty`: what an agent reaches of a controlling
    terminal (/dev/tty, its foreground process group) needs that promise, and a warm
    launch, in a session of its own, has no controlling terminal to give. Anything that
    stops this reading (a bad policy, a usage error) is left to the cold code to report."""
    if any(a in (b"-h", b"--help") for a in args[: args.index(b"--") if b"--" in args else None]):
        return False  # it would print the usage here; the cold code does
    try:
        from sandbox.cli.main import load_run_policy, parse_run_args

        return "tty" in load_run_policy(parse_run_args([os.fsdecode(a) for a in args])).pledge
    except (Exception, SystemExit):
        return False


def _close_all_but(keep: int) -> None:
    """Close every descriptor from 3 on but `keep` (the server's, the received ones)."""
    for low, high in ((3, keep - 1), (keep + 1, 0xFFFFFFFF)):
        if low <= high:
            libc.syscall(SYS_CLOSE_RANGE, low, high, 0, what="close_range")


def _environment(entries: Sequence[bytes]) -> None:
    """The client's environment, as a freshly started cold launcher would see it."""
    wanted: dict[bytes, bytes] = {}
    for entry in entries:
        key, _, value = entry.partition(b"=")
        if key and key not in wanted:  # the first of duplicate names wins, as in Python
            wanted[key] = value
    env = os.environb
    for key in [k for k in env if k not in wanted]:
        del env[key]
    for key, value in wanted.items():
        if env.get(key) != value:
            env[key] = value
    if any(os.environ.get(k) != v for k, v in _STARTUP_LOCALE.items()):
        _coerce_c_locale()  # else the server's start-up already did what the client's would
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:  # computed from TMPDIR on first use: the client's, not ours
        tempfile.tempdir = None  # type: ignore[attr-defined]


def _coerce_c_locale() -> None:
    """PEP 538: a Python started under the C or POSIX locale switches LC_CTYPE to a UTF-8
    locale and says so in its environment (its children see LC_CTYPE). The compiled
    client passes its raw environment, so do here what the cold interpreter would do."""
    env = os.environ
    if env.get("LC_ALL") or env.get("PYTHONCOERCECLOCALE") == "0":
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "")
        return
    try:
        current = locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        current = locale.setlocale(locale.LC_CTYPE, None)
    if current not in ("C", "POSIX"):
        return
    for target in ("C.UTF-8", "C.utf8", "UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, target)
        except locale.Error:
            continue
        env["LC_CTYPE"] = target
        return


def _limits(inherited: Inherited) -> None:
    for res, value in inherited.rlimits:
        if resource.getrlimit(res) != value:
            resource.setrlimit(res, value)
    if os.getpriority(os.PRIO_PROCESS, 0) != inherited.nice:
        os.setpriority(os.PRIO_PROCESS, 0, inherited.nice)
    policy, priority = inherited.sched
    if os.sched_getscheduler(0) != policy or os.sched_getparam(0).sched_priority != priority:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    if frozenset(os.sched_getaffinity(0)) != inherited.affinity:
        os.sched_setaffinity(0, inherited.affinity)
    if libc.syscall(SYS_IOPRIO_GET, IOPRIO_WHO_PROCESS, 0, what="ioprio_get") != inherited.ioprio:
        libc.syscall(
            hygiene.SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, inherited.ioprio, what="ioprio_set"
        )
    with open("/proc/self/oom_score_adj", "r+", encoding="ascii") as f:
        if int(f.read()) != inherited.oom_score_adj:
            f.seek(0)
            f.write(str(inherited.oom_score_adj))


def _signals(ignored: frozenset[int]) -> None:
    """The dispositions a cold launcher starts with: what its caller ignored stays ignored
    (exec keeps SIG_IGN), Python's own ignores, Python's SIGINT handler unless SIGINT was
    ignored, the default for everything else (the server's handlers included)."""
    want: Any
    for sig in signal.valid_signals() - UNCATCHABLE:
        if sig in ignored or sig in PYTHON_IGNORES:
            want = signal.SIG_IGN
        elif sig == signal.SIGINT:
            want = signal.default_int_handler
        else:
            want = signal.SIG_DFL
        with contextlib.suppress(OSError, ValueError):  # 32/33 belong to the C library
            if signal.getsignal(sig) != want:
                signal.signal(sig, want)


def _stdio(present: Sequence[int]) -> None:
    """New sys.stdin/stdout/stderr over the client's descriptors, set up as the interpreter
    sets up its own (line-buffered stdout only on a terminal, stderr always)."""
    template = {0: sys.__stdin__, 1: sys.__stdout__, 2: sys.__stderr__}
    streams: dict[int, io.TextIOWrapper | None] = {}
    for fd in (0, 1, 2):
        if fd not in present:
            streams[fd] = None
            continue
        like = template[fd]
        raw = io.open(fd, "rb" if fd == 0 else "wb", closefd=False)  # noqa: SIM115, UP020
        streams[fd] = io.TextIOWrapper(
            raw,
            encoding=getattr(like, "encoding", None) or "utf-8",
            errors=getattr(like, "errors", None) or ("backslashreplace" if fd == 2 else "strict"),
            newline="\n",
            line_buffering=fd == 2 or (fd == 1 and os.isatty(1)),
        )
    sys.stdin = sys.__stdin__ = streams[0]  # type: ignore[misc]
    sys.stdout = sys.__stdout__ = streams[1]  # type: ignore[misc]
    sys.stderr = sys.__stderr__ = streams[2]  # type: ignore[misc]


def _run(argv: list[str], report: int) -> NoReturn:
    """sandbox.cli.main's run path, as the cold entry point runs it; its exit is ours, and
    is reported before the process ends (the server answers the client at once instead of
    after the kernel has torn this process down)."""

    def exit_reporting(code: int) -> NoReturn:
        _flush()
        with contextlib.suppress(OSError):
            os.write(report, P.MESSAGE.pack(P.EXITED, code & 0xFF))
        os._exit(code)

    sys.argv = argv
    code = 1
    try:
        from sandbox.cli.main import main

        main(argv[1:], warm=False, exit_with=exit_reporting)
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        # An uncaught ^C: Python prints the traceback and dies by SIGINT itself.
        import traceback

        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        import traceback

        traceback.print_exc()
    exit_reporting(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
